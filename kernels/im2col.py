"""im2col: lower the convolution to one GEMM per group (and pooling to a reduction over unfolded windows).

Two lowerings, chosen by the input's memory layout so that neither the input nor the output is transposed:

NCHW (Caffe's layout): per image, cols[(c·R + r)·S + s, p·Q + q] = xpad[c, p·sh + r·dh, q·sw + s·dw]
    out[n] (K × P·Q) = W (K × C·R·S) @ cols[n] (C·R·S × P·Q) + bias        → NCHW output, no transpose
    backward: grad_W = Σ_n grad_out[n] @ cols[n]ᵀ,  grad_x = col2im(Wᵀ @ grad_out[n])   (F.unfold / F.fold)
NHWC (channels_last): cols[n·P·Q + p·Q + q, (r·S + s)·C + c] = xpad[n, p·sh + r·dh, q·sw + s·dw, c]
    out (N·P·Q × K) = cols (N·P·Q × R·S·C) @ Wmat (R·S·C × K) + bias        → NHWC output, no transpose
    backward: grad_W = colsᵀ @ grad_out,  grad_cols = grad_out @ Wmatᵀ, col2im = R·S strided adds
1×1 / stride 1 / no padding needs no cols at all: the input is already the GEMM operand.

Cache blocking: the batch is processed in chunks whose cols matrix stays within ``CHUNK_BYTES`` (≈ the L2 cache),
so the GEMM reads cols while it is still cached instead of streaming a matrix R·S times the input's size through
DRAM twice. Memory traffic per chunk: the input once, cols written and read once (from cache), W once, the
output once. Backward recomputes cols rather than keeping them alive between forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from .base import Implementation

#: largest cols block built at once (bytes); see the module docstring
CHUNK_BYTES = 1 << 20


def _chunks(N: int, bytes_per_image: int):
    step = max(1, CHUNK_BYTES // max(1, bytes_per_image))
    return [(i, min(N, i + step)) for i in range(0, N, step)]


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _pointwise(p: ConvProblem) -> bool:
    return (p.R, p.S, p.stride, p.pads) == (1, 1, (1, 1), (0, 0, 0, 0))


# ---- NCHW: F.unfold (ATen's im2col) + batched GEMM --------------------------------------------------------------
def _symmetric(x: torch.Tensor, p: ConvProblem) -> tuple[torch.Tensor, tuple[int, int]]:
    """Input and the symmetric padding F.unfold takes; an asymmetric 'same' pads the extra row/column first."""
    top, bottom, left, right = p.pads
    if top != bottom or left != right:
        x = F.pad(x, (0, right - left, 0, bottom - top))
    return x, (top, left)


def _unfold(x: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(n, G, C/G·R·S, P·Q) columns of an NCHW chunk."""
    xs, pad = _symmetric(x, p)
    if _pointwise(p):
        cols = xs.reshape(x.shape[0], p.C, p.H * p.W)
    else:
        cols = F.unfold(xs, (p.R, p.S), dilation=p.dilation, padding=pad, stride=p.stride)
    return cols.view(x.shape[0], p.groups, -1, p.P * p.Q)


