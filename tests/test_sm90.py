"""Ahead-of-time sm_90 (H100/H200) checks of the Triton kernels, no GPU needed (kernels/triton/sm90.py): every kernel
variant and tile config the host functions can launch compiles for sm_90, its 16-bit and TF32 dots use wgmma, no
loop spills registers and shared memory stays within 227 KB. The interpreter the other tests run is blind to all of
that.

The run is sm90.check_all(quick=True): every config for bf16 and tf32 (the tensor-core paths), the first fitting
config of each kernel variant for fp16 (bf16's code path), IEEE fp32 and fp64; `python -m kernels.triton.sm90`
checks them all. Plus the log parsers on literal text, and the runtime autotuner's pruning of the configs found to
spill (with triton 3.6 — the GPU machine's, checked by `nox -s sm90` — or 3.8): the same rules decide what the
checker compiles.
"""

from __future__ import annotations

import pytest

from kernels.triton import sm90

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_conv_wgrad_gemm_kernel' for 'sm_90a'
ptxas info    : Function properties for _conv_wgrad_gemm_kernel
    352 bytes stack frame, 352 bytes spill stores, 348 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 352 bytes cumulative stack size, 400 bytes cmem[0]
ptxas info    : Function properties for helper
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers
"""

SASS = """\
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1+0x10], R32 ;
.L_x_1:
        /*0020*/                   LDL R7, [R1+0x4] ;
        /*0030*/                   FFMA R2, R3, R4, R2 ;
        /*0040*/               @P0 BRA `(.L_x_1) ;
        /*0050*/              @!P1 BRA `(.L_x_2) ;
        /*0060*/                   LDL.LU R78, [R1+0x10] ;
.L_x_2:
        /*0070*/                   EXIT ;
