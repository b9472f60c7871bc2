"""CNN models, their training step, synthetic MNIST-shaped data and the float64 reference training run.

The models compute every convolution and pooling through an ``ops`` object — any ``kernels`` implementation, the
``reference.oracle`` module, even ``torch.nn.functional`` — found by duck typing (``reference`` never imports
``kernels``): a conv+bias+ReLU block calls ``ops.conv2d_relu`` when ``ops`` has it, else ``relu(ops.conv2d(...))``,
and pooling calls ``ops.max_pool2d``, so forward and backward both run in that implementation. The linear layers use
``torch.nn.functional.linear`` everywhere: they are not what convbench measures.

Architectures (input N×1×28×28; every conv is stride 1 with 'same' padding R//2, followed by ReLU and a 2×2/2 max
pool, so 28 → 14 → 7):

    simplecnn: conv 1→16 k5 · conv 16→32 k5 · linear 1568→10                      28 938 parameters
    basiccnn:  conv 1→16 k3 · conv 16→32 k3 · linear 1568→128, ReLU · linear 128→10  206 922 parameters

Every implementation starts from the same weights: they are drawn in float64 on the CPU from a generator seeded with
``seed`` (PyTorch's default scheme for nn.Conv2d / nn.Linear: weight and bias ~ U(−1/√fan_in, 1/√fan_in), which is
kaiming_uniform_(a=√5) for the weight), then rounded to the model dtype on the CPU and only then moved, so the
initial parameters are bit-identical across implementations and devices.

The float64 reference (``reference_training``) runs the same model on ``reference.oracle`` with a written-out cross
entropy and the optimizer updates written out from PyTorch's documented formulas, independent of ``torch.optim``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from . import oracle
from .problems import DTYPES, ConvProblem, dtype_name
from .tolerance import UPDATE_ULPS, Check, check, combine

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


# ---- architectures ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """A CNN of conv blocks (conv k×k stride 1 'same' padding, bias, ReLU, 2×2 max pool) and linear layers
    (ReLU between them, none after the last)."""

    name: str
    convs: tuple[tuple[int, int, int], ...]  # (C in, K out, kernel R = S)
    linears: tuple[tuple[int, int], ...]  # (in features, out features)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name → shape, in initialisation order (conv1.weight, conv1.bias, …, fc1.weight, fc1.bias, …)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (c, k, r) in enumerate(self.convs, 1):
            shapes[f"conv{i}.weight"], shapes[f"conv{i}.bias"] = (k, c, r, r), (k,)
        for i, (fin, fout) in enumerate(self.linears, 1):
            shapes[f"fc{i}.weight"], shapes[f"fc{i}.bias"] = (fout, fin), (fout,)
        return shapes

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.parameter_shapes().values())


ARCHITECTURES: dict[str, Architecture] = {
    "simplecnn": Architecture("simplecnn", convs=((1, 16, 5), (16, 32, 5)), linears=((32 * 7 * 7, 10),)),
    "basiccnn": Architecture("basiccnn", convs=((1, 16, 3), (16, 32, 3)), linears=((32 * 7 * 7, 128), (128, 10))),
}


def architecture(name: str) -> Architecture:
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"'name' must be one of {', '.join(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def initial_parameters(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The float64 CPU initial parameters of model ``name``: PyTorch's default nn.Conv2d / nn.Linear scheme
    (weight and bias ~ U(−b, b), b = 1/√fan_in), drawn in ``parameter_shapes`` order from Generator(seed)."""
    gen = torch.Generator().manual_seed(seed)
    params, fan_in = {}, 1
    for pname, shape in architecture(name).parameter_shapes().items():
        if pname.endswith("weight"):  # its bias comes next and shares its fan-in
            fan_in = math.prod(shape[1:])
        params[pname] = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * fan_in ** -0.5
    return params


class _Affine(nn.Module):
    """Parameter holder of one conv or linear layer (``weight``, ``bias``); the model does the computing."""

    def __init__(self, weight_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(weight_shape, dtype=torch.float64))
        self.bias = nn.Parameter(torch.empty(weight_shape[0], dtype=torch.float64))


def _has_ops(ops) -> bool:
    return callable(getattr(ops, "conv2d", None)) and callable(getattr(ops, "max_pool2d", None))


