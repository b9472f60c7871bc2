"""The CNN models of the training-step benchmark: their architectures, initial weights and ``build_model``.

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
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 28, 28)


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
