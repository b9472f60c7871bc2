"""naive: direct convolution and pooling written from the formula, one tensor op per kernel tap.

No unfold, no library convolution or pooling: the padded input is sliced once per tap (a strided view, no copy)
and the taps are accumulated. Gradients come from autograd through those slices and products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from ._common import accumulator_dtype
from .base import Implementation


def tap(xp: torch.Tensor, h0: int, w0: int, P: int, Q: int, sh: int, sw: int) -> torch.Tensor:
    """The P×Q strided view xp[..., h0 + p·sh, w0 + q·sw] of a padded input: one kernel tap for every output."""
    return xp[..., h0:h0 + (P - 1) * sh + 1:sh, w0:w0 + (Q - 1) * sw + 1:sw]


@register
class Naive(Implementation):
    name = "naive"
    summary = "direct convolution/pooling from the formula: one strided view and tensor op per kernel tap"

    def backend(self, op: str, device, problem=None) -> str:
        return "torch-ops"

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        # out[n, k, p, q] = bias[k] + Σ_{r,s} Σ_c xpad[n, c, p·sh + r·dh, q·sw + s·dw] · w[k, c, r, s]
        # For each of the R·S taps: a strided P×Q view of the padded input and one (N·P·Q × C/G) · (C/G × K/G)
        # product per group, accumulated in fp32 (fp64 for fp64). Traffic: the input is read R·S times and the
        # accumulator read and written R·S times — the cost a direct convolution pays for not reusing taps.
        N, G = x.shape[0], p.groups
        top, bottom, left, right = p.pads
        xp = F.pad(x, (left, right, top, bottom)).unflatten(1, (G, p.C // G))  # (N, G, C/G, Hp, Wp)
        w = weight.reshape(G, p.K // G, p.C // G, p.R, p.S)
        acc = torch.zeros((N, G, p.K // G, p.P, p.Q), dtype=accumulator_dtype(x.dtype), device=x.device)
        for r in range(p.R):
            for s in range(p.S):
                view = tap(xp, r * p.dilation[0], s * p.dilation[1], p.P, p.Q, *p.stride)
                acc = acc + torch.einsum("ngcpq,gkc->ngkpq", view, w[..., r, s])
        out = acc.reshape(N, p.K, p.P, p.Q)
        if bias is not None:
            out = out + bias.view(1, p.K, 1, 1)
        return out.to(x.dtype)

    def _max_pool2d(self, x, p: PoolProblem):
        # Running maximum over the kh·kw taps of the −inf padded input, with the flat input index of the winner
        # kept alongside. A tap replaces the running value when it is greater or NaN — the rule ATen applies — so
        # ties keep the first tap in row-major order and NaN propagates. The values are then gathered by index,
        # so the gradient flows to exactly one input per window, as in torch. Traffic: input read kh·kw times.
        top, bottom, left, right = p.pads
        (kh, kw), (sh, sw), (dh, dw) = p.kernel, p.stride, p.dilation
        rows = torch.arange(p.P, device=x.device) * sh - top  # input row of tap 0 of each output row
        cols = torch.arange(p.Q, device=x.device) * sw - left
        first_row, first_col = p.first_taps(x.device)
        best = torch.full((x.shape[0], p.C, p.P, p.Q), float("-inf"), dtype=x.dtype, device=x.device)
        # ATen starts from the window's first in-range tap; that stays the index when nothing beats −inf
        index = p.first_tap_index(x.device).expand_as(best)
        with torch.no_grad():
            xp = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            for i in range(kh):
                for j in range(kw):
                    v = tap(xp, i * dh, j * dw, p.P, p.Q, sh, sw)
                    take = (v > best) | torch.isnan(v)
                    best = torch.where(take, v, best)
                    index = torch.where(take, (rows + i * dh)[:, None] * p.W + (cols + j * dw)[None, :], index)
        # a dilated window can miss the input entirely: value −inf, no gradient
        empty = ((first_row >= p.H)[:, None] | (first_col >= p.W)[None, :])
        gathered = x.flatten(2).gather(2, torch.where(empty, 0, index).flatten(2)).view_as(best)
        values = torch.where(empty, best, gathered) if bool(empty.any()) else gathered
        return values, index

    def _avg_pool2d(self, x, p: PoolProblem):
        # Σ over the kh·kw taps of the zero-padded input (fp32 partial sums for fp16/bf16), divided by each
        # window's divisor (count_include_pad / divisor_override rules). Traffic: input read kh·kw times.
        top, bottom, left, right = p.pads
        xp = F.pad(x, (left, right, top, bottom))
        acc = torch.zeros((x.shape[0], p.C, p.P, p.Q), dtype=accumulator_dtype(x.dtype), device=x.device)
        for i in range(p.kernel[0]):
            for j in range(p.kernel[1]):
                acc = acc + tap(xp, i, j, p.P, p.Q, *p.stride)
        return (acc / p.divisor(x.device).to(acc.dtype)).to(x.dtype)