class CNN(nn.Module):
    """A CNN of ``arch`` whose conv, ReLU-after-conv and pooling run in ``ops``; created in float64 on the CPU with
    ``initial_parameters(arch.name, seed)`` (use ``build_model`` for another dtype or device)."""

    arch: Architecture

    def __init__(self, ops, seed: int = 0) -> None:
        super().__init__()
        if not _has_ops(ops):
            raise TypeError(f"'ops' must provide conv2d and max_pool2d (a kernels implementation or "
                            f"reference.oracle), got {type(ops).__name__}")
        self.ops = ops
        self.paddings = tuple(r // 2 for _, _, r in self.arch.convs)
        for i, (c, k, r) in enumerate(self.arch.convs, 1):
            self.add_module(f"conv{i}", _Affine((k, c, r, r)))
        for i, (fin, fout) in enumerate(self.arch.linears, 1):
            self.add_module(f"fc{i}", _Affine((fout, fin)))
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """Overwrite every parameter, in place (dtype, device and memory format kept), with the initial weights of
        ``seed``, rounded on the CPU first — so a model reused across runs restarts exactly like a new one."""
        with torch.no_grad():
            for pname, value in initial_parameters(self.arch.name, seed).items():
                p = self.get_parameter(pname)
                p.copy_(value.to(p.dtype).to(p.device))

    #: mixed precision: layers compute in this dtype (operands cast on the way in, as autocast does); None: as stored
    compute_dtype: torch.dtype | None = None

    def _param(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.compute_dtype) if self.compute_dtype is not None else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.ops, "conv2d_relu", None)
        x = self._param(x)
        relu = getattr(self.ops, "relu", torch.relu)  # an ops object may own the hidden ReLU too (the reference does)
        for i, pad in enumerate(self.paddings, 1):
            layer = self.get_submodule(f"conv{i}")
            w, b = self._param(layer.weight), self._param(layer.bias)
            if fused is not None:
                x = fused(x, w, b, padding=pad)
            else:
                x = torch.relu(self.ops.conv2d(x, w, b, padding=pad))
            x = self.ops.max_pool2d(x, 2, 2)
        x = x.flatten(1)
        last = len(self.arch.linears)
        for i in range(1, last + 1):
            layer = self.get_submodule(f"fc{i}")
            x = F.linear(x, self._param(layer.weight), self._param(layer.bias))
            if i < last:
                x = relu(x)
        return x.float() if self.compute_dtype is not None else x  # the loss in float32

    def with_ops(self, ops) -> CNN:
        """A view of this model (same parameter tensors) that computes through ``ops``."""
        view = copy.copy(self)  # shallow: the parameter dicts are shared, only ``ops`` is the view's own
        view.ops = ops
        return view


class SimpleCNN(CNN):
    """Conv(1→16, k5, p2)+ReLU+MaxPool2 → Conv(16→32, k5, p2)+ReLU+MaxPool2 → Linear(1568→10)."""

    arch = ARCHITECTURES["simplecnn"]


class BasicCNN(CNN):
    """Conv(1→16, k3, p1)+ReLU+MaxPool2 → Conv(16→32, k3, p1)+ReLU+MaxPool2 → Linear(1568→128)+ReLU → Linear(128→10)."""

    arch = ARCHITECTURES["basiccnn"]


MODELS: dict[str, type[CNN]] = {"simplecnn": SimpleCNN, "basiccnn": BasicCNN}


def build_model(name: str, ops, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> CNN:
    """Model ``name`` (simplecnn, basiccnn) computing through ``ops``, with the initial weights of ``seed``
    (bit-identical for every implementation and device), in ``dtype`` on ``device``."""
    architecture(name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"'dtype' must be a floating torch.dtype, got {dtype!r}")
    model = MODELS[name](ops, seed)
    return model.to(dtype=dtype).to(device=device)  # round on the CPU, then move: identical bits everywhere


# ---- optimizers ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerSpec:
    """The fixed hyperparameters of a benchmark optimizer (no weight decay, no dampening, no Nesterov)."""

    name: str
    lr: float
    momentum: float = 0.0  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam

    @property
    def state_tensors(self) -> int:
        """Per-parameter state tensors: the momentum buffer (sgd) or the two moments (adam)."""
        return 1 if self.name == "sgd" else 2


#: lr 0.01 with momentum 0.9 (an effective step of 0.1) and Adam's usual 1e-3 both train the models on the synthetic
#: digits in a few hundred small-batch steps without diverging.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", lr=0.01, momentum=0.9),
    "adam": OptimizerSpec("adam", lr=1e-3),
}
#: torch.optim options that choose an implementation of the update, not its math (capturable for CUDA graphs)
_IMPLEMENTATION_OPTIONS = ("foreach", "fused", "capturable")


