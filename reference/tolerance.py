"""The one tolerance table, and the check every comparison with the oracle goes through.

An element passes when  |actual − expected| ≤ atol · max(1, max|expected|) + rtol · |expected|.
The absolute term is scaled by the largest reference magnitude so that one table serves outputs of O(1) and
gradients summed over long reductions (a weight gradient sums N·P·Q products) alike.

Why these numbers (inputs are rounded to the dtype first, so the oracle sees exactly the same operands):
- float64: only summation order differs; ~1e-15 observed, 1e-9 leaves room for long reductions.
- float32: summation order, Winograd/FFT algorithms in oneDNN/cuDNN; ~1e-6 relative observed on K·R·S ≤ 4608.
- tf32: operands rounded to 10 mantissa bits (2^-11 ≈ 4.9e-4 relative each) before fp32 accumulation.
- float16: fp32 accumulation, one final rounding to 11 bits (4.9e-4), plus rounding of partial sums kept in fp16.
- bfloat16: fp32 accumulation, final rounding to 8 bits (3.9e-3), plus rounding of partial sums kept in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-9, atol=1e-9),
    "float32": Tolerance(rtol=1e-4, atol=1e-5),
    "tf32": Tolerance(rtol=1e-2, atol=2e-3),
    "float16": Tolerance(rtol=4e-3, atol=2e-3),
    "bfloat16": Tolerance(rtol=3e-2, atol=1.6e-2),
}


def tolerance(dtype: str | torch.dtype) -> Tolerance:
    """Look up the tolerance of a benchmark dtype name or a torch floating dtype."""
    from .problems import dtype_name

    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCES)}, got {dtype!r}")
    return TOLERANCES[name]


@dataclass(frozen=True)
class Check:
    """Outcome of comparing one tensor with the oracle. max_rel_err uses max(|expected|, the absolute floor)."""

    max_abs_err: float
    max_rel_err: float
    ok: bool
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "mismatch"

    def __bool__(self) -> bool:
        return self.ok


def check(actual: torch.Tensor, expected: torch.Tensor, dtype: str | torch.dtype) -> Check:
    """Compare ``actual`` with the float64 ``expected`` under the tolerance of ``dtype`` (NaN matches NaN)."""
    if tuple(actual.shape) != tuple(expected.shape):
        return Check(float("inf"), float("inf"), False,
                     f"shape {tuple(actual.shape)} differs from expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return Check(0.0, 0.0, True)
    tol = tolerance(dtype)
    a = actual.detach().to(device=expected.device, dtype=torch.float64)
    e = expected.detach().to(torch.float64)
    both_nan = torch.isnan(a) & torch.isnan(e)
    same_inf = torch.isinf(a) & (a == e)
    diff = torch.where(both_nan | same_inf, torch.zeros_like(a), (a - e).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    finite_e = e[torch.isfinite(e)]
    scale = max(1.0, finite_e.abs().max().item()) if finite_e.numel() else 1.0
    floor = tol.atol * scale
    bound = floor + tol.rtol * torch.nan_to_num(e.abs(), nan=0.0, posinf=0.0)
    rel = diff / torch.clamp(torch.nan_to_num(e.abs(), nan=0.0, posinf=0.0), min=floor)
    bad = diff > bound
    ok = not bool(bad.any())
    detail = "" if ok else (f"{int(bad.sum())} of {bad.numel()} elements outside rtol={tol.rtol}, "
                            f"atol={tol.atol}·{scale:.3g}")
    return Check(diff.max().item(), rel.max().item(), ok, detail)


def check_exact(actual: torch.Tensor, expected: torch.Tensor) -> Check:
    """Exact comparison for integer results (max-pool indices)."""
    if tuple(actual.shape) != tuple(expected.shape):
        return Check(float("inf"), float("inf"), False,
                     f"shape {tuple(actual.shape)} differs from expected {tuple(expected.shape)}")
    diff = actual.detach().to(expected.device).long() != expected.detach().long()
    wrong = int(diff.sum())
    return Check(float(wrong), float(wrong) / max(1, diff.numel()), wrong == 0,
                 f"{wrong} of {diff.numel()} indices differ" if wrong else "")


def combine(*checks: Check) -> Check:
    """Worst of several checks (forward output and each gradient)."""
    failed = [c.detail for c in checks if not c.ok]
    return Check(max(c.max_abs_err for c in checks), max(c.max_rel_err for c in checks), not failed,
                 "; ".join(failed))


# ---- training steps (reference.agreement.train_agreement) ---------------------------------------------------------
#: Added for the training step: an optimizer update is compared with the written-out float64 update from the same
#: gradient and state, elementwise within UPDATE_ULPS · u · (max|update| + |new parameter|), u the unit roundoff of
#: the storage dtype (2^-24 for float32 and tf32). SGD is two rounded operations and Adam about eight, whose terms
#: can cancel (hence the tensor's largest update as the scale), and the new parameter is rounded once when stored;
#: observed ≤ 5 ulps (Adam) in eager torch.optim on the CPU. A compiled step (and capturable Adam, used for CUDA
#: graphs) computes Adam's bias corrections 1 − βᵗ with tensor ops in float32, where β2 = 0.999 rounds to
#: 0.99900001: 1 − β2 is then off by 1.3e-5 relative and the update by up to ~1e-5 (measured: 167 ulps for the
#: compiled SimpleCNN Adam step at batch 64). 512 admits that; an update off by 1e-3 of itself (16 800 ulps) or by
#: lr·g is still caught.
UPDATE_ULPS = 512
