"""The covering set of valid calls every implementation is checked on (and the oracle against torch).

One row per argument form ``torch.nn.functional`` accepts — chosen, not multiplied out: int / 1-tuple / 2-tuple
arguments, 'same' (odd, even → asymmetric, dilated, kernel wider than the input) and 'valid', dilation, groups
(grouped, depthwise, depthwise with a channel multiplier), no bias, unbatched input, an empty batch, channels_last
and non-contiguous input, ceil_mode windows that are dropped or run past the padding, return_indices,
count_include_pad both ways, divisor_override (positive and negative), and the SimpleCNN layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class Case:
    id: str
    input: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    weight: tuple[int, ...] | None = None  # conv only
    bias: bool = True  # conv only
    layout: str = "nchw"  # nchw | channels_last | transposed (non-contiguous)

    def param(self, *marks):
        return pytest.param(self, id=self.id, marks=list(marks))


CONV_CASES = [
    Case("basic", (2, 3, 8, 8), weight=(4, 3, 3, 3)),
    Case("no-bias", (2, 3, 8, 8), weight=(4, 3, 3, 3), bias=False),
    Case("1x1", (2, 8, 5, 5), weight=(6, 8, 1, 1)),
    Case("stride2-pad1", (2, 3, 9, 9), dict(stride=2, padding=1), weight=(4, 3, 3, 3)),
    Case("stride-pad-tuples", (1, 3, 9, 11), dict(stride=(2, 3), padding=(1, 2)), weight=(4, 3, 3, 3)),
    Case("one-element-lists", (1, 3, 9, 9), dict(stride=[2], padding=(1,), dilation=[1]), weight=(4, 3, 3, 3)),
    Case("dilation2", (2, 3, 11, 11), dict(dilation=2, padding=2), weight=(4, 3, 3, 3)),
    Case("dilation-stride-asym", (1, 3, 12, 10), dict(dilation=(2, 3), stride=(1, 2), padding=(0, 1)),
         weight=(4, 3, 3, 2)),
    Case("same-odd", (2, 3, 8, 8), dict(padding="same"), weight=(4, 3, 5, 5)),
    Case("same-even-asymmetric", (2, 3, 7, 8), dict(padding="same"), weight=(4, 3, 4, 2)),
    Case("same-dilated-even", (1, 3, 9, 9), dict(padding="same", dilation=(3, 2)), weight=(4, 3, 2, 4)),
    Case("same-kernel-wider-than-input", (1, 2, 4, 4), dict(padding="same"), weight=(3, 2, 7, 7)),
    Case("valid", (2, 3, 8, 9), dict(padding="valid"), weight=(4, 3, 3, 2)),
    Case("valid-strided", (2, 3, 9, 9), dict(padding="valid", stride=2), weight=(4, 3, 3, 3)),
    Case("rect-kernel", (2, 3, 9, 7), dict(padding=(0, 2)), weight=(4, 3, 1, 5)),
    Case("kernel-equals-input", (2, 3, 5, 5), weight=(4, 3, 5, 5)),
    Case("padding-wider-than-kernel", (1, 2, 4, 4), dict(padding=3), weight=(3, 2, 3, 3)),
    Case("groups2", (2, 4, 7, 7), dict(groups=2, padding=1), weight=(6, 2, 3, 3)),
    Case("groups4-strided", (2, 8, 8, 8), dict(groups=4, stride=2), weight=(8, 2, 3, 3)),
    Case("depthwise", (2, 6, 8, 8), dict(groups=6, padding=1), weight=(6, 1, 3, 3)),
    Case("depthwise-multiplier-dilated", (2, 4, 8, 8), dict(groups=4, padding=1, dilation=2), weight=(8, 1, 3, 3),
         bias=False),
    Case("unbatched", (3, 8, 8), dict(padding=1), weight=(4, 3, 3, 3)),
    Case("unbatched-grouped-same", (4, 6, 6), dict(groups=2, padding="same"), weight=(4, 2, 3, 3)),
    Case("empty-batch", (0, 3, 8, 8), weight=(4, 3, 3, 3)),
    Case("channels-last", (2, 4, 7, 7), dict(stride=2, padding=1), weight=(5, 4, 3, 3), layout="channels_last"),
    Case("non-contiguous", (2, 3, 8, 6), dict(padding=1), weight=(4, 3, 3, 3), layout="transposed"),
    Case("simplecnn-conv1", (4, 1, 28, 28), dict(padding=2), weight=(16, 1, 5, 5)),
    Case("simplecnn-conv2", (2, 16, 14, 14), dict(padding=2), weight=(32, 16, 5, 5)),
]

MAX_POOL_CASES = [
    Case("k2", (2, 3, 8, 8), dict(kernel_size=2)),
    Case("k3-s2-p1", (2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    Case("one-element-tuples", (2, 3, 7, 7), dict(kernel_size=(3,), stride=(1,), padding=(1,))),
    Case("stride-empty-means-kernel", (1, 2, 8, 8), dict(kernel_size=2, stride=())),
    Case("rect", (2, 3, 9, 10), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    Case("dilation", (2, 3, 11, 11), dict(kernel_size=3, dilation=2, padding=1)),
    Case("dilation-rect", (1, 2, 12, 9), dict(kernel_size=(2, 3), dilation=(3, 1), stride=(2, 1))),
    Case("ceil", (2, 3, 7, 7), dict(kernel_size=2, ceil_mode=True)),
    Case("ceil-window-dropped", (1, 2, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    Case("ceil-dilated-strided", (1, 2, 10, 9), dict(kernel_size=3, stride=2, dilation=2, padding=1, ceil_mode=True)),
    Case("global", (2, 3, 5, 5), dict(kernel_size=5)),
    Case("unbatched", (3, 8, 8), dict(kernel_size=2, padding=1)),
    Case("empty-batch", (0, 3, 8, 8), dict(kernel_size=2)),
    Case("channels-last", (2, 4, 8, 8), dict(kernel_size=3, stride=2, padding=1), layout="channels_last"),
    Case("non-contiguous", (2, 3, 9, 7), dict(kernel_size=2), layout="transposed"),
    Case("simplecnn-pool", (2, 16, 28, 28), dict(kernel_size=2, stride=2)),
]

AVG_POOL_CASES = [
    Case("k2", (2, 3, 8, 8), dict(kernel_size=2)),
    Case("k3-s2-p1", (2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    Case("exclude-pad", (2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    Case("one-element-tuples", (2, 3, 7, 7), dict(kernel_size=(3,), stride=(1,), padding=(1,))),
    Case("stride-none", (1, 2, 8, 8), dict(kernel_size=2, stride=None)),
    Case("rect", (2, 3, 9, 10), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    Case("ceil-include-pad", (2, 3, 7, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    Case("ceil-exclude-pad", (2, 3, 8, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                count_include_pad=False)),
    Case("ceil-window-dropped", (1, 2, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    Case("divisor-override", (2, 3, 8, 8), dict(kernel_size=3, padding=1, divisor_override=5)),
    Case("divisor-negative-ceil", (2, 3, 7, 7), dict(kernel_size=2, ceil_mode=True, divisor_override=-3)),
    Case("global", (2, 3, 5, 5), dict(kernel_size=5)),
    Case("unbatched", (3, 8, 8), dict(kernel_size=2, padding=1)),
    Case("empty-batch", (0, 3, 8, 8), dict(kernel_size=2)),
    Case("channels-last", (2, 4, 8, 8), dict(kernel_size=3, stride=2, padding=1), layout="channels_last"),
    Case("non-contiguous", (2, 3, 9, 7), dict(kernel_size=2), layout="transposed"),
]

CASES = {"conv2d": CONV_CASES, "max_pool2d": MAX_POOL_CASES, "avg_pool2d": AVG_POOL_CASES}


def make_tensors(op: str, case: Case, seed: int = 0) -> dict:
    """float64 CPU tensors for a case: x ~ N(0,1), w ~ N(0, 1/fan_in), bias ~ N(0, 0.01)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.input, generator=gen, dtype=torch.float64)
    if op != "conv2d":
        return {"input": x}
    fan_in = case.weight[1] * case.weight[2] * case.weight[3]
    w = torch.randn(case.weight, generator=gen, dtype=torch.float64) * fan_in ** -0.5
    b = torch.randn(case.weight[0], generator=gen, dtype=torch.float64) * 0.1 if case.bias else None
    return {"input": x, "weight": w, "bias": b}
