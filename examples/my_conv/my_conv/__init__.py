"""my_conv: conv2d as one batched GEMM over unfolded windows, written in a few lines.

convbench calls ``_conv2d`` with a 4-D input and the checked problem ``p`` (reference.ConvProblem: N, C, H, W, K, R,
S, P, Q, stride, dilation, groups and the four paddings ``p.pads``); the public ``conv2d`` with torch's exact
signature, argument checks, 3-D input and autograd come from ``kernels.Implementation``. Pools are not implemented,
so their cases are recorded as unsupported (``Implementation.unsupported``).
"""

import torch
import torch.nn.functional as F

from kernels import Implementation, register


@register
class MyConv(Implementation):
    name = "my_conv"
    summary = "example plugin: unfold + one batched GEMM per group (examples/my_conv)"

    def _conv2d(self, x, weight, bias, p):
        top, bottom, left, right = p.pads
        cols = F.unfold(F.pad(x, (left, right, top, bottom)), (p.R, p.S), dilation=p.dilation, stride=p.stride)
        G = p.groups  # cols: N × (C·R·S) × (P·Q), one block of C/G channels per group
        cols = cols.view(p.N, G, (p.C // G) * p.R * p.S, p.P * p.Q)
        y = torch.einsum("gkc,ngcl->ngkl", weight.reshape(G, p.K // G, -1), cols).reshape(p.N, p.K, p.P, p.Q)
        return y if bias is None else y + bias.view(1, -1, 1, 1)
