"""im2col: lower the convolution to one GEMM per group (and pooling to a reduction over unfolded windows).

Forward:  cols[n·P·Q + p·Q + q, (r·S + s)·C + c] = xpad[n, p·sh + r·dh, q·sw + s·dw, c]   (NHWC, one strided copy)
          out[NPQ, K] = cols[NPQ, RSC] @ wmat[RSC, K] (+ bias)   → already NHWC: returned as channels_last, no copy
Backward: grad_w = colsᵀ @ grad_out,  grad_cols = grad_out @ wmatᵀ,  grad_x = col2im(grad_cols) (R·S strided adds)

Rows are output pixels and columns (r, s, c) with c fastest, so every cols row is R·S contiguous runs of C
channels of an NHWC input and the GEMM output is NHWC: no transposes around the GEMM. Memory traffic: the cols
matrix (N·P·Q × R·S·C/G elements) is written once and read once by the GEMM; backward recomputes it rather than
keeping it alive between forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from .base import Implementation


def _padded_nhwc(x: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(N, Hp, Wp, C) contiguous padded input; free when x is channels_last and unpadded."""
    top, bottom, left, right = p.pads
    nhwc = x.permute(0, 2, 3, 1)
    if top or bottom or left or right:
        return F.pad(nhwc, (0, 0, left, right, top, bottom)).contiguous()
    return nhwc.contiguous()


def _cols(xp: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, N·P·Q, R·S·C/G) patch matrix of the padded NHWC input (the only copy im2col makes)."""
    N, G = xp.shape[0], p.groups
    sN, sH, sW, sC = xp.stride()
    (sh, sw), (dh, dw) = p.stride, p.dilation
    view = xp.as_strided((N, p.P, p.Q, p.R, p.S, p.C), (sN, sh * sH, sw * sW, dh * sH, dw * sW, sC))
    if G == 1:
        return view.reshape(1, N * p.P * p.Q, p.R * p.S * p.C)
    view = view.unflatten(5, (G, p.C // G)).permute(5, 0, 1, 2, 3, 4, 6)
    return view.reshape(G, N * p.P * p.Q, p.R * p.S * (p.C // G))


def _wmat(weight: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, R·S·C/G, K/G) weight matrix matching the cols column order (r, s, c)."""
    G = p.groups
    w = weight.reshape(G, p.K // G, p.C // G, p.R, p.S).permute(0, 3, 4, 2, 1)
    return w.reshape(G, p.R * p.S * (p.C // G), p.K // G)


def _grad_out_mat(grad: torch.Tensor, p: ConvProblem) -> torch.Tensor:
    """(G, N·P·Q, K/G) view of an N×K×P×Q gradient (a copy only when it is not NHWC already)."""
    go = grad.permute(0, 2, 3, 1).reshape(-1, p.groups, p.K // p.groups)
    return go.permute(1, 0, 2)


class _Im2colConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, p: ConvProblem):
        ctx.p = p
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        N, G = x.shape[0], p.groups
        cols, wmat = _cols(_padded_nhwc(x, p), p), _wmat(weight, p)
        if G == 1:
            out = torch.addmm(bias, cols[0], wmat[0]) if bias is not None else torch.mm(cols[0], wmat[0])
            nhwc = out.view(N, p.P, p.Q, p.K)
        else:
            out = torch.bmm(cols, wmat)  # (G, NPQ, K/G)
            nhwc = out.view(G, N, p.P, p.Q, p.K // G).permute(1, 2, 3, 0, 4).reshape(N, p.P, p.Q, p.K)
            if bias is not None:
                nhwc = nhwc + bias
        return nhwc.permute(0, 3, 1, 2)  # N×K×P×Q in channels_last memory

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p: ConvProblem = ctx.p
        N, G, Cg = x.shape[0], p.groups, p.C // p.groups
        go = _grad_out_mat(grad, p)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            cols = _cols(_padded_nhwc(x, p), p)
            gw = torch.bmm(cols.transpose(1, 2), go)  # (G, RSCg, Kg)
            grad_w = gw.view(G, p.R, p.S, Cg, p.K // G).permute(0, 4, 3, 1, 2).reshape(p.K, Cg, p.R, p.S)
        if ctx.needs_input_grad[0]:
            gcols = torch.bmm(go, _wmat(weight, p).transpose(1, 2))  # (G, NPQ, RSCg)
            gcols = gcols.view(G, N, p.P, p.Q, p.R, p.S, Cg).permute(1, 2, 3, 4, 5, 0, 6)
            gcols = gcols.reshape(N, p.P, p.Q, p.R, p.S, p.C)
            top, bottom, left, right = p.pads
            gxp = torch.zeros((N, p.H + top + bottom, p.W + left + right, p.C), dtype=grad.dtype, device=grad.device)
            (sh, sw), (dh, dw) = p.stride, p.dilation
            for r in range(p.R):  # col2im: scatter-add each tap back to the input pixels it read
                for s in range(p.S):
                    gxp[:, r * dh:r * dh + (p.P - 1) * sh + 1:sh, s * dw:s * dw + (p.Q - 1) * sw + 1:sw] += gcols[:, :, :, r, s]
            grad_x = gxp[:, top:top + p.H, left:left + p.W].permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = go.sum(dim=1).reshape(p.K)
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
