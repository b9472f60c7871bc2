"""The float64 oracle: conv2d, max_pool2d and avg_pool2d written from their defining formulas.

Nothing here calls a library convolution or pooling op, and nothing imports ``kernels``. Every output element is
computed from explicit integer index arithmetic over the (padded) input,

    conv:  out[n, k, p, q] = bias[k] + Σ_{c, r, s} x[n, g·C/G + c, p·sh − pt + r·dh, q·sw − pl + s·dw] · w[k, c, r, s]
    max:   out[n, c, p, q] = max_{i, j} x[n, c, p·sh − ph + i·dh, q·sw − pw + j·dw]   (first maximum wins)
    avg:   out[n, c, p, q] = Σ_{i, j} x[n, c, p·sh − ph + i, q·sw − pw + j] / divisor(p, q)

with out-of-range taps reading 0 (conv, avg) or −inf (max). The inputs are promoted to float64, results are float64,
and gradients come from autograd over these same formulas (gather, multiply, sum).
"""

from __future__ import annotations

import torch

from .args import avg_pool2d_problem, conv2d_problem, max_pool2d_problem
from .problems import PoolProblem

#: largest gathered patch tensor (elements) built at once; the batch is chunked to stay below it
_PATCH_BUDGET = 1 << 25


def _padded(x: torch.Tensor, top: int, bottom: int, left: int, right: int, fill: float) -> torch.Tensor:
    """x (N, C, H, W) placed inside a (H+top+bottom)×(W+left+right) canvas of ``fill``; differentiable."""
    N, C, H, W = x.shape
    canvas = x.new_full((N, C, H + top + bottom, W + left + right), fill)
    canvas[:, :, top:top + H, left:left + W] = x
    return canvas


def _taps(out: int, stride: int, kernel: int, dilation: int, device) -> torch.Tensor:
    """(out, kernel) padded-input coordinate of tap i of output o: o·stride + i·dilation."""
    o = torch.arange(out, device=device) * stride
    return o[:, None] + (torch.arange(kernel, device=device) * dilation)[None, :]


def _patches(xp: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Gather xp[n, c, rows[p, i], cols[q, j]] → (N, C, P, Q, kh, kw)."""
    g = xp[:, :, rows[:, :, None, None], cols[None, None, :, :]]  # (N, C, P, kh, Q, kw)
    return g.permute(0, 1, 2, 4, 3, 5)


def _batched(input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (input, False) if input.dim() == 4 else (input.unsqueeze(0), True)


def _chunks(x: torch.Tensor, per_image: int):
    step = max(1, _PATCH_BUDGET // max(1, per_image))
    return [x[i:i + step] for i in range(0, x.shape[0], step)] if x.shape[0] else [x]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """float64 ``F.conv2d`` from the formula above."""
    p = conv2d_problem(input, weight, bias, stride, padding, dilation, groups)
    x, unbatched = _batched(input.to(torch.float64))
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    rows = _taps(p.P, p.stride[0], p.R, p.dilation[0], x.device)
    cols = _taps(p.Q, p.stride[1], p.S, p.dilation[1], x.device)
    w = weight.to(torch.float64).reshape(G, Kg, Cg, p.R, p.S)
    outs = []
    for xc in _chunks(x, p.C * p.P * p.Q * p.R * p.S):
        patches = _patches(_padded(xc, *p.pads, 0.0), rows, cols)  # (n, C, P, Q, R, S)
        patches = patches.reshape(xc.shape[0], G, Cg, p.P, p.Q, p.R, p.S)
        outs.append(torch.einsum("ngcpqrs,gkcrs->ngkpq", patches, w).reshape(xc.shape[0], p.K, p.P, p.Q))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    if bias is not None:
        out = out + bias.to(torch.float64).view(1, p.K, 1, 1)
    return out.squeeze(0) if unbatched else out


def _pool_windows(x: torch.Tensor, p: PoolProblem, fill: float, reduce):
    """Apply ``reduce`` to the (n, C, P, Q, kh·kw) windows of each batch chunk and concatenate the results.

    ceil_mode windows that run past the padding read ``fill`` there.
    """
    (kh, kw), (sh, sw), (dh, dw) = p.kernel, p.stride, p.dilation
    rows, cols = _taps(p.P, sh, kh, dh, x.device), _taps(p.Q, sw, kw, dw, x.device)
    parts = []
    for xc in _chunks(x, p.C * p.P * p.Q * kh * kw):
        windows = _patches(_padded(xc, *p.pads, fill), rows, cols)
        parts.append(reduce(windows.reshape(*xc.shape[:2], p.P, p.Q, kh * kw)))
    return [torch.cat(t) for t in zip(*parts)] if isinstance(parts[0], tuple) else torch.cat(parts)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """float64 ``F.max_pool2d``; indices are flat h·W + w positions in the input plane of the first maximum."""
    p = max_pool2d_problem(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    x, unbatched = _batched(input.to(torch.float64))
    values, tap = _pool_windows(x, p, float("-inf"), lambda win: tuple(win.max(dim=-1)))  # first max on ties
    (_kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    h = (torch.arange(p.P, device=x.device) * sh - ph)[:, None] + (tap // kw) * dh
    w = (torch.arange(p.Q, device=x.device) * sw - pw)[None, :] + (tap % kw) * dw
    start = p.first_tap_index(x.device)
    # nothing beats −inf: ATen reports the window's first in-range tap (its starting point), as the kernels must
    indices = torch.where(values == float("-inf"), start, h * p.W + w)
    if unbatched:
        values, indices = values.squeeze(0), indices.squeeze(0)
    return (values, indices) if return_indices else values


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None) -> torch.Tensor:
    """float64 ``F.avg_pool2d``."""
    p = avg_pool2d_problem(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    x, unbatched = _batched(input.to(torch.float64))
    out = _pool_windows(x, p, 0.0, lambda win: win.sum(dim=-1)) / p.divisor(x.device)
    return out.squeeze(0) if unbatched else out
