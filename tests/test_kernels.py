"""Every implementation agrees with the float64 oracle — forward, indices and gradients — on every case."""

from __future__ import annotations

import os

import pytest
import torch
from cases import CASES, MAX_POOL_CASES, make_tensors
from conftest import DEVICES, ORACLE, check_against_oracle, implementation, leaf

import kernels

#: built-ins a run takes by default (opt-in compile modes are the same class: tests/test_provenance checks them);
#: an unregistered one skips with the import error as its reason
IMPLS = tuple(n for n in kernels.ORDER if not n.startswith("compile-"))
ALL_CASES = [(op, c) for op, cases in CASES.items() for c in cases]

# torch.compile traces and builds every problem anew (1.5–6 s each on 2 CPU cores) while the argument handling is
# torch's own, so `compile` runs a covering subset unless CONVBENCH_TEST_ALL=1.
COMPILE_SUBSET = {"basic", "stride-pad-tuples", "same-even-asymmetric", "dilation-stride-asym", "empty-batch",
                  "depthwise-multiplier-dilated", "unbatched-grouped-same", "channels-last", "k3-s2-p1",
                  "ceil-dilated-strided", "ceil-exclude-pad", "divisor-negative-ceil", "unbatched"}
EVERY_CASE = os.environ.get("CONVBENCH_TEST_ALL") == "1"


def params(cases, names=IMPLS, subset=COMPILE_SUBSET):
    """(name, op, case) for every implementation, thinned for `compile` as described above."""
    return [pytest.param(n, op, c, id=f"{n}-{op}-{c.id}") for n in names for op, c in cases
            if n != "compile" or EVERY_CASE or c.id in subset]


def run_case(impl, op: str, case, device: str, dtype: torch.dtype, name: str):
    tensors = {k: leaf(v, device, dtype, case.layout if k == "input" else "nchw")
               for k, v in make_tensors(op, case).items()}
    kwargs = dict(case.kwargs, return_indices=True) if op == "max_pool2d" else case.kwargs
    check_against_oracle(getattr(impl, op), ORACLE[op], tensors, kwargs, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,op,case", params(ALL_CASES))
def test_float32_forward_and_gradients(name, op, case, device):
    run_case(implementation(name, device), op, case, device, torch.float32, "float32")


# float64 and the half types on a smaller covering set: the argument forms above do not depend on the dtype,
# the accumulation paths do (grouped, strided, dilated, pooled).
DTYPE_CASES = [(op, c) for op, cases in CASES.items() for c in cases
               if c.id in ("basic", "k3-s2-p1", "groups4-strided", "dilation-stride-asym", "same-even-asymmetric",
                           "ceil-exclude-pad", "dilation", "simplecnn-conv2", "channels-last")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
@pytest.mark.parametrize("name,op,case", params(DTYPE_CASES, subset={"basic", "k3-s2-p1", "ceil-exclude-pad"}))
def test_other_dtypes(name, op, case, dtype, device):
    run_case(implementation(name, device), op, case, device, getattr(torch, dtype), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IMPLS)
def test_max_pool_ties_nan_and_return_indices_flag(name, device):
    impl = implementation(name, device)
    x = torch.randint(0, 3, (2, 3, 9, 9), generator=torch.Generator().manual_seed(0)).float().to(device)
    for kw in [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), dilation=2, ceil_mode=True)]:
        v, i = impl.max_pool2d(x, return_indices=True, **kw)
        tv, ti = ORACLE["max_pool2d"](x, return_indices=True, **kw)
        same = torch.equal(v.cpu().double(), tv.cpu()) and torch.equal(i.cpu(), ti.cpu())
        assert same, f"ties pick the first max {kw}"
    assert isinstance(impl.max_pool2d(x, 2), torch.Tensor)  # return_indices=False → a tensor, not a tuple
    y = torch.zeros(1, 1, 4, 4, device=device)
    y[0, 0, 1, 2] = float("nan")
    assert torch.isnan(impl.max_pool2d(y, 2)[0, 0, 0, 1])


