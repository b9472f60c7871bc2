"""Triton max_pool2d / avg_pool2d kernels, forward and backward.

Pooling is bandwidth-bound, so each program owns a 2-D tile of BLOCK_M output (or input) pixels × BLOCK_C planes,
a plane being one (n, c) pair: for an NHWC input the plane axis is the contiguous channel axis (vectorised loads),
for NCHW the pixel axis is (neighbouring threads read neighbouring pixels). Windows are swept with runtime loops
over the kh×kw taps; out-of-range taps are masked. Comparisons and sums run in fp32 (fp64 for fp64).

Backward kernels gather instead of scattering: each program owns a tile of *input* pixels and, for each tap,
finds the one output window (if any) that reads it through that tap — no atomics, no zero-fill, deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from reference import PoolProblem

from .._common import output_memory_format as memory_format
from .._provenance import active as _provenance_on
from .._provenance import note
from .conv import INTERPRETED, LABEL, TUNING, acc_dtype, autotune, batch_chunks, launches


@triton.jit
def _tile(NC, C, ROWS, COLS, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's BLOCK_C (n, c) planes and BLOCK_M pixels of a ROWS×COLS grid, with their masks:
    (n, c, c_ok, row, col, m_ok). One flat grid axis (neither count is bounded by the 65535 limit of grid axes 1
    and 2), plane tiles fastest so neighbouring programs read neighbouring channels of the same pixels."""
    c_tiles = tl.cdiv(NC, BLOCK_C)
    pid = tl.program_id(0)
    rc = (pid % c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    rm = (pid // c_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    return rc // C, rc % C, rc < NC, rm // COLS, rm % COLS, rm < ROWS * COLS


def _cfg(bm, bc, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_C": bc}, num_warps=warps, num_stages=2)


# H100: wide channel tiles for NHWC, long pixel tiles for NCHW; 4–8 warps keep enough loads in flight.
POOL_CONFIGS = [_cfg(32, 64, 4), _cfg(16, 128, 4), _cfg(64, 64, 8), _cfg(8, 256, 4), _cfg(128, 16, 4),
                _cfg(256, 8, 4), _cfg(64, 32, 4)]
if INTERPRETED:  # one config: autotuning the interpreter would time numpy
    POOL_CONFIGS = [_cfg(256, 16, 1)]


# max_pool2d forward: out[n, c, p, q] = max over taps (i, j) of x[n, c, p·sh − ph + i·dh, q·sw − pw + j·dw], and
# the flat index h·W + w of the winner. Same rule as ATen: a tap replaces the running maximum when it is greater
# or NaN (first maximum wins ties, NaN propagates); the search starts from −inf with the index of the window's
# first in-range tap, which stays the answer when nothing beats −inf (including a dilated window that misses the
# input). One program owns BLOCK_M output pixels × BLOCK_C planes. Traffic: x read kh·kw/(sh·sw) times (cache
# hits after the first), values (and int64 indices) written once.
@autotune(POOL_CONFIGS, prune_configs_by=TUNING)
@triton.jit
def _max_pool_fwd_kernel(
    x_ptr, y_ptr, i_ptr,
    NC, C, H, W, P, Q,
    sxn, sxc, sxh, sxw, syn, syc, syp, syq, sin, sic, sip, siq,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, STORE_INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, c, c_ok, p, q, m_ok = _tile(NC, C, P, Q, BLOCK_M, BLOCK_C)
    h0 = p * str_h - pad_h
    w0 = q * str_w - pad_w
    # first tap of each window that is not in the top/left padding (PoolProblem.first_taps)
    first_h = h0 + (tl.maximum(-h0, 0) + dil_h - 1) // dil_h * dil_h
    first_w = w0 + (tl.maximum(-w0, 0) + dil_w - 1) // dil_w * dil_w
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), ACC)
    index = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.int64) + (first_h * W + first_w).to(tl.int64)[:, None]
    planes = (n * sxn + c * sxc)[None, :]
    for i in range(KH):
        h = h0 + i * dil_h
        h_ok = m_ok & (h >= 0) & (h < H)
        for j in range(KW):
            w = w0 + j * dil_w
            ok = (h_ok & (w >= 0) & (w < W))[:, None] & c_ok[None, :]
            v = tl.load(x_ptr + (h * sxh + w * sxw)[:, None] + planes, mask=ok, other=0.0).to(ACC)
            take = ok & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            index = tl.where(take, (h * W + w).to(tl.int64)[:, None], index)
    out_ok = m_ok[:, None] & c_ok[None, :]
    tl.store(y_ptr + (p * syp + q * syq)[:, None] + (n * syn + c * syc)[None, :], best.to(y_ptr.dtype.element_ty),
             mask=out_ok)
    if STORE_INDEX:
        tl.store(i_ptr + (p * sip + q * siq)[:, None] + (n * sin + c * sic)[None, :], index, mask=out_ok)


# max_pool2d backward as a gather: dx[n, c, h, w] = Σ over taps (i, j) of dy[n, c, p, q] where p·sh = h + ph − i·dh,
# q·sw = w + pw − j·dw land on an output and that window's saved index is h·W + w. Windows that do not contain the
# pixel are never visited, so empty (−inf) windows give no gradient. One program owns BLOCK_M input pixels ×
# BLOCK_C planes. Traffic: indices and dy read kh·kw times (cache hits after the first), dx written once.
@autotune(POOL_CONFIGS, prune_configs_by=TUNING)
@triton.jit
def _max_pool_bwd_kernel(
    dy_ptr, i_ptr, dx_ptr,
    NC, C, H, W, P, Q,
    sdn, sdc, sdp, sdq, sin, sic, sip, siq, sxn, sxc, sxh, sxw,
    str_h, str_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, c, c_ok, h, w, m_ok = _tile(NC, C, H, W, BLOCK_M, BLOCK_C)
    dy_planes = (n * sdn + c * sdc)[None, :]
    i_planes = (n * sin + c * sic)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for i in range(KH):
        th = h + pad_h - i * dil_h
        p = th // str_h
        p_ok = m_ok & (th >= 0) & (th % str_h == 0) & (p < P)
        for j in range(KW):
            tw = w + pad_w - j * dil_w
            q = tw // str_w
            ok = (p_ok & (tw >= 0) & (tw % str_w == 0) & (q < Q))[:, None] & c_ok[None, :]
            won = tl.load(i_ptr + (p * sip + q * siq)[:, None] + i_planes, mask=ok, other=-1) == (h * W + w)[:, None]
            g = tl.load(dy_ptr + (p * sdp + q * sdq)[:, None] + dy_planes, mask=ok & won, other=0.0).to(ACC)
            acc += g
    tl.store(dx_ptr + (h * sxh + w * sxw)[:, None] + (n * sxn + c * sxc)[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _avg_divisor(p, q, H, W, str_h, str_w, pad_h, pad_w, divisor,
                 KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, OVERRIDE: tl.constexpr,
                 ACC: tl.constexpr):
    """Divisor of window (p, q), as ATen and PoolProblem.divisor define it: the override if given, else the window
    clipped to the padded extent (count_include_pad) or to the input (not)."""
    h0 = p * str_h - pad_h
    w0 = q * str_w - pad_w
    h1 = tl.minimum(h0 + KH, H + pad_h)
    w1 = tl.minimum(w0 + KW, W + pad_w)
    if OVERRIDE:
        count = tl.zeros(p.shape, dtype=tl.int32) + divisor
    elif COUNT_PAD:
        count = (h1 - h0) * (w1 - w0)
    else:
        count = (tl.minimum(h1, H) - tl.maximum(h0, 0)) * (tl.minimum(w1, W) - tl.maximum(w0, 0))
    return count.to(ACC)


# avg_pool2d forward: out[n, c, p, q] = Σ_taps x[n, c, p·sh − ph + i, q·sw − pw + j] / divisor(p, q), the sum in
# fp32 (fp64 for fp64) with padding taps masked to 0. One program owns BLOCK_M output pixels × BLOCK_C planes.
# Traffic: x read kh·kw/(sh·sw) times (cache hits after the first), the output written once.
@autotune(POOL_CONFIGS, prune_configs_by=TUNING)
@triton.jit
def _avg_pool_fwd_kernel(
    x_ptr, y_ptr,
    NC, C, H, W, P, Q,
    sxn, sxc, sxh, sxw, syn, syc, syp, syq,
    str_h, str_w, pad_h, pad_w, divisor,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, OVERRIDE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, c, c_ok, p, q, m_ok = _tile(NC, C, P, Q, BLOCK_M, BLOCK_C)
    h0 = p * str_h - pad_h
    w0 = q * str_w - pad_w
    planes = (n * sxn + c * sxc)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for i in range(KH):
        h = h0 + i
        h_ok = m_ok & (h >= 0) & (h < H)
        for j in range(KW):
            w = w0 + j
            ok = (h_ok & (w >= 0) & (w < W))[:, None] & c_ok[None, :]
            acc += tl.load(x_ptr + (h * sxh + w * sxw)[:, None] + planes, mask=ok, other=0.0).to(ACC)
    div = _avg_divisor(p, q, H, W, str_h, str_w, pad_h, pad_w, divisor, KH, KW, COUNT_PAD, OVERRIDE, ACC)
    acc = acc / tl.where(m_ok, div, 1.0)[:, None]
    tl.store(y_ptr + (p * syp + q * syq)[:, None] + (n * syn + c * syc)[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


# avg_pool2d backward as a gather: dx[n, c, h, w] = Σ over taps (i, j) of dy[n, c, p, q] / divisor(p, q) where
# p·sh = h + ph − i and q·sw = w + pw − j land on an output. One program owns BLOCK_M input pixels × BLOCK_C
# planes. Traffic: dy read kh·kw/(sh·sw) times (cache hits after the first), dx written once.
@autotune(POOL_CONFIGS, prune_configs_by=TUNING)
@triton.jit
def _avg_pool_bwd_kernel(
    dy_ptr, dx_ptr,
    NC, C, H, W, P, Q,
    sdn, sdc, sdp, sdq, sxn, sxc, sxh, sxw,
    str_h, str_w, pad_h, pad_w, divisor,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, OVERRIDE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, c, c_ok, h, w, m_ok = _tile(NC, C, H, W, BLOCK_M, BLOCK_C)
    planes = (n * sdn + c * sdc)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for i in range(KH):
        th = h + pad_h - i
        p = th // str_h
        p_ok = m_ok & (th >= 0) & (th % str_h == 0) & (p < P)
        for j in range(KW):
            tw = w + pad_w - j
            q = tw // str_w
            q_ok = p_ok & (tw >= 0) & (tw % str_w == 0) & (q < Q)
            ok = q_ok[:, None] & c_ok[None, :]
            g = tl.load(dy_ptr + (p * sdp + q * sdq)[:, None] + planes, mask=ok, other=0.0).to(ACC)
            div = _avg_divisor(p, q, H, W, str_h, str_w, pad_h, pad_w, divisor, KH, KW, COUNT_PAD, OVERRIDE, ACC)
            acc += g / tl.where(q_ok, div, 1.0)[:, None]
    tl.store(dx_ptr + (h * sxh + w * sxw)[:, None] + (n * sxn + c * sxc)[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


# ---- host side ----------------------------------------------------------------------------------------------------
def _note(part: str, kernel) -> None:
    """Tell a recording caller (the bench's validation call) which kernel and tuned tile ran."""
    cfg = kernel.best_config
    note(backend=f"{LABEL}:{part}", triton={part: {"config": {**cfg.kwargs, "num_warps": cfg.num_warps,
                                                               "num_stages": cfg.num_stages}}})


def _grid(planes: int, pixels: int):
    return lambda META: (triton.cdiv(planes, META["BLOCK_C"]) * triton.cdiv(pixels, META["BLOCK_M"]),)


def input_like(x: torch.Tensor) -> tuple:
    """(shape, dtype, memory format) of x: what a backward needs to build dx without keeping x alive."""
    return tuple(x.shape), x.dtype, memory_format(x)


def _empty_like(like: tuple, device) -> torch.Tensor:
    shape, dtype, fmt = like
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


@launches
def max_pool2d_forward(x: torch.Tensor, p: PoolProblem, store_index: bool = True):
    """(values, int64 indices or None) of max_pool2d, in x's dtype and memory format."""
    N = x.shape[0]
    fmt = memory_format(x)
    y = torch.empty((N, p.C, p.P, p.Q), dtype=x.dtype, device=x.device, memory_format=fmt)
    idx = torch.empty((N, p.C, p.P, p.Q), dtype=torch.int64, device=x.device, memory_format=fmt) if store_index else y
    if N == 0:
        return y, (idx if store_index else None)
    top, _, left, _ = p.pads
    for ch in batch_chunks(N, x, idx):
        xc, yc, ic = x[ch], y[ch], idx[ch]
        nc = xc.shape[0] * p.C
        _max_pool_fwd_kernel[_grid(nc, p.P * p.Q)](
            xc, yc, ic, nc, p.C, p.H, p.W, p.P, p.Q, *xc.stride(), *yc.stride(), *ic.stride(),
            *p.stride, top, left, *p.dilation, KH=p.kernel[0], KW=p.kernel[1], STORE_INDEX=store_index,
            ACC=acc_dtype(x.dtype))
    if _provenance_on():
        _note("max_pool2d", _max_pool_fwd_kernel)
    return y, (idx if store_index else None)


@launches
def max_pool2d_backward(dy: torch.Tensor, idx: torch.Tensor, p: PoolProblem, like: tuple) -> torch.Tensor:
    """dx of max_pool2d; ``like`` = (shape, dtype, memory format) of the input."""
    dx = _empty_like(like, dy.device)
    N = dx.shape[0]
    if N == 0:
        return dx
    top, _, left, _ = p.pads
    for ch in batch_chunks(N, dy, idx, dx):
        dyc, ic, dxc = dy[ch], idx[ch], dx[ch]
        nc = dxc.shape[0] * p.C
        _max_pool_bwd_kernel[_grid(nc, p.H * p.W)](
            dyc, ic, dxc, nc, p.C, p.H, p.W, p.P, p.Q, *dyc.stride(), *ic.stride(), *dxc.stride(),
            *p.stride, top, left, *p.dilation, KH=p.kernel[0], KW=p.kernel[1], ACC=acc_dtype(dx.dtype))
    if _provenance_on():
        _note("max_pool2d_backward", _max_pool_bwd_kernel)
    return dx


def _avg_flags(p: PoolProblem) -> dict:
    return dict(KH=p.kernel[0], KW=p.kernel[1], COUNT_PAD=p.count_include_pad,
                OVERRIDE=p.divisor_override is not None)


@launches
def avg_pool2d_forward(x: torch.Tensor, p: PoolProblem) -> torch.Tensor:
    N = x.shape[0]
    y = torch.empty((N, p.C, p.P, p.Q), dtype=x.dtype, device=x.device, memory_format=memory_format(x))
    if N == 0:
        return y
    top, _, left, _ = p.pads
    for ch in batch_chunks(N, x, y):
        xc, yc = x[ch], y[ch]
        nc = xc.shape[0] * p.C
        _avg_pool_fwd_kernel[_grid(nc, p.P * p.Q)](
            xc, yc, nc, p.C, p.H, p.W, p.P, p.Q, *xc.stride(), *yc.stride(), *p.stride, top, left,
            p.divisor_override or 1, **_avg_flags(p), ACC=acc_dtype(x.dtype))
    if _provenance_on():
        _note("avg_pool2d", _avg_pool_fwd_kernel)
    return y


@launches
def avg_pool2d_backward(dy: torch.Tensor, p: PoolProblem, like: tuple) -> torch.Tensor:
    """dx of avg_pool2d; ``like`` = (shape, dtype, memory format) of the input."""
    dx = _empty_like(like, dy.device)
    N = dx.shape[0]
    if N == 0:
        return dx
    top, _, left, _ = p.pads
    for ch in batch_chunks(N, dy, dx):
        dyc, dxc = dy[ch], dx[ch]
        nc = dxc.shape[0] * p.C
        _avg_pool_bwd_kernel[_grid(nc, p.H * p.W)](
            dyc, dxc, nc, p.C, p.H, p.W, p.P, p.Q, *dyc.stride(), *dxc.stride(), *p.stride, top, left,
            p.divisor_override or 1, **_avg_flags(p), ACC=acc_dtype(dx.dtype))
    if _provenance_on():
        _note("avg_pool2d_backward", _avg_pool_bwd_kernel)
    return dx
