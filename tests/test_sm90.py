"""Ahead-of-time sm_90 (H100/H200) checks of the Triton kernels, no GPU needed (kernels/triton/sm90.py): every kernel
variant and tile config the host functions can launch compiles for sm_90, its 16-bit and TF32 dots use wgmma, no
loop spills registers and shared memory stays within 227 KB. The interpreter the other tests run is blind to all of
that. Plus the log parsers on literal text.

The run is sm90.check_all(quick=True): every config for bf16 and tf32 (the tensor-core paths), the first fitting
config of each kernel variant for fp16 (bf16's code path), IEEE fp32 and fp64; `python -m kernels.triton.sm90`
checks them all.
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
