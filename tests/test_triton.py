"""The Triton implementation beyond the shared case table: every kernel path on the tricky argument forms, the fused
bias+ReLU epilogue, TF32/IEEE selection, split-K, memory formats, strided weights, int32 batch chunking, backend
naming and availability — on the CPU under the interpreter (TRITON_INTERPRET=1, set by conftest) and on a GPU
when there is one; plus GPU-only comparisons with cuDNN on ResNet-50 layers in bf16 channels_last.

test_kernels.py already runs triton on every case of tests/cases.py with the kernels its policy picks (mostly the
direct kernels: those cases have few output channels); here the same cases are forced through the other paths.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cases import CONV_CASES, MAX_POOL_CASES, make_tensors
from conftest import DEVICES, HAS_CUDA, ORACLE, check_against_oracle, implementation, leaf

from reference import ConvProblem, check, oracle

# Only a missing triton package skips this module; with triton installed the import below must work, and an error
# in it (a name this triton lacks, a bug) is a collection error that fails the run (tests/test_import_rules.py).
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
from kernels.triton import conv as tc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 checks use the fp32 tolerance, so fp32 runs in IEEE precision (torch lets cuDNN — and so triton —
    use TF32 for convolutions by default); test_tf32_follows_cudnn_flag switches it itself."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    yield
    conv.fp32_precision = saved


@pytest.fixture
def untuned(monkeypatch):
    """First fitting config instead of autotuning: many small problems, each would otherwise be tuned on a GPU."""
    monkeypatch.setattr(tc, "AUTOTUNE", False)


def force(monkeypatch, path: str, splits: int | None = None):
    """Route conv forward/dgrad/wgrad through ``path`` ('gemm', 'gemm-flat' or 'direct') whatever the policy says,
    and optionally force the wgrad split-K factor."""
    monkeypatch.setattr(tc, "conv_path", lambda p: path)
    monkeypatch.setattr(tc, "dgrad_path", lambda p: "direct" if path == "direct" else "gemm")
    monkeypatch.setattr(tc, "wgrad_path", lambda p: path)
    if splits is not None:
        monkeypatch.setattr(tc, "wgrad_splits", lambda *a, **k: splits)


def conv_tensors(case, device, dtype=torch.float32, layout=None):
    return {k: leaf(v, device, dtype, (layout or case.layout) if k == "input" else "nchw")
            for k, v in make_tensors("conv2d", case).items()}


# The conv cases whose geometry differs (strides, asymmetric/oversized padding, dilation, groups, layouts, empty
# stride phases); the SimpleCNN layers only add size.
GEOMETRY = [c for c in CONV_CASES if not c.id.startswith("simplecnn")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path,splits", [("gemm", 3), ("gemm-flat", 2)])
@pytest.mark.parametrize("case", [c.param() for c in GEOMETRY])
def test_conv_gemm_paths_on_every_argument_form(case, path, splits, device, monkeypatch, untuned):
    impl = implementation("triton", device)
    force(monkeypatch, path, splits)
    check_against_oracle(impl.conv2d, ORACLE["conv2d"], conv_tensors(case, device), case.kwargs, "float32")


def _custom_cases():
    from cases import Case
    return [
        # many output channels per group through the direct kernels (the policy sends them to the GEMM)
        Case("wide-groups-direct", (2, 8, 7, 7), dict(groups=2, stride=2, padding=1), weight=(32, 4, 3, 3)),
        # an input smaller than the stride: stride phases with no pixels at all
        Case("empty-phase", (2, 5, 1, 2), dict(stride=3), weight=(17, 5, 1, 1)),
        Case("stride3-dilated", (1, 4, 10, 11), dict(stride=(3, 2), dilation=(2, 3), padding=(2, 1)),
             weight=(16, 4, 3, 2)),
        # stride and dilation sharing a factor: whole stride phases that no tap reaches (their dx is 0)
        Case("stride-dilation-common-factor", (1, 3, 11, 13), dict(stride=(2, 4), dilation=(2, 2), padding=(1, 2)),
             weight=(16, 3, 3, 3)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["gemm", "gemm-flat", "direct"])
@pytest.mark.parametrize("case", [c.param() for c in _custom_cases()])
def test_conv_paths_on_extra_geometry(case, path, device, monkeypatch, untuned):
    impl = implementation("triton", device)
    force(monkeypatch, path, 2)
    check_against_oracle(impl.conv2d, ORACLE["conv2d"], conv_tensors(case, device), case.kwargs, "float32")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("path", ["gemm", "gemm-flat", "direct"])
def test_fused_bias_relu_forward_and_backward(path, dtype, device, monkeypatch, untuned):
    """conv2d_relu applies bias and ReLU in the epilogue; its backward masks dy by y > 0 inside dgrad/wgrad."""
    impl = implementation("triton", device)
    force(monkeypatch, path, 2)
    from cases import Case
    case = Case("relu", (2, 8, 7, 6), dict(stride=2, padding=1), weight=(16, 8, 3, 3))
    tensors = conv_tensors(case, device, getattr(torch, dtype), "channels_last")
    with torch.no_grad():
        tensors["bias"] -= 0.3  # push a good share of the outputs below zero
    check_against_oracle(impl.conv2d_relu, lambda **kw: torch.relu(ORACLE["conv2d"](**kw)), tensors, case.kwargs,
                         dtype)
    y = impl.conv2d_relu(**tensors, **case.kwargs)
    assert bool((y == 0).any()) and bool((y > 0).any()) and not bool((y < 0).any())


def _spy(monkeypatch, kernel):
    """Record the keyword arguments of every launch of a kernel: its JITFunction's ``run``, which the autotuner
    calls on a first call and a host function's cached plan on every repeated one."""
    from triton.runtime.autotuner import Autotuner

    kernel = kernel.fn if isinstance(kernel, Autotuner) else kernel
    seen = []
    run = kernel.run

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", spy)
    return seen


