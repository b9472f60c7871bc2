"""``NetTrainProblem``: one benchmarked training step of a real torchvision classification network, every conv and
pool layer routed through the implementation under test (``reference.routed``); its FLOP and byte cost model, its
synthetic batches and its deterministic model.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .optim import OPTIMIZERS
from .problems import DTYPES, ConvProblem, PoolProblem
from .routed import Trace, on_meta, refuse_unrouted, route, routed, trace

#: float64 / float32 / tf32 (float32 storage, the caller enables TF32 math). No bfloat16: mixed precision would need
#: autocast-style casts around every torch op of the network, not only around the routed conv/pool layers.
NET_TRAIN_DTYPES = ("float64", "float32", "tf32")
#: builder options a training step needs: one logits tensor out of the train-mode forward (no auxiliary heads)
_BUILD_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True},
                  "inception_v3": {"aux_logits": False, "init_weights": True}}


def net_names() -> list[str]:
    """The torchvision classification models (``torchvision.models.list_models(module=torchvision.models)``)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _construct(model: str, classes: int) -> nn.Module:
    import torchvision.models as tvm

    with warnings.catch_warnings():  # e.g. googlenet's init_weights FutureWarning: not the user's concern
        warnings.simplefilter("ignore")
        return tvm.get_model(model, weights=None, num_classes=classes, **_BUILD_OPTIONS.get(model, {}))


def _without_randomness(model: nn.Module) -> nn.Module:
    """Dropout and stochastic depth off (p = 0), BatchNorm left in train mode: a random mask would make the
    implementation's step and its float64 reference see different networks (the masks of two devices or dtypes are
    not the same draws), and neither is conv/pool work."""
    from torchvision.ops import StochasticDepth

    for m in model.modules():
        if isinstance(m, (nn.modules.dropout._DropoutNd, StochasticDepth)):
            m.p = 0.0
    return model


@functools.lru_cache(maxsize=64)
def _trace(model: str, batch: int, image_size: int, classes: int) -> tuple[Trace, int]:
    """The train-mode forward's trace of ``model`` on meta tensors and its parameter count (built by
    ``reference.routed.on_meta``: no memory, no init)."""
    net = route(_without_randomness(on_meta(lambda: _construct(model, classes))).train(), F)
    return trace(net, (batch, 3, image_size, image_size)), sum(p.numel() for p in net.parameters())


