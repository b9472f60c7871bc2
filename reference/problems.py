"""Problems: the math of each benchmarked operation — shapes, output size, FLOPs, bytes moved, inputs.

A problem is a frozen dataclass that knows nothing about how it is computed. Its fields use the usual conv letters:
N batch, C input channels, H×W input size, K output channels, R×S kernel, P×Q output size.

Value rules (positive strides, a kernel that fits the padded input, …) live in ``__post_init__`` so that a problem
built from a suite and a problem built from a call to ``conv2d(...)`` are checked by the same code; every error is a
``ValueError`` that names the argument of the ``torch.nn.functional`` call it comes from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

Pair = tuple[int, int]

#: storage dtype of each benchmark dtype name; ``tf32`` is float32 storage with TF32 tensor-core math allowed.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "tf32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LAYOUTS = ("nchw", "channels_last", "strided")


def dtype_name(dtype: torch.dtype) -> str:
    """The benchmark name of a torch floating dtype (float32 → 'float32')."""
    for name, dt in DTYPES.items():
        if dt == dtype and name != "tf32":
            return name
    raise TypeError(f"dtype must be one of {', '.join(str(d) for d in FLOATING)}, got {dtype}")


def layout_of(t: torch.Tensor) -> str:
    """'nchw' for a contiguous tensor, 'channels_last' for NHWC memory, else 'strided'."""
    if t.is_contiguous():
        return "nchw"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def pooled_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a pooling window sweep, as ATen's pooling_output_shape computes it.

    floor((size + 2·pad − dilation·(kernel−1) − 1) / stride) + 1, rounded up instead in ceil_mode, where the last
    window must still start inside the input or its left padding.
    """
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # floor division, as ATen's div_rtn
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _fail(op: str, arg: str, message: str) -> ValueError:
    return ValueError(f"{op}: '{arg}' {message}")


