"""``TrainProblem``: one benchmarked training step (model, batch, optimizer, dtype, layout), its FLOP and byte cost
model, its batches of synthetic digits and its model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .cnn import ARCHITECTURES, CNN, IMAGE_SHAPE, Architecture, build_model
from .data import synthetic_mnist
from .optim import OPTIMIZERS
from .problems import DTYPES, ConvProblem

#: float64/float32/tf32: parameters, activations and math in that dtype. bfloat16: mixed precision as autocast does
#: it — float32 master weights and optimizer, conv/pool/linear computed in bfloat16 (operands cast on the way in,
#: gradients cast back to float32), the loss in float32.
TRAIN_DTYPES = ("float64", "float32", "tf32", "bfloat16")


@dataclass(frozen=True)
class TrainProblem:
    """One training step (forward, cross-entropy, backward, optimizer update) of ``model`` on ``batch`` images."""

    model: str = "simplecnn"
    batch: int = 64
    optimizer: str = "sgd"
    dtype: str = "float32"
    layout: str = "nchw"  # or 'channels_last' (input and conv weights in NHWC memory)

    op = "train_step"

    def __post_init__(self) -> None:
        if self.model not in ARCHITECTURES:
            raise ValueError(f"train_step: 'model' must be one of {', '.join(ARCHITECTURES)}, got {self.model!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"train_step: 'batch' must be a positive int, got {self.batch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train_step: 'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"train_step: 'dtype' must be one of {', '.join(TRAIN_DTYPES)}, got {self.dtype!r}")
        if self.layout not in ("nchw", "channels_last"):
            raise ValueError(f"train_step: 'layout' must be 'nchw' or 'channels_last', got {self.layout!r}")

    # ---- shapes ---------------------------------------------------------------------------------------------------
    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.model]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, *IMAGE_SHAPE)

    @property
    def images(self) -> int:
        """Images per step (the results row's batch; images_per_s = images / step time)."""
        return self.batch

    @property
    def storage(self) -> torch.dtype:
        """dtype of the parameters, optimizer state and input images (float32 master weights for bfloat16)."""
        return torch.float32 if self.dtype == "bfloat16" else DTYPES[self.dtype]

    @property
    def compute(self) -> torch.dtype | None:
        """dtype the layers compute in when it differs from the storage (mixed precision), else None."""
        return torch.bfloat16 if self.dtype == "bfloat16" else None

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.storage).element_size()

    def convs(self) -> tuple[ConvProblem, ...]:
        """The forward conv2d problem of each conv layer of one step."""
        out, size = [], IMAGE_SHAPE[1]
        for c, k, r in self.arch.convs:
            out.append(ConvProblem(N=self.batch, C=c, H=size, W=size, K=k, R=r, S=r, padding=(r // 2, r // 2),
                                   dtype=self.dtype, layout=self.layout))
            size //= 2
        return tuple(out)

    def num_parameters(self) -> int:
        return self.arch.num_parameters()

    # ---- cost model -----------------------------------------------------------------------------------------------
    def forward_flops(self) -> int:
        """Forward FLOPs of the convs and linears: Σ conv.flops() (2·MACs + bias) + Σ N·(2·in·out + out)."""
        linear = sum(self.batch * (2 * fin * fout + fout) for fin, fout in self.arch.linears)
        return sum(p.flops() for p in self.convs()) + linear

    def flops(self) -> int:
        """FLOPs of one step: 3 × forward_flops — backward is two GEMM-sized products per layer (input grad and
        weight grad), the usual 6·MACs training estimate. ReLU, pooling, loss and the optimizer update are O(params
        + activations), lower order, and left out; conv1 skips its input grad, so this overstates by 2·MACs(conv1)
        (≈ 4 % for simplecnn, 3 % for basiccnn), the price of the convention training throughputs are quoted in."""
        return 3 * self.forward_flops()

    def activation_elements(self) -> int:
        """Elements of every tensor the forward pass produces: each conv output, its ReLU, its pool; each linear
        output and its ReLU; the logits."""
        total, size = 0, IMAGE_SHAPE[1]
        for _, k, _ in self.arch.convs:
            total += 2 * k * size * size + k * (size // 2) ** 2
            size //= 2
        total += sum(fout for _, fout in self.arch.linears[:-1]) * 2 + self.arch.linears[-1][1]
        return self.batch * total

    def bytes_moved(self) -> int:
        """Compulsory traffic of one unfused step, an estimate:
        parameters (P elements): forward reads P; backward reads P and writes P gradients; the optimizer reads p, g
        and its S state tensors and writes p and S (S = 1 sgd, 2 adam) → (5 + 2·S)·P;
        activations (A = activation_elements): forward writes and the next op reads each (2·A); backward reads the
        saved ones again, writes and reads their gradients (3·A) → 5·A;
        input images read twice (forward, conv1 weight grad) and int64 labels read once.
        Fused conv+ReLU or kept-in-cache tensors move less; this is the unfused upper estimate.
        Mixed precision keeps parameters in float32 and activations in bfloat16 (2 bytes)."""
        params = (5 + 2 * OPTIMIZERS[self.optimizer].state_tensors) * self.num_parameters()
        act_bytes = torch.empty((), dtype=self.compute or self.storage).element_size()
        return ((params + 2 * math.prod(self.input_shape)) * self.itemsize
                + 5 * self.activation_elements() * act_bytes + 8 * self.batch)

    # ---- data and model -------------------------------------------------------------------------------------------
    def make_batches(self, steps: int, seed: int = 0, device="cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` (images, labels) batches of synthetic digits, in this problem's dtype and layout."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"'steps' must be a positive int, got {steps!r}")
        x, y = synthetic_mnist(steps * self.batch, seed, device, self.storage)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return list(zip(x.split(self.batch), y.split(self.batch)))

    def build(self, ops, seed: int = 0, device="cpu") -> CNN:
        """This problem's model computing through ``ops`` (conv weights in channels_last memory for that layout)."""
        model = build_model(self.model, ops, seed, self.storage, device)
        model.compute_dtype = self.compute
        return model.to(memory_format=torch.channels_last) if self.layout == "channels_last" else model

    def replace(self, **changes) -> TrainProblem:
        return dataclasses.replace(self, **changes)