INDUCTOR_PADDED_INDEX = ("torch.compile's CPU max_pool2d (Inductor) reports a position in the padding (flat index −7) "
                         "for a window whose in-image values are all −inf; eager ATen reports the first in-image tap")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padded", [False, True], ids=["in-image", "padded"])
@pytest.mark.parametrize("name", IMPLS)
def test_max_pool_windows_where_nothing_beats_neg_inf(name, padded, device):
    if name == "compile" and padded and device == "cpu":
        pytest.xfail(INDUCTOR_PADDED_INDEX)
    impl = implementation(name, device)
    z = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    z[0, 0, :2, :2] = z[0, 1, 1:4, 1:4] = float("-inf")
    z = z.to(device)
    kw = dict(kernel_size=3, stride=2, padding=1) if padded else dict(kernel_size=2)
    v, i = impl.max_pool2d(z, return_indices=True, **kw)
    tv, ti = ORACLE["max_pool2d"](z, return_indices=True, **kw)
    assert torch.equal(v.cpu().double(), tv.cpu()) and torch.equal(i.cpu(), ti.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IMPLS)
def test_gradient_only_for_what_requires_it(name, device):
    impl = implementation(name, device)
    t = make_tensors("conv2d", CASES["conv2d"][0])
    x = t["input"].float().to(device).requires_grad_(True)
    w, b = t["weight"].float().to(device), t["bias"].float().to(device)
    out = impl.conv2d(x, w, b, padding=1)
    (gx,) = torch.autograd.grad(out.sum(), [x])
    assert gx.shape == x.shape
    with torch.no_grad():
        assert not impl.conv2d(x, w, b, padding=1).requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IMPLS)
def test_conv2d_relu_is_relu_of_conv2d(name, device):
    impl = implementation(name, device)
    case = CASES["conv2d"][3]  # stride2-pad1
    tensors = {k: leaf(v, device, torch.float32) for k, v in make_tensors("conv2d", case).items()}
    check_against_oracle(impl.conv2d_relu, lambda **kw: torch.relu(ORACLE["conv2d"](**kw)), tensors, case.kwargs,
                         "float32")


def test_max_pool_case_table_exercises_dropped_ceil_windows():
    """Guard the table itself: the 'ceil-window-dropped' case must hit ATen's last-window rule."""
    case = next(c for c in MAX_POOL_CASES if c.id == "ceil-window-dropped")
    size, k = case.input[-1], case.kwargs["kernel_size"]
    s, pad = case.kwargs["stride"], case.kwargs["padding"]
    assert ((size + 2 * pad - k + s - 1) // s + 1 - 1) * s >= size + pad


def test_registry():
    names = kernels.names()
    assert {"naive", "im2col", "cudnn", "compile"} <= set(names)
    assert set(kernels.default_names()) == set(names) - {"compile-max-autotune", "compile-max-autotune-no-cudagraphs"}
    for n in names:
        impl = kernels.get(n)
        assert impl.name == n and impl.summary
        assert impl.unavailable_reason("cpu") is None or n in ("triton", "compile-max-autotune-no-cudagraphs")
        assert all(callable(getattr(impl, op)) for op in kernels.OPS)
    with pytest.raises(ValueError, match="'name'"):
        kernels.get("no-such-implementation")
    with pytest.raises(TypeError, match="'name'"):
        kernels.get(3)


def test_register_refuses_duplicates_and_nameless():
    with pytest.raises(ValueError, match="already registered"):
        kernels.register(type(kernels.get("naive")))
    with pytest.raises(TypeError, match="name"):
        kernels.register(type("Nameless", (kernels.Implementation,), {}))


def test_cudnn_reports_the_backend_that_ran():
    from reference import ConvProblem

    impl = kernels.get("cudnn")
    fp32 = ConvProblem(N=2, C=16, H=16, W=16, K=16, R=3, S=3, padding=(1, 1))
    expected = "onednn" if torch.backends.mkldnn.is_available() else "aten-slow2d"
    assert impl.backend("conv2d", "cpu", fp32) == expected
    assert impl.backend("max_pool2d", "cpu") == "aten-cpu"