def optimizer_spec(name: str) -> OptimizerSpec:
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"'name' must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def make_optimizer(name: str, params: Iterable[torch.Tensor], **options) -> torch.optim.Optimizer:
    """torch.optim optimizer ``name`` (sgd, adam) with the fixed hyperparameters of ``OPTIMIZERS``.

    ``options`` may only pick how torch computes the update (foreach, fused, capturable), never its math."""
    spec = optimizer_spec(name)
    for key in options:
        if key not in _IMPLEMENTATION_OPTIONS:
            raise ValueError(f"'{key}' is not an allowed optimizer option (only {', '.join(_IMPLEMENTATION_OPTIONS)}; "
                             f"the hyperparameters are fixed in OPTIMIZERS)")
    if spec.name == "sgd":  # SGD's update is capture-safe as is: torch.optim.SGD takes no 'capturable'
        options.pop("capturable", None)
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, **options)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, **options)


class ReferenceOptimizer:
    """The update of ``spec`` written out from PyTorch's formulas, in float64, without torch.optim.

    sgd:  b ← μ·b + g  (b = g on the first step),  p ← p − lr·b
    adam: t ← t + 1,  m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,
          p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)      (bias-corrected, ε outside the square root)

    ``state`` holds, per parameter, the tensors under torch.optim's names (momentum_buffer; exp_avg, exp_avg_sq),
    so the state of a torch optimizer can be loaded (``load_state``) and the next update checked from it.
    """

    def __init__(self, spec: OptimizerSpec, params: Sequence[torch.Tensor]) -> None:
        self.spec, self.params, self.t = spec, list(params), 0
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def load_state(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], t: int) -> None:
        """Copy (in float64) the state ``optimizer`` keeps for ``params`` — matched to ours by position — after
        ``t`` steps."""
        self.t = t
        for mine, p in zip(self.state, params):
            mine.clear()
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, torch.Tensor):
                    mine[key] = value.detach().to("cpu", torch.float64).clone()

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        s, self.t = self.spec, self.t + 1
        for p, g, state in zip(self.params, grads, self.state):
            if s.name == "sgd":
                b = state.get("momentum_buffer")
                state["momentum_buffer"] = b = g.clone() if b is None else s.momentum * b + g
                p.sub_(s.lr * b)
            else:
                beta1, beta2 = s.betas
                m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
                v = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g * g
                state["exp_avg"], state["exp_avg_sq"] = m, v
                denom = v.sqrt() / math.sqrt(1 - beta2 ** self.t) + s.eps
                p.sub_(s.lr / (1 - beta1 ** self.t) * m / denom)


# ---- the training step --------------------------------------------------------------------------------------------
def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                      torch.Tensor]:
    """``step(x, y) -> loss``: forward, cross-entropy, backward, optimizer.step(); the detached loss is returned.

    The gradients are cleared with set_to_none at the start of the step, so a step is the same work every time and
    keeps no Python-side state of its own: it can be timed as is, compiled with torch.compile, or captured in a CUDA
    graph (with static x, y and a capturable optimizer)."""
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the labels split a torch.profiler trace into phases (bench profile); torch.compile ignores them
        optimizer.zero_grad(set_to_none=True)
        with record_function("convbench.forward"):
            loss = loss_fn(model(x), y)
        with record_function("convbench.backward"):
            loss.backward()
        with record_function("convbench.optimizer"):
            optimizer.step()
        return loss.detach()

    return step


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of logsumexp(logits) − logits[label] (nn.CrossEntropyLoss's definition)."""
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, labels[:, None]).squeeze(1)).mean()


# ---- synthetic MNIST-shaped data ----------------------------------------------------------------------------------
_TEMPLATE_SEED = 20240611  # the ten class templates are fixed: every seed draws from the same ten "digits"
_DATA_SALT = 0x5EED_DA7A  # keeps the data stream apart from the weight stream of the same seed
_MAX_SHIFT = 2  # pixels, each direction
_NOISE = 0.45  # standard deviation of the per-pixel Gaussian noise


