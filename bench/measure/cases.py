"""A benchmark case: one operation on one problem (shape, arguments, dtype, layout) on one device.

A case is measured across every selected implementation, interleaved in one process; each implementation's
outcome is one results row. ``key`` identifies a case in results files (resume, merge, compare).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reference import ConvProblem, NetTrainProblem, PoolProblem

from ..runs.schema import CASE_OPS, parse_models


def pair_text(v) -> str:
    """An int when both sides agree, else 'HxW'; strings ('same', 'valid') unchanged — the results-column format."""
    if isinstance(v, str):
        return v
    h, w = v
    return str(h) if h == w else f"{h}x{w}"


@dataclass(frozen=True)
class Case:
    op: str
    problem: object  # ConvProblem | PoolProblem | reference.TrainProblem | reference.NetTrainProblem
    device: str = "cpu"
    #: a layer of real networks: how often each model makes this call, ``resnet18:4;convnext_tiny:1`` (the rows'
    #: ``models`` column; bench/measure/models.py); not part of the case's identity
    models: str = field(default="", compare=False)

    @property
    def count(self) -> int | None:
        """How many times the networks it belongs to make this call (a model layer), else None."""
        return sum(parse_models(self.models).values()) if self.models else None

    def __post_init__(self) -> None:
        if self.op not in CASE_OPS:
            raise ValueError(f"Case: 'op' must be one of {', '.join(CASE_OPS)}, got {self.op!r}")

    @property
    def dtype(self) -> str:
        return self.problem.dtype

    @property
    def layout(self) -> str:
        return getattr(self.problem, "layout", "nchw")

    @property
    def key(self) -> str:
        """Stable identity of the case (without the implementation), e.g.
        ``conv2d|N8 C64 H56 W56|K64 R3 S3|s1 p1 d1 g1 bias|float32|nchw|cpu``."""
        p = self.problem
        if isinstance(p, ConvProblem):
            shape = f"N{p.N} C{p.C} H{p.H} W{p.W}|K{p.K} R{p.R} S{p.S}"
            args = (f"s{pair_text(p.stride)} p{pair_text(p.padding)} d{pair_text(p.dilation)} g{p.groups}"
                    f"{' bias' if p.bias else ''}")
        elif isinstance(p, PoolProblem):
            shape = f"N{p.N} C{p.C} H{p.H} W{p.W}|k{pair_text(p.kernel)}"
            args = f"s{pair_text(p.stride)} p{pair_text(p.padding)} d{pair_text(p.dilation)}{self.options_text()}"
        elif isinstance(p, NetTrainProblem):
            shape = f"N{p.batch} C3 H{p.image_size} W{p.image_size}|{p.model}"
            args = self.options_text()
        else:
            shape = f"N{p.batch} C1 H28 W28|{p.model}"
            args = self.options_text()
        return f"{self.op}|{shape}|{args.strip()}|{self.dtype}|{self.layout}|{self.device}"

    def options_text(self) -> str:
        """Op-specific options that are not results columns (ceil_mode, optimizer, …), as ' k=v' pairs."""
        p = self.problem
        if isinstance(p, PoolProblem):
            opts = {"ceil": p.ceil_mode}
            if p.op == "max_pool2d":
                opts["indices"] = p.return_indices
            else:
                opts.update(include_pad=p.count_include_pad, divisor=p.divisor_override)
            return "".join(f" {k}={int(v) if isinstance(v, bool) else v}" for k, v in opts.items()
                           if v is not None)
        if isinstance(p, ConvProblem):
            return " bias=1" if p.bias else " bias=0"
        return f" model={p.model} optimizer={p.optimizer}"

    def columns(self) -> dict:
        """The shape columns of a results row."""
        p = self.problem
        if isinstance(p, ConvProblem):
            return dict(batch=p.N, in_channels=p.C, out_channels=p.K, height=p.H, width=p.W, kernel_h=p.R,
                        kernel_w=p.S, stride=pair_text(p.stride), padding=pair_text(p.padding),
                        dilation=pair_text(p.dilation), groups=p.groups)
        if isinstance(p, PoolProblem):
            return dict(batch=p.N, in_channels=p.C, out_channels=p.C, height=p.H, width=p.W, kernel_h=p.kernel[0],
                        kernel_w=p.kernel[1], stride=pair_text(p.stride), padding=pair_text(p.padding),
                        dilation=pair_text(p.dilation), groups="")
        if isinstance(p, NetTrainProblem):  # a torchvision network's step: its input images and its classes
            return dict(batch=p.batch, in_channels=3, out_channels=p.classes, height=p.image_size, width=p.image_size,
                        kernel_h="", kernel_w="", stride="", padding="", dilation="", groups="")
        # train_step: the input of the network, one MNIST-shaped image per batch element
        return dict(batch=p.batch, in_channels=1, out_channels=10, height=28, width=28, kernel_h="", kernel_w="",
                    stride="", padding="", dilation="", groups="")

    def flops(self) -> int:
        """FLOPs of one timed call: forward, or dgrad + wgrad (+ bias grad) for conv2d_backward, or a train step."""
        return self.problem.backward_flops() if self.op == "conv2d_backward" else self.problem.flops()

    def bytes_moved(self) -> int:
        """Compulsory bytes of one timed call (see each problem's formula)."""
        return self.problem.backward_bytes() if self.op == "conv2d_backward" else self.problem.bytes_moved()

    @property
    def images(self) -> int | None:
        """Images processed per timed call (train_step only)."""
        return self.problem.batch if self.op == "train_step" else None