@dataclass(frozen=True)
class ConvProblem:
    """One conv2d call: input N×C×H×W, weight K×(C/groups)×R×S, output N×K×P×Q."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: Pair = (1, 1)
    padding: Pair | str = (0, 0)  # (pad_h, pad_w), or 'same' / 'valid' as F.conv2d takes them
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True
    dtype: str = "float32"
    layout: str = "nchw"

    op = "conv2d"

    def __post_init__(self) -> None:
        op = self.op
        if self.N < 0 or self.C < 1 or self.H < 0 or self.W < 0:
            raise _fail(op, "input", f"must have N >= 0, C >= 1 channels and H, W >= 0, got N={self.N}, C={self.C}, "
                                     f"H={self.H}, W={self.W}")
        if self.N and not (self.H and self.W):
            raise _fail(op, "input", f"has an empty spatial size {self.H}x{self.W}; only an empty batch is allowed")
        if self.K < 1 or self.R < 1 or self.S < 1:
            raise _fail(op, "weight", f"must have at least one output channel and a non-empty kernel, got K={self.K}, "
                                      f"R={self.R}, S={self.S}")
        if min(self.stride) < 1:
            raise _fail(op, "stride", f"must be positive, got {self.stride}")
        if min(self.dilation) < 1:
            raise _fail(op, "dilation", f"must be positive, got {self.dilation}")
        if isinstance(self.padding, str):
            if self.padding not in ("same", "valid"):
                raise _fail(op, "padding", f"must be 'same', 'valid', an int or a pair of ints, got {self.padding!r}")
            if self.padding == "same" and self.stride != (1, 1):
                raise _fail(op, "padding", f"='same' is not supported for strided convolutions (stride={self.stride})")
        elif min(self.padding) < 0:
            raise _fail(op, "padding", f"must be non-negative, got {self.padding}")
        if self.groups < 1:
            raise _fail(op, "groups", f"must be positive, got {self.groups}")
        if self.C % self.groups or self.K % self.groups:
            raise _fail(op, "groups", f"={self.groups} must divide both the input channels C={self.C} and the output "
                                      f"channels K={self.K}")
        if self.dtype not in DTYPES:
            raise _fail(op, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise _fail(op, "layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        top, bottom, left, right = self.pads
        kh, kw = self.effective_kernel
        if self.H + top + bottom < kh or self.W + left + right < kw:
            raise _fail(op, "weight", f"kernel {self.R}x{self.S} (dilated {kh}x{kw}) is larger than the padded input "
                                      f"{self.H + top + bottom}x{self.W + left + right}")

    # ---- geometry -------------------------------------------------------------------------------------------------
    @property
    def effective_kernel(self) -> Pair:
        """Dilated kernel extent D·(K−1)+1 per spatial dim."""
        return self.dilation[0] * (self.R - 1) + 1, self.dilation[1] * (self.S - 1) + 1

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right). 'same' splits D·(K−1) with the odd element at the bottom/right, as ATen does."""
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            th, tw = self.dilation[0] * (self.R - 1), self.dilation[1] * (self.S - 1)
            return th // 2, th - th // 2, tw // 2, tw - tw // 2
        ph, pw = self.padding
        return ph, ph, pw, pw

    @property
    def P(self) -> int:
        top, bottom, _, _ = self.pads
        return (self.H + top + bottom - self.effective_kernel[0]) // self.stride[0] + 1

    @property
    def Q(self) -> int:
        _, _, left, right = self.pads
        return (self.W + left + right - self.effective_kernel[1]) // self.stride[1] + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.N, self.C, self.H, self.W

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.K, self.C // self.groups, self.R, self.S

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.N, self.K, self.P, self.Q

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    def kwargs(self) -> dict:
        """Keyword arguments of the equivalent ``F.conv2d`` call."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    # ---- cost model -----------------------------------------------------------------------------------------------
    @property
    def macs(self) -> int:
        """Multiply-accumulates of the forward pass: N·K·P·Q · (C/groups)·R·S."""
        return self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S

    def flops(self) -> int:
        """Forward FLOPs: 2 per MAC, plus one add per output element for the bias."""
        return 2 * self.macs + (self.N * self.K * self.P * self.Q if self.bias else 0)

    def bytes_moved(self) -> int:
        """Compulsory forward traffic: read input and weight (and bias) once, write the output once."""
        elems = self.N * self.C * self.H * self.W + math.prod(self.weight_shape) + self.N * self.K * self.P * self.Q
        return (elems + (self.K if self.bias else 0)) * self.itemsize

    def backward_flops(self) -> int:
        """dgrad (2·MACs) + wgrad (2·MACs) + bias grad (one add per output element)."""
        return 4 * self.macs + (self.N * self.K * self.P * self.Q if self.bias else 0)

    def backward_bytes(self) -> int:
        """Compulsory backward traffic: read grad_out, input and weight; write grad_in, grad_weight (and grad_bias)."""
        elems = (self.N * self.K * self.P * self.Q + 2 * self.N * self.C * self.H * self.W
                 + 2 * math.prod(self.weight_shape))
        return (elems + (self.K if self.bias else 0)) * self.itemsize

    # ---- data -----------------------------------------------------------------------------------------------------
    def make_inputs(self, device="cpu", seed: int = 0, requires_grad: bool = False) -> dict[str, torch.Tensor | None]:
        """Deterministic inputs, identical on every device: x ~ N(0,1), w ~ N(0, 1/fan_in), b ~ N(0, 0.01).

        The weight scale keeps outputs O(1), which the tolerance table assumes.
        """
        fan_in = (self.C // self.groups) * self.R * self.S
        tensors = _normal(seed, device, DTYPES[self.dtype], requires_grad,
                          input=(self.input_shape, 1.0), weight=(self.weight_shape, fan_in ** -0.5),
                          bias=((self.K,), 0.1) if self.bias else None)
        if self.layout == "channels_last":  # as a model converted with .to(memory_format=channels_last) has it
            tensors["input"] = _channels_last(tensors["input"])
            tensors["weight"] = _channels_last(tensors["weight"])
        return tensors

    def replace(self, **changes) -> ConvProblem:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PoolProblem:
    """One max_pool2d / avg_pool2d call over an N×C×H×W input, output N×C×P×Q."""

    op: str  # 'max_pool2d' or 'avg_pool2d'
    N: int
    C: int
    H: int
    W: int
    kernel: Pair
    stride: Pair | None = None  # None: the kernel size, as in torch
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)  # max_pool2d only
    ceil_mode: bool = False
    count_include_pad: bool = True  # avg_pool2d only
    divisor_override: int | None = None  # avg_pool2d only
    return_indices: bool = False  # max_pool2d only
    dtype: str = "float32"
    layout: str = "nchw"

    def __post_init__(self) -> None:
        op = self.op
        if op not in ("max_pool2d", "avg_pool2d"):
            raise ValueError(f"PoolProblem: 'op' must be 'max_pool2d' or 'avg_pool2d', got {op!r}")
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel)
        if self.N < 0 or min(self.C, self.H, self.W) < 1:
            raise _fail(op, "input", f"must be a non-empty 3-D or 4-D tensor (batch may be 0), got N={self.N}, "
                                     f"C={self.C}, H={self.H}, W={self.W}")
        if min(self.kernel) < 1:
            raise _fail(op, "kernel_size", f"must be positive, got {self.kernel}")
        if min(self.stride) < 1:
            raise _fail(op, "stride", f"must be positive, got {self.stride}")
        if min(self.dilation) < 1:
            raise _fail(op, "dilation", f"must be positive, got {self.dilation}")
        if op == "avg_pool2d" and self.dilation != (1, 1):
            raise _fail(op, "dilation", "is not an argument of avg_pool2d")
        if min(self.padding) < 0:
            raise _fail(op, "padding", f"must be non-negative, got {self.padding}")
        if self.padding[0] > self.kernel[0] // 2 or self.padding[1] > self.kernel[1] // 2:
            raise _fail(op, "padding", f"must be at most half of kernel_size, got padding={self.padding}, "
                                       f"kernel_size={self.kernel}")
        if self.divisor_override is not None and (op != "avg_pool2d" or self.divisor_override == 0):
            raise _fail(op, "divisor_override",
                        f"must be a non-zero int (avg_pool2d only), got {self.divisor_override}")
        if self.dtype not in DTYPES:
            raise _fail(op, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise _fail(op, "layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.P < 1 or self.Q < 1:
            raise _fail(op, "input", f"of size {self.H}x{self.W} is too small for kernel_size={self.kernel}, "
                                     f"padding={self.padding}, dilation={self.dilation}: output {self.P}x{self.Q}")

    @property
    def P(self) -> int:
        return pooled_size(self.H, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode)

    @property
    def Q(self) -> int:
        return pooled_size(self.W, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding that every window reads inside; in ceil_mode the last window may run
        past the bottom/right padding, and that overhang is added to bottom/right (it never counts in avg divisors)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        extra_h = max(0, (self.P - 1) * sh + (kh - 1) * dh + 1 - (self.H + 2 * ph))
        extra_w = max(0, (self.Q - 1) * sw + (kw - 1) * dw + 1 - (self.W + 2 * pw))
        return ph, ph + extra_h, pw, pw + extra_w

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.N, self.C, self.H, self.W

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.N, self.C, self.P, self.Q

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    def kwargs(self) -> dict:
        """Keyword arguments of the equivalent ``F.max_pool2d`` / ``F.avg_pool2d`` call."""
        kw = dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode)
        if self.op == "max_pool2d":
            kw.update(dilation=self.dilation, return_indices=self.return_indices)
        else:
            kw.update(count_include_pad=self.count_include_pad, divisor_override=self.divisor_override)
        return kw

    def flops(self) -> int:
        """max: kh·kw−1 comparisons per output; avg: kh·kw−1 adds and one scale per output."""
        taps = self.kernel[0] * self.kernel[1]
        return self.N * self.C * self.P * self.Q * (taps - 1 if self.op == "max_pool2d" else taps)

    def bytes_moved(self) -> int:
        """Compulsory traffic: read the input once, write the output (and int64 indices) once."""
        outputs = self.N * self.C * self.P * self.Q
        indices = 8 * outputs if self.return_indices else 0
        return (self.N * self.C * self.H * self.W + outputs) * self.itemsize + indices

    def first_taps(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input row (P,) and column (Q,) of each window's first tap that is not in the top/left padding.

        ATen's max_pool2d starts its search there, so that position is the index it reports when no element beats
        −inf. With dilation a window can step over the whole input; then this position lies past the input and
        the window holds no input element at all (value −inf).
        """
        def first(out: int, s: int, pad: int, d: int) -> torch.Tensor:
            start = torch.arange(out, device=device) * s - pad
            return start + (torch.clamp(-start, min=0) + d - 1) // d * d

        return (first(self.P, self.stride[0], self.padding[0], self.dilation[0]),
                first(self.Q, self.stride[1], self.padding[1], self.dilation[1]))

    def first_tap_index(self, device=None) -> torch.Tensor:
        """(P, Q) flat h·W + w index of each window's first tap outside the top/left padding (see first_taps):
        the index max_pool2d reports when nothing in the window beats −inf."""
        rows, cols = self.first_taps(device)
        return rows[:, None] * self.W + cols[None, :]

    def divisor(self, device=None) -> torch.Tensor:
        """(P, Q) float64 divisor of each avg_pool2d window, as ATen defines it.

        A window spans [o·s − pad, o·s − pad + k) clipped to the padded extent [−pad, size + pad); count_include_pad
        divides by that clipped span, otherwise by the number of real input elements; divisor_override wins over both.
        """
        if self.divisor_override is not None:
            return torch.full((self.P, self.Q), float(self.divisor_override), dtype=torch.float64, device=device)

        def extent(out: int, size: int, k: int, s: int, pad: int) -> torch.Tensor:
            start = torch.arange(out, device=device) * s - pad
            end = torch.clamp(start + k, max=size + pad)
            if self.count_include_pad:
                return end - start
            return torch.clamp(end, max=size) - torch.clamp(start, min=0)

        h = extent(self.P, self.H, self.kernel[0], self.stride[0], self.padding[0])
        w = extent(self.Q, self.W, self.kernel[1], self.stride[1], self.padding[1])
        return (h[:, None] * w[None, :]).to(torch.float64)

    def make_inputs(self, device="cpu", seed: int = 0, requires_grad: bool = False) -> dict[str, torch.Tensor]:
        """Deterministic x ~ N(0, 1), identical on every device (continuous values: max-pool ties are rare)."""
        tensors = _normal(seed, device, DTYPES[self.dtype], requires_grad, input=(self.input_shape, 1.0))
        if self.layout == "channels_last":
            tensors["input"] = _channels_last(tensors["input"])
        return tensors

    def replace(self, **changes) -> PoolProblem:
        return dataclasses.replace(self, **changes)


def _normal(seed: int, device, dtype: torch.dtype, requires_grad: bool, **specs) -> dict[str, torch.Tensor | None]:
    """Draw each named tensor from N(0, scale²) on the CPU in float64 (bit-identical everywhere), then cast and move."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor | None] = {}
    for name, spec in specs.items():
        if spec is None:
            out[name] = None
            continue
        shape, scale = spec
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
        out[name] = t.requires_grad_(requires_grad)
    return out


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """Same values in NHWC memory; stays a leaf so that .grad is populated."""
    return t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)