def class_templates() -> torch.Tensor:
    """(10, 28, 28) float64 "digits" in [0, 1]: each class is three smooth strokes (quadratic Bézier curves drawn
    with a Gaussian pen of σ = 1.1 px) whose control points lie in the central 16×16 square, leaving room to shift.
    A candidate too similar to an earlier class (cosine > 0.6) is redrawn, so no two classes are near-duplicates."""
    gen = torch.Generator().manual_seed(_TEMPLATE_SEED)
    grid = torch.arange(28, dtype=torch.float64)
    t = torch.linspace(0, 1, 48, dtype=torch.float64)[:, None]
    templates: list[torch.Tensor] = []
    while len(templates) < NUM_CLASSES:
        image = torch.zeros(28, 28, dtype=torch.float64)
        for _ in range(3):
            p0, p1, p2 = (6 + 16 * torch.rand(3, 2, generator=gen, dtype=torch.float64)).unbind(0)
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (48, 2) points along the stroke
            d2 = (grid[None, :, None] - pts[:, 0, None, None]) ** 2 + (grid[None, None, :] - pts[:, 1, None, None]) ** 2
            image = torch.maximum(image, torch.exp(-d2 / (2 * 1.1 ** 2)).amax(dim=0))
        if all(F.cosine_similarity(image.flatten(), other.flatten(), dim=0) <= 0.6 for other in templates):
            templates.append(image)
    return torch.stack(templates)