def _nchw_forward(x, weight, bias, p: ConvProblem) -> torch.Tensor:
    N, G = x.shape[0], p.groups
    w = weight.reshape(G, p.K // G, -1)  # (G, K/G, C/G·R·S)
    out = torch.empty((N, G, p.K // G, p.P * p.Q), dtype=x.dtype, device=x.device)
    b = bias.view(G, p.K // G, 1) if bias is not None else None
    for lo, hi in _chunks(N, (p.C * p.R * p.S) * p.P * p.Q * x.element_size()):
        cols = _unfold(x[lo:hi], p)
        if b is not None:
            torch.add(torch.matmul(w, cols), b, out=out[lo:hi])
        else:
            torch.matmul(w, cols, out=out[lo:hi])
    return out.view(N, p.K, p.P, p.Q)


def _nchw_backward(x, weight, go, p: ConvProblem, need_x: bool, need_w: bool):
    N, G = x.shape[0], p.groups
    w = weight.reshape(G, p.K // G, -1)
    go = go.reshape(N, G, p.K // G, p.P * p.Q)
    grad_x = grad_w = None
    if need_w:
        gw = torch.zeros_like(w)
        for lo, hi in _chunks(N, (p.C * p.R * p.S) * p.P * p.Q * x.element_size()):
            gw += torch.matmul(go[lo:hi], _unfold(x[lo:hi], p).transpose(-1, -2)).sum(0)
        grad_w = gw.view_as(weight)
    if need_x:
        gcols = torch.matmul(w.transpose(1, 2), go).view(N, p.C * p.R * p.S, p.P * p.Q)  # (N, C·R·S, P·Q)
        top, bottom, left, right = p.pads
        if _pointwise(p):
            grad_x = gcols.view(N, p.C, p.H, p.W)
        else:
            size = (p.H + bottom - top, p.W + right - left)  # the (possibly extended) input that was unfolded
            grad_x = F.fold(gcols, size, (p.R, p.S), dilation=p.dilation, padding=(top, left), stride=p.stride)
            grad_x = grad_x[:, :, :p.H, :p.W]
    return grad_x, grad_w


# ---- NHWC: strided view + one GEMM --------------------------------------------------------------------------------
def _padded_nhwc(x: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(n, Hp, Wp, C) contiguous padded input; free when x is channels_last and unpadded."""
    top, bottom, left, right = p.pads
    nhwc = x.permute(0, 2, 3, 1)
    if top or bottom or left or right:
        return F.pad(nhwc, (0, 0, left, right, top, bottom))
    return nhwc.contiguous()


def _nhwc_cols(x: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, n·P·Q, R·S·C/G) patch matrix of an NHWC chunk (a view when no copy is needed)."""
    xp, N, G = _padded_nhwc(x, p), x.shape[0], p.groups
    if _pointwise(p) and G == 1:
        return xp.reshape(1, N * p.P * p.Q, p.C)
    sN, sH, sW, sC = xp.stride()
    (sh, sw), (dh, dw) = p.stride, p.dilation
    view = xp.as_strided((N, p.P, p.Q, p.R, p.S, p.C), (sN, sh * sH, sw * sW, dh * sH, dw * sW, sC))
    if G == 1:
        return view.reshape(1, N * p.P * p.Q, p.R * p.S * p.C)
    view = view.unflatten(5, (G, p.C // G)).permute(5, 0, 1, 2, 3, 4, 6)
    return view.reshape(G, N * p.P * p.Q, p.R * p.S * (p.C // G))


def _wmat(weight: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, R·S·C/G, K/G) weight matrix matching the NHWC cols column order (r, s, c)."""
    G = p.groups
    w = weight.reshape(G, p.K // G, p.C // G, p.R, p.S).permute(0, 3, 4, 2, 1)
    return w.reshape(G, p.R * p.S * (p.C // G), p.K // G)


def _nhwc_forward(x, weight, bias, p: ConvProblem) -> torch.Tensor:
    N, G, PQ = x.shape[0], p.groups, p.P * p.Q
    wmat = _wmat(weight, p)
    out = torch.empty((N, p.P, p.Q, p.K), dtype=x.dtype, device=x.device)
    flat = out.view(N * PQ, G, p.K // G)
    for lo, hi in _chunks(N, p.R * p.S * p.C * PQ * x.element_size()):
        cols = _nhwc_cols(x[lo:hi], p)
        rows = flat[lo * PQ:hi * PQ]
        if G == 1 and bias is not None:
            torch.addmm(bias, cols[0], wmat[0], out=rows.view(-1, p.K))
        elif G == 1:
            torch.mm(cols[0], wmat[0], out=rows.view(-1, p.K))
        else:
            rows.copy_(torch.bmm(cols, wmat).transpose(0, 1))
            if bias is not None:
                rows += bias.view(G, p.K // G)
    return out.permute(0, 3, 1, 2)  # N×K×P×Q in channels_last memory


def _nhwc_backward(x, weight, grad, p: ConvProblem, need_x: bool, need_w: bool):
    N, G, Cg = x.shape[0], p.groups, p.C // p.groups
    go = grad.permute(0, 2, 3, 1).reshape(-1, G, p.K // G).transpose(0, 1)  # (G, N·P·Q, K/G)
    grad_x = grad_w = None
    if need_w:
        gw = torch.bmm(_nhwc_cols(x, p).transpose(1, 2), go)  # (G, R·S·C/G, K/G)
        grad_w = gw.view(G, p.R, p.S, Cg, p.K // G).permute(0, 4, 3, 1, 2).reshape(p.K, Cg, p.R, p.S)
    if need_x:
        gcols = torch.bmm(go, _wmat(weight, p).transpose(1, 2))  # (G, N·P·Q, R·S·C/G)
        gcols = gcols.view(G, N, p.P, p.Q, p.R, p.S, Cg).permute(1, 2, 3, 4, 5, 0, 6)
        gcols = gcols.reshape(N, p.P, p.Q, p.R, p.S, p.C)
        top, bottom, left, right = p.pads
        gxp = torch.zeros((N, p.H + top + bottom, p.W + left + right, p.C), dtype=grad.dtype, device=grad.device)
        (sh, sw), (dh, dw) = p.stride, p.dilation
        for r in range(p.R):  # col2im: scatter-add each tap back to the input pixels it read
            for s in range(p.S):
                rows = slice(r * dh, r * dh + (p.P - 1) * sh + 1, sh)
                gxp[:, rows, s * dw:s * dw + (p.Q - 1) * sw + 1:sw] += gcols[:, :, :, r, s]
        grad_x = gxp[:, top:top + p.H, left:left + p.W].permute(0, 3, 1, 2)
    return grad_x, grad_w


class _Im2colConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, p: ConvProblem):
        ctx.p, ctx.has_bias, ctx.nhwc = p, bias is not None, _is_nhwc(x)
        ctx.save_for_backward(x, weight)
        if ctx.nhwc:
            return _nhwc_forward(x, weight, bias, p)
        return _nchw_forward(x.contiguous(), weight.contiguous(), bias, p)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p: ConvProblem = ctx.p
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.nhwc:
            grad_x, grad_w = _nhwc_backward(x, weight, grad, p, need_x, need_w)
        else:
            grad_x, grad_w = _nchw_backward(x.contiguous(), weight.contiguous(), grad.contiguous(), p, need_x, need_w)
        grad_b = grad.sum(dim=(0, 2, 3)) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b, None


def _windows(x: torch.Tensor, p: PoolProblem, fill: float) -> torch.Tensor:
    """(N, C, kh·kw, P, Q) pooling windows via F.unfold of the ``fill``-padded input (backward: F.fold)."""
    top, bottom, left, right = p.pads
    xp = F.pad(x, (left, right, top, bottom), value=fill) if (top or bottom or left or right) else x
    cols = F.unfold(xp, p.kernel, dilation=p.dilation, stride=p.stride)  # (N, C·kh·kw, P·Q)
    return cols.view(x.shape[0], p.C, p.kernel[0] * p.kernel[1], p.P, p.Q)


@register
class Im2col(Implementation):
    name = "im2col"
    summary = "unfold to a patch matrix, then one GEMM per group; col2im for the input gradient"

    def backend(self, op: str, device, problem=None) -> str:
        gemm = "cublas" if str(device).startswith("cuda") else ("mkl" if torch.backends.mkl.is_available() else "blas")
        return f"{gemm}-gemm" if op.startswith("conv2d") else "torch-ops"

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        return _Im2colConv.apply(x, weight, bias, p)

    def _max_pool2d(self, x, p: PoolProblem):
        # max over the unfolded window axis; torch.max keeps the first maximum, its gradient goes to that element
        values, t = _windows(x, p, float("-inf")).max(dim=2)
        kw = p.kernel[1]
        rows = torch.arange(p.P, device=x.device)[:, None] * p.stride[0] - p.pads[0] + (t // kw) * p.dilation[0]
        cols = torch.arange(p.Q, device=x.device)[None, :] * p.stride[1] - p.pads[2] + (t % kw) * p.dilation[1]
        first_row, first_col = p.first_taps(x.device)
        start = first_row[:, None] * p.W + first_col[None, :]
        # nothing beats −inf: report the window's first in-range tap, as ATen does
        return values, torch.where(values == float("-inf"), start, rows * p.W + cols)

    def _avg_pool2d(self, x, p: PoolProblem):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        sums = _windows(x, p, 0.0).sum(dim=2, dtype=acc)
        return (sums / p.divisor(x.device).to(acc)).to(x.dtype)
