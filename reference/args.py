"""Argument checking for conv2d / max_pool2d / avg_pool2d calls, shared by the oracle and every implementation.

Each ``*_problem`` function takes exactly the arguments of the ``torch.nn.functional`` function of the same name,
refuses what torch refuses — before any work is done, with an error that names the argument — and returns the
problem dataclass that describes the call. Types are checked here (``TypeError``); value rules live in the problems.

Deliberate differences from torch (convbench benchmarks floating-point math against a float64 oracle):
integer, bool and complex tensors are refused (torch's CPU kernels accept some), tensors on different devices are
refused even where torch tolerates it (the 'meta' device), a conv input with zero channels is refused (torch
returns an output with zero channels, ignoring the weight), and dilation 0 is refused for an empty batch too (torch
skips that check when the input has no elements).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from .problems import FLOATING, ConvProblem, Pair, PoolProblem, dtype_name, layout_of


def _int(op: str, arg: str, value) -> int:
    wrong = TypeError(f"{op}: '{arg}' must be an int or a pair of ints, got {type(value).__name__} {value!r}")
    if isinstance(value, (bool, float)):
        raise wrong
    try:
        return operator.index(value)
    except TypeError:
        raise wrong from None


def pair(op: str, arg: str, value, default: Pair | None = None) -> Pair:
    """An int or a 1- or 2-sequence of ints → (h, w). ``default`` (pool stride) replaces None or an empty sequence."""
    if default is not None and (value is None or (isinstance(value, Sequence) and len(value) == 0)):
        return default
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) not in (1, 2):
            raise ValueError(f"{op}: '{arg}' must be an int or a pair of ints, got {tuple(value)!r}")
        h = _int(op, arg, value[0])
        return h, (_int(op, arg, value[1]) if len(value) == 2 else h)
    v = _int(op, arg, value)
    return v, v


def _tensor(op: str, arg: str, value, dims: tuple[int, ...] | None, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: '{arg}' must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOATING:
        raise TypeError(f"{op}: '{arg}' must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if dims is not None and value.dim() not in dims:
        raise ValueError(f"{op}: '{arg}' must be {what}, got shape {tuple(value.shape)}")
    return value


def _same_kind(op: str, ref: torch.Tensor, arg: str, t: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: '{arg}' has dtype {t.dtype} but 'input' has {ref.dtype}; they must match")
    if t.device != ref.device:
        raise ValueError(f"{op}: '{arg}' is on {t.device} but 'input' is on {ref.device}; they must be on one device")


def _flag(op: str, arg: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: '{arg}' must be a bool, got {type(value).__name__} {value!r}")
    return value


def conv2d_problem(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> ConvProblem:
    """Check a ``F.conv2d`` call and describe it. A 3-D (unbatched) input gives a problem with N=1."""
    op = "conv2d"
    x = _tensor(op, "input", input, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")
    w = _tensor(op, "weight", weight, (4,), "4-D (K, C/groups, R, S)")
    _same_kind(op, x, "weight", w)
    if bias is not None:
        b = _tensor(op, "bias", bias, None, "1-D")
        _same_kind(op, x, "bias", b)
        if b.shape != (w.shape[0],):
            raise ValueError(f"{op}: 'bias' must be 1-D with {w.shape[0]} elements (one per output channel of "
                             f"'weight'), got shape {tuple(b.shape)}")
    st, dil = pair(op, "stride", stride), pair(op, "dilation", dilation)
    if isinstance(padding, str):
        pad: Pair | str = padding
    else:
        pad = pair(op, "padding", padding)
    g = _int(op, "groups", groups)
    if g < 1:
        raise ValueError(f"{op}: 'groups' must be positive, got {g}")
    shape = (1, *x.shape) if x.dim() == 3 else tuple(x.shape)
    N, C, H, W = shape
    K, Cg, R, S = w.shape
    if K % g:
        raise ValueError(f"{op}: 'weight' has {K} output channels, which groups={g} does not divide")
    if Cg * g != C:
        raise ValueError(f"{op}: 'input' has {C} channels but 'weight' {tuple(w.shape)} with groups={g} expects "
                         f"{Cg * g}")
    return ConvProblem(N=N, C=C, H=H, W=W, K=K, R=R, S=S, stride=st, padding=pad, dilation=dil, groups=g,
                       bias=bias is not None, dtype=dtype_name(x.dtype), layout=layout_of(x))


def _pool_input(op: str, input) -> torch.Tensor:
    return _tensor(op, "input", input, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")


def max_pool2d_problem(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       return_indices=False) -> PoolProblem:
    """Check a ``F.max_pool2d`` call and describe it."""
    op = "max_pool2d"
    x = _pool_input(op, input)
    k = pair(op, "kernel_size", kernel_size)
    shape = (1, *x.shape) if x.dim() == 3 else tuple(x.shape)
    return PoolProblem(op, *shape, kernel=k, stride=pair(op, "stride", stride, default=k),
                       padding=pair(op, "padding", padding), dilation=pair(op, "dilation", dilation),
                       ceil_mode=_flag(op, "ceil_mode", ceil_mode), return_indices=bool(return_indices),
                       dtype=dtype_name(x.dtype), layout=layout_of(x))


def avg_pool2d_problem(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None) -> PoolProblem:
    """Check a ``F.avg_pool2d`` call and describe it."""
    op = "avg_pool2d"
    x = _pool_input(op, input)
    k = pair(op, "kernel_size", kernel_size)
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, int):
            raise TypeError(f"{op}: 'divisor_override' must be an int or None, got "
                            f"{type(divisor_override).__name__} {divisor_override!r}")
    shape = (1, *x.shape) if x.dim() == 3 else tuple(x.shape)
    return PoolProblem(op, *shape, kernel=k, stride=pair(op, "stride", stride, default=k),
                       padding=pair(op, "padding", padding), ceil_mode=_flag(op, "ceil_mode", ceil_mode),
                       count_include_pad=_flag(op, "count_include_pad", count_include_pad),
                       divisor_override=divisor_override, dtype=dtype_name(x.dtype), layout=layout_of(x))