def synthetic_mnist(n: int, seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST-shaped images (n×1×28×28, ``dtype``) and labels (int64 in 0..9), deterministic in ``seed``.

    Image = a·template[label] shifted by up to ±2 px in each direction + N(0, 0.45²) noise, with a ~ U(0.7, 1.3):
    the shifts make a CNN's translation invariance matter and the noise keeps the task from being trivial, yet
    SimpleCNN reaches ≈ 98 % held-out accuracy after 200 SGD steps of 16 images (a few seconds on a CPU). Drawn in
    float64 on the CPU, then cast and moved, so every device sees the same values. No download anywhere."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"'n' must be a non-negative int, got {n!r}")
    gen = torch.Generator().manual_seed(_DATA_SALT + seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    shifts = torch.randint(-_MAX_SHIFT, _MAX_SHIFT + 1, (n, 2), generator=gen)
    amplitude = 0.7 + 0.6 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, 28, 28, generator=gen, dtype=torch.float64) * _NOISE
    padded = F.pad(class_templates(), (_MAX_SHIFT,) * 4)  # (10, 34, 34): shifting reads zeros, never wraps
    rows = (_MAX_SHIFT - shifts[:, 0])[:, None] + torch.arange(28)  # (n, 28)
    cols = (_MAX_SHIFT - shifts[:, 1])[:, None] + torch.arange(28)
    images = amplitude * padded[labels[:, None, None], rows[:, :, None], cols[:, None, :]] + noise
    return images[:, None].to(dtype).to(device), labels.to(device)


# ---- the benchmarked problem --------------------------------------------------------------------------------------
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


# ---- the float64 reference and the agreement check ----------------------------------------------------------------
class DecisionRecorder:
    """Ops proxy that computes through ``ops`` and records each non-smooth decision in call order: which outputs
    of a ReLU passed (``output > 0``) and which input each max-pool window took (the first one equal to its output,
    ATen's rule). The models pool with kernel_size = stride, no padding."""

    def __init__(self, ops) -> None:
        self.ops, self.decisions = ops, []

    def conv2d_relu(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        fused = getattr(self.ops, "conv2d_relu", None)
        if fused is not None:
            out = fused(input, weight, bias, stride, padding, dilation, groups)
        else:
            out = torch.relu(self.ops.conv2d(input, weight, bias, stride, padding, dilation, groups))
        self.decisions.append(("relu", (out > 0).detach()))
        return out

    def relu(self, input):
        out = torch.relu(input)
        self.decisions.append(("relu", (out > 0).detach()))
        return out

    def conv2d(self, *args, **kwargs):
        return self.ops.conv2d(*args, **kwargs)

    def max_pool2d(self, input, kernel_size, stride):
        out = self.ops.max_pool2d(input, kernel_size, stride)
        k, (N, C, H, W) = kernel_size, input.shape
        windows = F.unfold(input.detach().reshape(N * C, 1, H, W), k, stride=stride)  # (N·C, k·k, P·Q)
        tap = (windows == out.detach().reshape(N * C, 1, -1)).int().argmax(dim=1)  # first equal tap
        P, Q = out.shape[-2:]
        p = torch.arange(P, device=tap.device).repeat_interleave(Q)
        q = torch.arange(Q, device=tap.device).repeat(P)
        index = (p * stride + tap // k) * W + q * stride + tap % k
        self.decisions.append(("max_pool", index.reshape(N, C, P, Q)))
        return out


class DecidedOracle:
    """``reference.oracle`` arithmetic in float64 taking the recorded decisions of an implementation: a ReLU passes
    what the implementation's passed, a max-pool window returns the input the implementation's took.

    Each decision is first checked against the float64 one under the dtype's tolerance (``checks``): a decision
    may differ only where float64 itself is within rounding of a tie or a kink, so following it changes the
    reference by no more than that rounding — and spares the comparison the discontinuity: near such a tie the
    float32 and float64 choices route a whole gradient path differently (observed: a 1e-8 relative near-tie in
    a max-pool window failing 104 of 144 conv1 weight gradients). Ties and kinks at that distance occur in ~1 %
    of steps at batch 4, and more often the larger the batch."""

    def __init__(self, decisions: Sequence[tuple[str, torch.Tensor]], dtype: str) -> None:
        self.decisions, self.dtype, self.checks = list(decisions), dtype, []

    def _next(self, kind: str) -> torch.Tensor:
        if not self.decisions or self.decisions[0][0] != kind:
            raise RuntimeError(f"DecidedOracle: the recorded forward pass has no {kind} decision here")
        return self.decisions.pop(0)[1].to("cpu")

    def _relu(self, z: torch.Tensor, what: str) -> torch.Tensor:
        passed = z * self._next("relu")  # z where the implementation's ReLU passed, 0 elsewhere
        c = check(passed, torch.relu(z), self.dtype)
        self.checks.append(c if c.ok else dataclasses.replace(c, detail=f"{what} decisions: {c.detail}"))
        return passed

    def conv2d(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return oracle.conv2d(input, weight, bias, stride, padding, dilation, groups)

    def conv2d_relu(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return self._relu(oracle.conv2d(input, weight, bias, stride, padding, dilation, groups), "conv+ReLU")

    def relu(self, input):
        return self._relu(input, "ReLU")

    def max_pool2d(self, input, kernel_size, stride):
        index = self._next("max_pool")
        taken = input.flatten(2).gather(2, index.flatten(2)).view(index.shape)
        c = check(taken, oracle.max_pool2d(input, kernel_size, stride), self.dtype)
        self.checks.append(c if c.ok else dataclasses.replace(c, detail=f"max_pool2d decisions: {c.detail}"))
        return taken


class ReferenceTrainer:
    """``model_name`` in float64 on the CPU through ``reference.oracle``, trained with the written-out cross
    entropy and ``ReferenceOptimizer``: everything torch.optim and the implementations do, computed independently.

    ``init_dtype``: round the initial weights to an implementation's dtype first, so that both runs start from the
    same numbers and only the arithmetic of the steps differs."""

    def __init__(self, model_name: str, optimizer_name: str, seed: int = 0,
                 init_dtype: torch.dtype = torch.float64) -> None:
        self.model = build_model(model_name, oracle, seed, init_dtype).to(torch.float64)
        self.names, self.params = zip(*self.model.named_parameters())
        self.optimizer = ReferenceOptimizer(optimizer_spec(optimizer_name), self.params)

    def loss_and_gradients(self, x: torch.Tensor, y: torch.Tensor, ops=None
                           ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Loss and parameter gradients on (x, y), converted exactly to float64 on the CPU; no update.
        ``ops`` replaces the oracle (a ``DecidedOracle``)."""
        model = self.model if ops is None else self.model.with_ops(ops)
        loss = cross_entropy(model(x.detach().to("cpu", torch.float64)), y.to("cpu"))
        return loss.detach(), torch.autograd.grad(loss, self.params)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step; returns the loss before the update."""
        loss, grads = self.loss_and_gradients(x, y)
        self.optimizer.step(grads)
        return loss

    def parameters(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in zip(self.names, self.params)}

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, t: int) -> None:
        """Continue from the parameters of ``model`` and the state of ``optimizer`` after ``t`` steps (float64
        copies; parameters matched by name)."""
        theirs = dict(model.named_parameters())
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                p.copy_(theirs[n].detach().to("cpu", torch.float64))
        self.optimizer.load_state(optimizer, [theirs[n] for n in self.names], t)


@dataclass(frozen=True)
class ReferenceRun:
    """Float64 loss of each step (computed before its update) and the parameters after the last step."""

    losses: torch.Tensor
    parameters: dict[str, torch.Tensor]


def reference_training(model_name: str, optimizer_name: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       seed: int = 0, init_dtype: torch.dtype = torch.float64) -> ReferenceRun:
    """Train ``model_name`` with ``optimizer_name`` from the initial weights of ``seed``, one step per batch, all in
    float64 with the oracle ops and the written-out optimizer (see ``ReferenceTrainer``)."""
    trainer = ReferenceTrainer(model_name, optimizer_name, seed, init_dtype)
    losses = [trainer.step(x, y) for x, y in batches]
    return ReferenceRun(torch.stack(losses), trainer.parameters())


@dataclass(frozen=True)
class TrainAgreement:
    """An implementation's training run, each step checked against the float64 reference from the same state."""

    losses: torch.Tensor  # float64 copy of the implementation's loss of each step
    reference_losses: torch.Tensor  # float64 loss at the implementation's parameters before each step
    decisions_check: Check  # every ReLU and max-pool decision of every step, against float64's
    losses_check: Check
    gradients_check: Check  # every step, every parameter, against the oracle's gradients
    updates_check: Check  # every step, every parameter, against the written-out optimizer
    check: Check  # all four: the verdict
    first_step_s: float = 0.0  # wall time of the first step call (compilation / graph capture included)
    step: Callable | None = None  # the checked (wrapped) step, ready to be timed on ``batch``
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the first batch, on the device


def update_check(delta: torch.Tensor, expected: torch.Tensor, stored: torch.Tensor, dtype: torch.dtype) -> Check:
    """Compare an optimizer update ``delta`` with the ``expected`` float64 update from the same gradient and state.

    Allowed: UPDATE_ULPS · u · (max|expected| + |stored|) per element, u the unit roundoff of the storage
    ``dtype``: the update is a few rounded operations (whose terms can cancel, hence the tensor's largest update as
    scale) and the new parameter ``stored`` is rounded once. max_rel_err is |error| / (max|expected| + |stored|)."""
    u = torch.finfo(dtype).eps / 2
    diff = (delta - expected).abs()
    scale = expected.abs().max() + stored.abs()
    bad = ~(diff <= UPDATE_ULPS * u * scale)  # NaN fails too
    detail = f"{int(bad.sum())} of {bad.numel()} elements beyond {UPDATE_ULPS} ulps" if bool(bad.any()) else ""
    rel = diff / scale.clamp(min=torch.finfo(torch.float64).tiny)
    return Check(diff.max().item(), rel.max().item(), not detail, detail)


def train_agreement(ops, model_name: str, optimizer_name: str, steps: int = 5, batch: int = 8,
                    dtype: torch.dtype | str = torch.float32, device="cpu", seed: int = 0,
                    wrap: Callable | None = None, layout: str = "nchw",
                    optimizer_options: dict | None = None) -> TrainAgreement:
    """Train ``model_name`` through ``ops`` for ``steps`` steps and check every step against the float64 reference.

    ``dtype`` is a floating torch.dtype or a benchmark dtype name ('tf32': float32 storage, tf32 tolerance; the
    caller enables TF32 math). ``layout`` as in ``TrainProblem``. ``optimizer_options`` picks how torch.optim
    computes the update (capturable=True for CUDA graphs; see ``make_optimizer``). ``wrap(step, model, optimizer)``
    turns the step into what the benchmark
    times (torch.compile, a CUDA-graph replay), so the callable checked is the callable timed; the step must leave
    its gradients in ``.grad``.

    Every step k is checked from the implementation's own state (teacher forcing): the reference loads the
    parameters p_k and the optimizer state, and
      1. every ReLU and max-pool decision of the step's forward pass must agree with float64's within the dtype's
         ``check`` tolerance; the reference then takes the implementation's decisions (``DecidedOracle``), so a
         near-tie that rounding resolves the other way does not reroute a whole gradient path;
      2. the loss at p_k must agree with the oracle's within the dtype's ``check`` tolerance;
      3. the gradient of every parameter must agree with the oracle's within the same tolerance — the one every
         kernel gradient is held to (elementwise, |error| ≤ atol·max(1, max|g|) + rtol·|g|);
      4. the update p_{k+1} − p_k of every parameter must equal the written-out optimizer applied to the
         implementation's own gradient and state, to ``update_check``'s few ulps.
    Why not run the reference freely and compare the parameters after K steps: errors compound. Once the two
    trajectories differ by rounding, a ReLU or max-pool decision near its kink goes the other way, and with Adam a
    unit that wakes up for one image gets a full-size lr step on its whole weight row: 2e-2 relative update errors
    after ten steps of a correct float32 BasicCNN. And why the update is checked on the implementation's gradient
    rather than the oracle's: Adam divides by √v, so where a gradient is near zero its rounding error becomes an
    update of up to ±lr (in a correct float32 BasicCNN step, elementwise errors of 6.5e-3 of the largest update,
    against 3e-5 for SGD); the gradient itself is checked in 3., where its error is measured on its own scale.
    ``check.max_abs_err`` / ``max_rel_err`` are the worst over all steps of the four."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    problem = TrainProblem(model_name, batch, optimizer_name, name, layout)
    storage = problem.storage
    batches = problem.make_batches(steps, seed, device)
    model = problem.build(ops, seed, device)
    optimizer = make_optimizer(optimizer_name, model.parameters(), **(optimizer_options or {}))
    step = make_train_step(model, optimizer)
    if wrap is not None:
        step = wrap(step, model, optimizer)
    reference = ReferenceTrainer(model_name, optimizer_name, seed, storage)
    params = dict(model.named_parameters())

    losses, ref_losses, decision_checks, grad_checks, update_checks = [], [], [], [], []
    for k, (x, y) in enumerate(batches):
        reference.load(model, optimizer, k)
        before = reference.parameters()
        recorder = DecisionRecorder(model.ops)
        model.with_ops(recorder)(x)  # the forward of the step, as is, to read its decisions
        decided = DecidedOracle(recorder.decisions, problem.dtype)
        ref_loss, ref_grads = reference.loss_and_gradients(x, y, decided)
        decision_checks += [c if c.ok else dataclasses.replace(c, detail=f"step {k}, {c.detail}")
                            for c in decided.checks]
        t0 = time.perf_counter()
        loss = step(x, y)
        if k == 0:
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            first_step_s = time.perf_counter() - t0
        losses.append(loss.detach().to("cpu", torch.float64))
        ref_losses.append(ref_loss)
        grads = []
        for pname, ref_grad in zip(reference.names, ref_grads):
            g = params[pname].grad
            if g is None:
                raise RuntimeError(f"train_agreement: the step left no gradient in {pname}.grad; 'wrap' must keep "
                                   f"the step's gradients there")
            grads.append(g.detach().to("cpu", torch.float64))
            c = check(g, ref_grad, problem.dtype)
            grad_checks.append(c if c.ok else dataclasses.replace(c, detail=f"step {k}, grad of {pname}: {c.detail}"))
        reference.optimizer.step(grads)  # the written-out update from the implementation's gradient and state
        for pname, expected in reference.parameters().items():
            stored = params[pname].detach().to("cpu", torch.float64)
            c = update_check(stored - before[pname], expected - before[pname], stored, storage)
            update_checks.append(c if c.ok else dataclasses.replace(c, detail=f"step {k}, update of {pname}: "
                                                                              f"{c.detail}"))
    losses_t, ref_losses_t = torch.stack(losses), torch.stack(ref_losses)
    loss_check = check(losses_t, ref_losses_t, problem.dtype)
    if not loss_check.ok:
        loss_check = dataclasses.replace(loss_check, detail=f"losses {losses_t.tolist()} vs reference "
                                                            f"{ref_losses_t.tolist()}: {loss_check.detail}")
    decisions, grads_check, updates_check = combine(*decision_checks), combine(*grad_checks), combine(*update_checks)
    return TrainAgreement(losses_t, ref_losses_t, decisions, loss_check, grads_check, updates_check,
                          combine(decisions, loss_check, grads_check, updates_check), first_step_s, step, batches[0])