@pytest.mark.parametrize("device", DEVICES)
def test_tf32_follows_cudnn_flag(device, monkeypatch, untuned):
    """fp32 dots run as TF32 exactly when cuDNN convolutions may (the ieee_fp32 fixture restores the flag)."""
    impl = implementation("triton", device)
    conv = torch.backends.cudnn.conv
    x = torch.randn(2, 16, 6, 6, device=device)
    w = torch.randn(32, 16, 3, 3, device=device) / 12
    launches = _spy(monkeypatch, tc._conv_fwd_gemm_kernel)
    results = {}
    for flag in ("tf32", "ieee"):
        conv.fp32_precision = flag
        assert impl.dot_precision(torch.float32) == flag
        launches.clear()
        results[flag] = impl.conv2d(x, w, padding=1)
        assert [kw["PRECISION"] for kw in launches] == [flag]
        want = oracle.conv2d(x.double(), w.double(), padding=1)
        assert check(results[flag], want, "float32" if flag == "ieee" else "tf32")
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert impl.dot_precision(dtype) == "ieee"
    if device == "cuda":  # on tensor cores TF32 really rounds the operands (the interpreter ignores the flag)
        assert not torch.equal(results["tf32"], results["ieee"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["gemm", "gemm-flat", "direct"])
def test_wgrad_split_k_is_exercised_and_deterministic(path, device, monkeypatch, untuned):
    implementation("triton", device)
    p = ConvProblem(N=2, C=4, H=5, W=5, K=16, R=2, S=2, padding=(1, 1))  # L = N·P·Q = 72 rows
    t = p.make_inputs(device)
    x, w, b = t["input"], t["weight"], t["bias"]
    dy = torch.randn(p.output_shape, device=device)
    xd, wd, bd = (v.detach().double().requires_grad_(True) for v in (x, w, b))
    want_w, want_b = torch.autograd.grad(oracle.conv2d(xd, wd, bd, **p.kwargs()), [wd, bd], dy.double())
    monkeypatch.setattr(tc, "wgrad_path", lambda p: path)
    reductions = _spy(monkeypatch, tc._split_reduce_kernel)
    results = {}
    for splits in (1, 4, 7):  # 18 and 11 rows per split: not multiples of any BLOCK_K
        reductions.clear()
        dw, db = results[splits] = tc.conv2d_wgrad(dy, x, p, w.dtype, b.dtype, splits=splits)
        assert len(reductions) == (0 if splits == 1 else 2), "split-K partials go through the reduction kernel"
        assert dw.dtype == w.dtype and db.dtype == b.dtype
        assert check(dw, want_w, "float32") and check(db, want_b, "float32"), splits
    again = tc.conv2d_wgrad(dy, x, p, w.dtype, b.dtype, splits=7)
    assert torch.equal(again[0], results[7][0]) and torch.equal(again[1], results[7][1])


def test_split_k_policy(monkeypatch):
    monkeypatch.setattr(tc, "num_sms", lambda device: 132)  # an H100
    # ResNet-50 layer4 3x3: 4·4·9 = 144 output tiles of 128×128 cover the 132 SMs once → 2 splits
    assert tc.wgrad_splits(ConvProblem(N=64, C=512, H=7, W=7, K=512, R=3, S=3, padding=(1, 1)), "cuda") == 2
    # a 1x1 conv with 64 channels is one tile: split as far as allowed (64), long enough rows (L/64 ≥ 1024)
    assert tc.wgrad_splits(ConvProblem(N=256, C=64, H=56, W=56, K=64, R=1, S=1), "cuda") == 64
    # ... but never into splits of fewer than 1024 rows
    assert tc.wgrad_splits(ConvProblem(N=1, C=64, H=56, W=56, K=64, R=1, S=1), "cuda") == 3
    assert tc.wgrad_splits(ConvProblem(N=1, C=64, H=8, W=8, K=64, R=1, S=1), "cuda") == 1


@pytest.mark.parametrize("device", DEVICES)
def test_memory_format_follows_the_input(device, untuned):
    impl = implementation("triton", device)
    cl = torch.channels_last
    x = torch.randn(2, 16, 7, 7, device=device)
    w = torch.randn(16, 16, 3, 3, device=device, requires_grad=True)
    for fmt, layout in [(cl, "channels_last"), (torch.contiguous_format, "nchw")]:
        xi = x.contiguous(memory_format=fmt).requires_grad_(True)
        for out in (impl.conv2d(xi, w, padding=1), impl.conv2d_relu(xi, w, padding=1), impl.max_pool2d(xi, 2),
                    impl.avg_pool2d(xi, 3, 2, 1)):
            assert out.is_contiguous(memory_format=fmt), layout
            (gx,) = torch.autograd.grad(out.sum(), [xi])
            assert gx.is_contiguous(memory_format=fmt), f"grad of {layout} input"
        _, idx = impl.max_pool2d(xi, 2, return_indices=True)
        assert idx.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_layout", ["transposed", "channels_last", "sliced"])
def test_non_contiguous_weight(weight_layout, device, monkeypatch, untuned):
    impl = implementation("triton", device)
    force(monkeypatch, "gemm", 2)
    t = make_tensors("conv2d", CONV_CASES[0])
    x = leaf(t["input"], device, torch.float32, "channels_last")
    w = t["weight"].to(device=device, dtype=torch.float32)
    if weight_layout == "transposed":
        w = w.transpose(2, 3).contiguous().transpose(2, 3)
    elif weight_layout == "channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
    else:
        w = torch.cat([w, w], dim=1)[:, ::2]  # every other input channel of a wider tensor
    assert not w.is_contiguous()
    w.requires_grad_(True)
    b = leaf(t["bias"], device, torch.float32)
    check_against_oracle(impl.conv2d, ORACLE["conv2d"], dict(input=x, weight=w, bias=b), dict(padding=1), "float32")


@pytest.mark.parametrize("device", DEVICES)
def test_large_tensors_run_in_int32_batch_chunks(device, monkeypatch, untuned):
    """Offsets past int32 are handled by running the batch in chunks; shrink the limit so small tensors chunk."""
    impl = implementation("triton", device)
    monkeypatch.setattr(tc, "INT32_LIMIT", 1000)
    case = next(c for c in CONV_CASES if c.id == "stride2-pad1")
    for path in ("gemm", "direct"):
        force(monkeypatch, path, 2)
        tensors = conv_tensors(case, device)
        tensors["input"] = leaf(torch.cat([tensors["input"].detach()] * 3), device, torch.float32)  # N = 6
        assert len(tc.batch_chunks(6, tensors["input"])) > 1
        check_against_oracle(impl.conv2d, ORACLE["conv2d"], tensors, case.kwargs, "float32")
    x = leaf(torch.randn(6, 3, 9, 9, dtype=torch.float64), device, torch.float32)
    kw = dict(kernel_size=3, stride=2, padding=1)
    check_against_oracle(impl.max_pool2d, ORACLE["max_pool2d"], dict(input=x), dict(kw, return_indices=True),
                         "float32")
    check_against_oracle(impl.avg_pool2d, ORACLE["avg_pool2d"], dict(input=x), kw, "float32")


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_of_an_empty_batch_and_of_bias_alone(device, untuned):
    impl = implementation("triton", device)
    x = torch.zeros(0, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    gx, gw, gb = torch.autograd.grad(impl.conv2d(x, w, b).sum(), [x, w, b])
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))
    for pool in (impl.max_pool2d, impl.avg_pool2d):
        (g,) = torch.autograd.grad(pool(x, 2).sum(), [x])
        assert g.shape == x.shape
    # only the bias requires grad: the fused wgrad still delivers it
    x = torch.randn(2, 3, 8, 8, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    (gb,) = torch.autograd.grad(impl.conv2d(x, w, b, padding=1).sum(), [b])
    torch.testing.assert_close(gb, torch.full_like(b, 2 * 8 * 8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_max_pool_special_values_and_their_gradients(dtype, device, untuned):
    """−inf, NaN and ties inside windows, and dilated ceil-mode windows that miss the input entirely: values and
    indices as the oracle and torch give them, gradients as torch routes them (to the reported index — also for a
    window of only −inf whose first tap is padding, where the oracle's autograd picks the padding tap instead)."""
    impl = implementation("triton", device)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (2, 3, 10, 9), generator=g).double()
    x[0, 0, :4, :4] = float("-inf")
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 5:, :] = float("-inf")
    for kw in [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=3, dilation=4, ceil_mode=True),
               dict(kernel_size=(2, 3), stride=(3, 1), dilation=(3, 2), padding=1, ceil_mode=True)]:
        xi = leaf(x, device, getattr(torch, dtype), "channels_last")
        values, indices = impl.max_pool2d(xi, return_indices=True, **kw)
        xt = xi.detach().cpu().double().requires_grad_(True)
        tv, ti = F.max_pool2d(xt, return_indices=True, **kw)
        ov, oi = oracle.max_pool2d(xt.detach(), return_indices=True, **kw)
        assert torch.equal(indices.cpu(), ti) and torch.equal(ti, oi), kw
        torch.testing.assert_close(values.cpu().double(), tv.detach(), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ov, tv.detach(), rtol=0, atol=0, equal_nan=True)
        dy = torch.randn(values.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (got,) = torch.autograd.grad(values, [xi], dy.to(values))
        (want,) = torch.autograd.grad(tv, [xt], dy)
        assert got.dtype == xi.dtype and check(got, want, dtype), kw


def test_backend_names_and_paths():
    import kernels

    impl = kernels.get("triton")
    interpreted = tc.INTERPRETED
    for op in ("conv2d", "max_pool2d", "avg_pool2d"):
        assert impl.backend(op, "cpu") == ("triton-interpreter" if interpreted else "triton")
    assert impl.jit
    p = ConvProblem(N=1, C=3, H=8, W=8, K=64, R=7, S=7)
    assert impl.kernel_paths(p) == {"forward": "gemm-flat", "dgrad": "gemm", "wgrad": "gemm-flat"}
    assert impl.kernel_paths(p.replace(C=64, groups=64, K=64, R=3, S=3))["forward"] == "direct"
    assert impl.kernel_paths(p.replace(C=256, K=256, R=3, S=3))["forward"] == "gemm"


def test_unavailable_without_the_interpreter():
    """On the CPU triton needs TRITON_INTERPRET=1 when it is imported; without it the implementation says so."""
    import kernels

    impl = kernels.get("triton")
    if tc.INTERPRETED:
        assert impl.unavailable_reason("cpu") is None
    assert "Triton" in impl.unavailable_reason("meta")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = ("import kernels; t = kernels.get('triton'); "
            "print(t.unavailable_reason('cpu')); print(t.backend('conv2d', 'cpu'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reason, backend = out.stdout.strip().splitlines()[-2:]
    assert "TRITON_INTERPRET=1" in reason and backend == "triton"


# The ahead-of-time sm_90 compile checks of every kernel and config (wgmma, spills, shared memory) are in
# tests/test_sm90.py.


# ---- GPU only: triton against cuDNN on ResNet-50 layers, bf16 channels_last -----------------------------------------
RESNET50 = [  # (id, N, C, H, K, R, stride, pad)
    ("conv1-7x7s2", 8, 3, 224, 64, 7, 2, 3),
    ("layer1-1x1", 16, 64, 56, 256, 1, 1, 0),
    ("layer1-3x3", 16, 64, 56, 64, 3, 1, 1),
    ("layer2-3x3s2", 16, 128, 56, 128, 3, 2, 1),
    ("layer3-1x1s2-downsample", 16, 512, 28, 1024, 1, 2, 0),
    ("layer4-3x3", 16, 512, 7, 512, 3, 1, 1),
]
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (compares with cuDNN)")]


@pytest.mark.parametrize("layer", [pytest.param(row, id=row[0], marks=gpu) for row in RESNET50])
def test_resnet50_layers_match_cudnn_bf16_channels_last(layer, monkeypatch):
    impl = implementation("triton", "cuda")
    name, N, C, H, K, R, stride, pad = layer
    # autotune one layer (every config of every kernel compiles and runs), the first fitting config elsewhere
    monkeypatch.setattr(tc, "AUTOTUNE", name == "layer4-3x3")
    p = ConvProblem(N=N, C=C, H=H, W=H, K=K, R=R, S=R, stride=(stride, stride), padding=(pad, pad),
                    dtype="bfloat16", layout="channels_last")
    t = p.make_inputs("cuda", requires_grad=True)
    x, w, b = t["input"], t["weight"], t["bias"]
    kw = p.kwargs()
    dy = torch.randn(p.output_shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    dy = dy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    ref = [v.detach().double().requires_grad_(True) for v in (x, w, b)]
    y64 = F.conv2d(*ref, **kw)
    want = [y64, *torch.autograd.grad(y64, ref, dy.double())]
    for name, fn in [("triton", impl.conv2d), ("cudnn", F.conv2d)]:
        y = fn(x, w, b, **kw)
        got = [y, *torch.autograd.grad(y, [x, w, b], dy)]
        assert y.is_contiguous(memory_format=torch.channels_last)
        for what, a, e in zip(("output", "grad x", "grad w", "grad b"), got, want):
            result = check(a, e, "bfloat16")
            assert result.ok, f"{name} {what}: {result.detail}"
    # deterministic backward: no atomics anywhere
    again = torch.autograd.grad(impl.conv2d(x, w, b, **kw), [x, w, b], dy)
    first = torch.autograd.grad(impl.conv2d(x, w, b, **kw), [x, w, b], dy)
    assert all(torch.equal(a, c) for a, c in zip(again, first))


@pytest.mark.parametrize("case", [c.param(*gpu) for c in MAX_POOL_CASES if c.id in ("k3-s2-p1", "simplecnn-pool")])
def test_max_pool_matches_cudnn_exactly_on_gpu(case, untuned):
    impl = implementation("triton", "cuda")
    x = torch.randn(case.input, device="cuda").to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    v, i = impl.max_pool2d(x, return_indices=True, **case.kwargs)
    tv, ti = F.max_pool2d(x, return_indices=True, **case.kwargs)
    assert torch.equal(v, tv) and torch.equal(i, ti)
    g = torch.randn_like(v)
    assert torch.equal(torch.autograd.grad(v, [x], g)[0], torch.autograd.grad(tv, [x], g)[0])


def test_every_autotune_key_holds_every_argument_that_can_change_the_best_config():
    """A long-lived worker tunes once per key: a key without stride, padding, dilation, kernel size, layout
    (strides) or a constexpr flag would reuse one problem's tuning for another."""
    from triton.runtime.autotuner import Autotuner

    import kernels.triton.pool as tp

    tuned = [(n, k) for mod in (tc, tp) for n, k in vars(mod).items() if isinstance(k, Autotuner)]
    assert len(tuned) >= 10
    for name, kernel in tuned:
        meta = set().union(*(c.kwargs for c in kernel.configs))
        wanted = {a for a in kernel.arg_names if not a.endswith("_ptr") and a not in meta}
        assert wanted <= set(kernel.keys), (name, sorted(wanted - set(kernel.keys)))
        if name.startswith("_pointwise"):  # 1×1, stride 1, no padding by construction: no geometry arguments
            continue
        geometry = {"str_h", "pad_h", "dil_h", "R", "KH"} & set(kernel.arg_names)
        assert geometry and geometry <= set(kernel.keys), name


@pytest.mark.parametrize("device", DEVICES)
def test_a_repeated_call_replays_its_plan_and_a_changed_one_is_planned_anew(device, monkeypatch, untuned):
    """The first call of a problem goes through the autotuner and leaves a plan; the same call again launches
    from the plan (no autotuner), and any change that can change the launch — layout, ReLU, TF32 — misses it."""
    impl = implementation("triton", device)
    p = ConvProblem(N=2, C=32, H=6, W=6, K=32, R=3, S=3, padding=(1, 1))
    t = p.make_inputs(device)
    x, w, b = t["input"], t["weight"], t["bias"]
    tuner = []
    run = tc._conv_fwd_gemm_kernel.run
    monkeypatch.setattr(tc._conv_fwd_gemm_kernel, "run", lambda *a, **k: tuner.append(1) or run(*a, **k))
    monkeypatch.setattr(tc, "_PLANS", {})
    want = oracle.conv2d(x.double(), w.double(), b.double(), padding=1)
    first = impl.conv2d(x, w, b, padding=1)
    again = impl.conv2d(x, w, b, padding=1)
    assert len(tuner) == 1 and len(tc._PLANS) == 1, "the second call must replay the plan"
    assert torch.equal(first, again) and check(again, want, "float32")
    cl = x.contiguous(memory_format=torch.channels_last)
    assert check(impl.conv2d(cl, w, b, padding=1), want, "float32")
    assert check(impl.conv2d_relu(x, w, b, padding=1), want.relu(), "float32")
    assert len(tuner) == 3 and len(tc._PLANS) == 3, "layout and ReLU are part of the plan key"


@pytest.mark.parametrize("device", DEVICES)
def test_rows_learn_the_path_and_config_that_ran_from_the_call(device, untuned):
    import kernels

    impl = implementation("triton", device)
    p = ConvProblem(N=2, C=32, H=6, W=6, K=32, R=3, S=3, padding=(1, 1))
    t = p.make_inputs(device, requires_grad=True)
    with kernels.recording() as fwd:
        y = impl.conv2d(t["input"], t["weight"], t["bias"], padding=1)
    with kernels.recording() as bwd:
        y.sum().backward()
    assert fwd.backend == f"{tc.LABEL}:forward={tc.conv_path(p)}"
    assert bwd.backend == f"{tc.LABEL}:dgrad={tc.dgrad_path(p)}+{tc.LABEL}:wgrad={tc.wgrad_path(p)}"
    assert tc.LABEL == ("triton-interpreter" if tc.INTERPRETED else "triton")
    config = fwd.facts["triton"]["forward"]["config"]
    assert {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} <= set(config)
    assert bwd.facts["triton"]["wgrad"]["split_k"] == tc.wgrad_splits(p, device, tc.wgrad_path(p))


# ---- the 1×1 path: a plain strided GEMM (kernels/triton/gemm.py) --------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "bias+relu"])
@pytest.mark.parametrize("shape", [(2, 32, 5, 6, 48), (3, 128, 4, 4, 16)], ids=["unaligned", "even-k"])
def test_pointwise_convs_run_as_a_gemm_in_every_part(shape, fused, device, untuned):
    """channels_last 1×1 stride-1 convs take the GEMM path forward, dgrad and wgrad (with split-K, the bias
    gradient and the ReLU mask of the fused conv+ReLU), and agree with the float64 oracle."""
    import kernels

    N, C, H, W, K = shape
    impl = implementation("triton", device)
    p = ConvProblem(N=N, C=C, H=H, W=W, K=K, R=1, S=1, layout="channels_last", bias=fused)
    assert tc.conv_path(p) == tc.dgrad_path(p) == tc.wgrad_path(p) == "gemm-1x1"
    t = p.make_inputs(device, requires_grad=True)
    x, w, b = t["input"], t["weight"], t["bias"]
    with kernels.recording() as fwd:
        y = (impl.conv2d_relu if fused else impl.conv2d)(x, w, b)
    dy = torch.randn_like(y)
    with kernels.recording() as bwd:
        y.backward(dy)
    assert fwd.backend == f"{tc.LABEL}:forward=gemm-1x1"
    assert bwd.backend == f"{tc.LABEL}:dgrad=gemm-1x1+{tc.LABEL}:wgrad=gemm-1x1"
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if fused else None
    want = oracle.conv2d(xd, wd, bd)
    want = want.relu() if fused else want
    want.backward(dy.double())
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert check(y, want, "float32") and check(x.grad, xd.grad, "float32") and check(w.grad, wd.grad, "float32")
    if fused:
        assert check(b.grad, bd.grad, "float32")


@pytest.mark.parametrize("device", DEVICES)
def test_pointwise_wgrad_splits_whole_blocks_and_empty_splits_add_nothing(device, monkeypatch, untuned):
    implementation("triton", device)
    p = ConvProblem(N=2, C=32, H=9, W=9, K=32, R=1, S=1, layout="channels_last")  # L = 162 rows
    t = p.make_inputs(device)
    dy = torch.randn(p.output_shape, device=device).contiguous(memory_format=torch.channels_last)
    want = torch.nn.grad.conv2d_weight(t["input"].double(), p.weight_shape, dy.double())
    for splits in (1, 2, 5):  # 5 splits of 162 rows rounded up to 128: splits 2–4 have no rows and store zeros
        dw, _ = tc.conv2d_wgrad(dy, t["input"], p, torch.float32, splits=splits)
        assert check(dw, want, "float32"), splits


def test_pointwise_falls_back_to_the_gather_gemm_when_pixels_are_not_evenly_spaced(untuned):
    import kernels

    impl = implementation("triton", "cpu")
    x = torch.randn(2, 32, 4, 8).contiguous(memory_format=torch.channels_last)[:, :, :, ::2]  # every other column
    w = torch.randn(32, 32, 1, 1)
    with kernels.recording() as rec:
        y = impl.conv2d(x, w)
    assert rec.backend == f"{tc.LABEL}:forward=gemm", "the row says which kernel really ran"
    assert check(y, F.conv2d(x.double(), w.double()), "float32")