@dataclass(frozen=True)
class NetTrainProblem:
    """One training step (forward, cross-entropy, backward, optimizer update) of torchvision model ``model`` with
    ``classes`` outputs on ``batch`` synthetic RGB images of ``image_size``² pixels, its Conv2d / MaxPool2d /
    AvgPool2d layers computing through the implementation under test and everything else through torch."""

    model: str = "resnet18"
    batch: int = 8
    image_size: int = 64
    optimizer: str = "sgd"
    dtype: str = "float32"
    layout: str = "nchw"  # or 'channels_last' (images and 4-D parameters in NHWC memory)
    classes: int = 10

    op = "train_step"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or self.model not in net_names():
            raise ValueError(f"train_step: 'model' must be a torchvision classification model, one of "
                             f"{', '.join(net_names())}; got {self.model!r}")
        for arg, least in (("batch", 1), ("image_size", 1), ("classes", 2)):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"train_step: '{arg}' must be an int ≥ {least}, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train_step: 'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.dtype not in NET_TRAIN_DTYPES:
            raise ValueError(f"train_step: 'dtype' must be one of {', '.join(NET_TRAIN_DTYPES)} for a torchvision "
                             f"model, got {self.dtype!r}")
        if self.layout not in ("nchw", "channels_last"):
            raise ValueError(f"train_step: 'layout' must be 'nchw' or 'channels_last', got {self.layout!r}")
        try:
            traced = self.trace()
        except (RuntimeError, ValueError) as e:  # BatchNorm over one value per channel, a pool output below 1×1
            raise ValueError(f"train_step: {self.model} cannot train on 'batch' {self.batch} of 'image_size' "
                             f"{self.image_size}²: {str(e).splitlines()[0]}") from None
        refuse_unrouted(traced, self.model)
        if traced.output_shape != (self.batch, self.classes):
            raise ValueError(f"train_step: {self.model}'s training forward returns {traced.output_shape}, not "
                             f"({self.batch}, {self.classes}) logits")

    # ---- shapes ---------------------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.image_size, self.image_size)

    @property
    def images(self) -> int:
        """Images per step (the results row's batch; images_per_s = images / step time)."""
        return self.batch

    @property
    def storage(self) -> torch.dtype:
        """dtype of the parameters, buffers, optimizer state and images."""
        return DTYPES[self.dtype]

    @property
    def compute(self) -> None:
        """No mixed precision (see NET_TRAIN_DTYPES)."""
        return None

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.storage).element_size()

    def trace(self) -> Trace:
        """The conv/pool calls, linears and produced tensors of one training forward (``reference.routed.trace``)."""
        return _trace(self.model, self.batch, self.image_size, self.classes)[0]

    def layers(self) -> tuple[ConvProblem | PoolProblem, ...]:
        """Every conv and pool call of one forward, in order (repeats included), in this dtype and layout."""
        return tuple(p.replace(dtype=self.dtype, layout=self.layout) for p, _ in self.trace().calls)

    def convs(self) -> tuple[ConvProblem, ...]:
        """The forward conv2d problem of each conv call of one step."""
        return tuple(p for p in self.layers() if isinstance(p, ConvProblem))

    def num_parameters(self) -> int:
        return _trace(self.model, self.batch, self.image_size, self.classes)[1]

    # ---- cost model -----------------------------------------------------------------------------------------------
    def forward_flops(self) -> int:
        """Forward FLOPs of the convs and linears: Σ conv.flops() (2·MACs + bias) + Σ rows·(2·in·out + out·bias).
        Attention matmuls (ViT, Swin, MaxViT) are not counted: for those networks this is a lower bound."""
        linear = sum(rows * (2 * fin * fout + (fout if bias else 0)) for rows, fin, fout, bias in self.trace().linears)
        return sum(p.flops() for p in self.convs()) + linear

    def flops(self) -> int:
        """FLOPs of one step: 3 × forward_flops, the 6·MACs training convention ``TrainProblem.flops`` states
        (backward = input grad + weight grad, each as large as the forward; BatchNorm, activations, pooling, loss
        and update are lower order; the stem's unneeded input grad is counted, ~1–3 % for ImageNet CNNs)."""
        return 3 * self.forward_flops()

    def activation_elements(self) -> int:
        """Elements of every tensor one forward produces (views and in-place results excluded)."""
        return self.trace().activation_elements

    def bytes_moved(self) -> int:
        """Compulsory traffic of one unfused step, an estimate, as ``TrainProblem.bytes_moved`` counts it:
        (5 + 2·S)·P for P parameters with S optimizer state tensors each, 5·A for the A activation elements
        (forward writes and reads each once; backward reads it, writes and reads its gradient), the images twice
        and the int64 labels once. BatchNorm running statistics (2 per channel) are left out."""
        params = (5 + 2 * OPTIMIZERS[self.optimizer].state_tensors) * self.num_parameters()
        images = 2 * self.batch * 3 * self.image_size ** 2
        return (params + images + 5 * self.activation_elements()) * self.itemsize + 8 * self.batch

    # ---- data and model -------------------------------------------------------------------------------------------
    def make_batches(self, steps: int, seed: int = 0, device="cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` (images, labels) batches of ``synthetic_images``, in this problem's dtype and layout."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"'steps' must be a positive int, got {steps!r}")
        x, y = synthetic_images(steps * self.batch, self.image_size, self.classes, seed, device, self.storage)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return list(zip(x.split(self.batch), y.split(self.batch)))

    def reference_model(self, seed: int = 0, device="cpu", dtype: torch.dtype = torch.float64) -> nn.Module:
        """The network with the initial weights of ``seed``, plain torch (not routed), in train mode, dropout off:
        drawn with torchvision's own init in float64 on the CPU from ``torch.manual_seed(seed)`` (the caller's RNG
        state untouched), rounded to ``dtype`` there and only then moved, so every implementation and device starts
        from the same bits."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                net = _construct(self.model, self.classes)
            finally:
                torch.set_default_dtype(default)
        net = _without_randomness(net).to(dtype).to(device).train()
        return net.to(memory_format=torch.channels_last) if self.layout == "channels_last" else net

    def build(self, ops, seed: int = 0, device="cpu") -> nn.Module:
        """This problem's network in its storage dtype on ``device``, every conv/pool layer computing through
        ``ops`` (``reference.routed.routed``), in train mode (BatchNorm on batch statistics)."""
        return routed(self.reference_model(seed, device, self.storage), ops, self.input_shape, self.model)

    def replace(self, **changes) -> NetTrainProblem:
        return dataclasses.replace(self, **changes)


# ---- synthetic images ---------------------------------------------------------------------------------------------
_TEMPLATE_SEED = 20250226  # the class templates are fixed: every seed draws from the same classes
_DATA_SALT = 0x1A6E_DA7A  # keeps the data stream apart from the weight stream of the same seed
_NOISE = 0.5


def synthetic_images(n: int, image_size: int, classes: int = 10, seed: int = 0, device="cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` RGB images (n×3×size×size, ``dtype``) and int64 labels in 0..classes−1, deterministic in ``seed``.

    Each class is a fixed smooth colour pattern (4×4 Gaussian noise per channel, bicubically upsampled); an image is
    a·template[label], a ~ U(0.7, 1.3), rolled by up to ±size/8 pixels each way, plus N(0, 0.5²) pixel noise — roughly
    zero-mean, unit-scale inputs like normalised photographs, with a label a CNN can learn. Drawn in float64 on the
    CPU, then cast and moved, so every device sees the same values. No download."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"'n' must be a non-negative int, got {n!r}")
    templates = F.interpolate(torch.randn(classes, 3, 4, 4, generator=torch.Generator().manual_seed(_TEMPLATE_SEED),
                                          dtype=torch.float64), size=(image_size, image_size), mode="bicubic",
                              align_corners=False)
    gen = torch.Generator().manual_seed(_DATA_SALT + seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    amplitude = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)
    shift = max(1, image_size // 8)
    shifts = torch.randint(-shift, shift + 1, (n, 2), generator=gen)
    noise = torch.randn(n, 3, image_size, image_size, generator=gen, dtype=torch.float64) * _NOISE
    images = torch.stack([templates[c].roll((int(dy), int(dx)), dims=(1, 2)) for c, (dy, dx) in
                          zip(labels.tolist(), shifts)]) if n else templates[:0]
    return (amplitude * images + noise).to(dtype).to(device), labels.to(device)