"""


def test_ptxas_log_parser():
    assert sm90.parse_ptxas(PTXAS_LOG) == {"regs": 255, "spill_stores": 360, "spill_loads": 352}
    assert sm90.parse_ptxas("ptxas info    : Used 96 registers\n    0 bytes spill stores, 0 bytes spill loads") == {
        "regs": 96, "spill_stores": 0, "spill_loads": 0}
    assert sm90.parse_ptxas("") == {"regs": 0, "spill_stores": 0, "spill_loads": 0}


def test_hot_spills_are_the_local_accesses_inside_a_backward_branch():
    # the LDL at 0x20 is in the loop 0x20..0x40; the STL before it and the LDL after the forward branch are not
    assert sm90.hot_spills(SASS) == 1
    assert sm90.hot_spills(SASS.replace("@P0 BRA `(.L_x_1)", "@P0 BRA `(.L_x_2)")) == 0


def test_config_labels():
    assert sm90.config_label({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}) == \
        "64x16x32 w4 s3"
    assert sm90.config_label({}) == "1024 w4 s3"


@pytest.fixture(scope="module")
def results():
    if sm90.tool_path("ptxas") is None:
        pytest.skip("this triton has no NVIDIA backend or no ptxas: nothing to compile for sm_90")
    return sm90.check_all(quick=True)


def _bad(results, pred) -> str:
    return "\n".join(sm90.line(r) for r in results if pred(r))


def test_every_kernel_variant_and_config_compiles(results):
    names = {r["kernel"] for r in results}
    assert len(names) == 13, names  # 9 conv (3 GEMM, 2 autotuned 1×1 GEMM, 3 direct, split-K reduction) + 4 pool
    assert {r["dtype"] for r in results} == set(sm90.DTYPES)
    assert not (bad := _bad(results, lambda r: r["regs"] is None)), bad


def test_tensor_core_dots_use_wgmma(results):
    dots = [r for r in results if r["wgmma_required"]]
    assert {r["dtype"] for r in dots} == set(sm90.WGMMA_DTYPES)
    assert not (bad := _bad(dots, lambda r: not r["wgmma"])), bad


def test_no_spills_in_any_loop_and_none_at_all_on_the_tensor_cores(results):
    """The tensor-core GEMMs spill nothing at all. Elsewhere ptxas may park a few loop-invariant values (epilogue
    offsets) in local memory to reach an occupancy step — a handful of accesses per thread, outside every loop."""
    assert not (bad := _bad(results, lambda r: r["hot_spills"])), bad
    assert not (bad := _bad(results, lambda r: r["wgmma_required"] and (r["spill_stores"] or r["spill_loads"]))), bad


def test_shared_memory_within_the_h100_limit(results):
    assert not (bad := _bad(results, lambda r: r["smem"] is not None and r["smem"] > sm90.SMEM_LIMIT)), bad


def test_everything_passes(results):
    assert not (bad := _bad(results, lambda r: not r["ok"])), bad


# ---- the runtime autotuner prunes what the checker found spilling (no compile: runs anywhere) ---------------------
def _label(c) -> str:
    return sm90.config_label({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages})


def _kept(prune, dtype, ones=(), **meta) -> set[str]:
    """Labels of the configs the autotuner's prune keeps for a big problem of ``dtype`` whose strides in ``ones``
    are 1 (what the JIT specialises on)."""
    import torch

    from kernels.triton import conv as tc

    t = torch.empty(1, dtype=dtype)
    named = dict(a_ptr=t, GEMM_M=4096, GEMM_N=4096, GEMM_RED=4096,
                 **{s: 1 if s in ones else 64 for s in ("sam", "sak", "sbk", "sbn")})
    meta = dict(PRECISION="ieee" if dtype == torch.float32 else "tf32", **meta)
    saved, tc.AUTOTUNE = tc.AUTOTUNE, True
    try:
        return {_label(c) for c in prune(tc.GEMM_CONFIGS, named, **meta)}
    finally:
        tc.AUTOTUNE = saved


def test_runtime_pruning_drops_what_spills_on_the_gpu_machines_triton():
    """The configs that spill on sm_90 with triton 3.6 (`nox -s sm90`) or 3.8 are never launched, by the same
    rules (conv.fits / fits_pointwise) that decide what the checker compiles; the others stay to be tuned."""
    import torch

    from kernels.triton import conv as tc

    bf16, wgrad, dgrad, fwd = torch.bfloat16, ("sam", "sbn"), ("sak", "sbn"), ("sak", "sbk")
    pw = tc._prune_pointwise
    # 1×1 wgrad (A = dyᵀ read transposed): 256×128×64 spills on both; under the ReLU mask 128×64×64 w4 (3.6)
    plain = _kept(pw, bf16, wgrad, EVEN_K=True)
    assert "256x128x64 w8 s3" not in plain and {"128x64x64 w4 s4", "128x256x64 w8 s3"} <= plain
    masked = _kept(pw, bf16, wgrad, EVEN_K=True, MASK_A=True, BIAS_SUM=True)
    assert "128x64x64 w4 s4" not in masked and {"128x128x32 w8 s4", "128x128x64 w8 s3"} <= masked
    tail = _kept(pw, bf16, wgrad, EVEN_K=False, MASK_A=True, BIAS_SUM=True)  # the masked reduction tail: BLOCK_K 32
    assert tail and all(label.split()[0].endswith("x32") or label.split()[0].endswith("x16") for label in tail)
    # the k-tail with B read N-major (dgrad, wgrad): 128×256×64 spills on 3.6; the forward (B K-major) keeps it
    assert "128x256x64 w8 s3" not in _kept(pw, bf16, dgrad, EVEN_K=False)
    assert "128x256x64 w8 s3" in _kept(pw, bf16, fwd, EVEN_K=False)
    assert "128x256x64 w8 s3" in _kept(pw, bf16, dgrad, EVEN_K=True)
    # fp64 1×1 wgrad with the bias sum: 32×32×16 w4 s2 spills on 3.6
    assert _kept(pw, torch.float64, wgrad, EVEN_K=True, BIAS_SUM=True) == {"64x32x16 w4 s3"}
    # the implicit-GEMM wgrad: under the mask 256×128×64 (3.6, outside the loop), IEEE fp32 64×64×16 (3.6)
    assert "256x128x64 w8 s3" not in _kept(tc._prune_wgrad_gemm, bf16, RELU_MASK=True)
    assert "256x128x64 w8 s3" in _kept(tc._prune_wgrad_gemm, bf16, RELU_MASK=False)
    assert "256x128x64 w8 s3" in _kept(tc._prune_gemm, bf16, RELU_MASK=True)  # dgrad's
    assert "64x64x16 w4 s2" not in _kept(tc._prune_wgrad_gemm, torch.float32)
    assert "64x64x16 w4 s2" in _kept(tc._prune_gemm, torch.float32)
