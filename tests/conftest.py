"""Shared test setup: devices, implementation lookup with skip reasons, and the oracle agreement check."""

from __future__ import annotations

import os

import torch

# Triton kernels run on the CPU only under the interpreter, which must be chosen before triton is imported.
HAS_CUDA = torch.cuda.is_available()
# float32 means IEEE float32 in every agreement test: cuDNN (and our kernels, which follow its flag) would otherwise
# default to TF32 convolutions on Ampere+ GPUs; TF32 is benchmarked as its own dtype.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import kernels  # noqa: E402
from reference import check, check_exact, oracle  # noqa: E402

# CI runs the random searches with a fixed seed so a red build is reproducible; locally they explore.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")



def pytest_configure(config):
    """`pytest --benchmark-only` should time, even though the project's addopts disable benchmarks for plain runs."""
    if config.getoption("benchmark_only", False):
        config.option.benchmark_disable = False


DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                                                  pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])]


def implementation(name: str, device: str):
    """The registered implementation, or a skip saying why it cannot run here. A built-in module that failed to
    import is a failure, never a skip: only a missing optional dependency (e.g. no triton package) may make an
    implementation unavailable, and then it is still registered and says why."""
    if name not in kernels.names():
        if broken := kernels.builtin_load_errors():
            pytest.fail(f"{name} is not registered, and built-in implementation modules failed to import: "
                        + "; ".join(f"kernels.{m}: {err}" for m, err in broken.items()), pytrace=False)
        pytest.skip(f"{name} is not registered; import errors: {kernels.load_errors() or 'none'}")
    impl = kernels.get(name)
    reason = impl.unavailable_reason(device)
    if reason:
        pytest.skip(f"{name} unavailable on {device}: {reason}")
    return impl


def leaf(t: torch.Tensor | None, device, dtype, layout: str = "nchw") -> torch.Tensor | None:
    """A fresh leaf copy on ``device``/``dtype`` that requires grad; ``layout`` 'channels_last' or 'transposed'
    (a non-contiguous view with H and W strides swapped) for the input."""
    if t is None:
        return None
    t = t.detach().to(device=device, dtype=dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t.requires_grad_(True)


def assert_agrees(name: str, actual, expected, dtype) -> None:
    result = check(actual, expected, dtype)
    assert result.ok, f"{name}: {result.detail} (max abs {result.max_abs_err:.3g}, max rel {result.max_rel_err:.3g})"


def check_against_oracle(fn, oracle_fn, tensors: dict, kwargs: dict, dtype, grads: bool = True, seed: int = 1):
    """Run ``fn`` and the float64 ``oracle_fn`` on the same tensors; compare outputs (and indices), then the
    gradients of the same random projection of the output with respect to every tensor."""
    names = [k for k, v in tensors.items() if v is not None]
    out = fn(**tensors, **kwargs)
    ref_inputs = {k: (v.detach().double().requires_grad_(True) if v is not None else None) for k, v in tensors.items()}
    ref = oracle_fn(**ref_inputs, **kwargs)
    if isinstance(ref, tuple):  # max_pool2d with return_indices
        assert isinstance(out, tuple) and len(out) == 2, "return_indices=True must return (values, indices)"
        idx = check_exact(out[1], ref[1])
        assert idx.ok, f"indices: {idx.detail}"
        assert out[1].dtype == torch.int64, f"indices dtype {out[1].dtype}"
        out, ref = out[0], ref[0]
    assert out.dtype == tensors["input"].dtype, f"output dtype {out.dtype} differs from input {tensors['input'].dtype}"
    assert out.device == tensors["input"].device
    assert_agrees("output", out, ref, dtype)
    if not grads or out.numel() == 0:
        return
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = torch.autograd.grad(out, [tensors[k] for k in names], g.to(out), allow_unused=True)
    want = torch.autograd.grad(ref, [ref_inputs[k] for k in names], g.to(ref.device))
    for k, a, e in zip(names, got, want):
        assert a is not None, f"no gradient reached '{k}'"
        assert a.shape == tensors[k].shape and a.dtype == tensors[k].dtype, f"grad of '{k}': {a.shape} {a.dtype}"
        assert_agrees(f"grad of '{k}'", a, e, dtype)


ORACLE = {"conv2d": oracle.conv2d, "max_pool2d": oracle.max_pool2d, "avg_pool2d": oracle.avg_pool2d}
