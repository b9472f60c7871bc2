"""Real networks as suites: the distinct conv and pool layers of torchvision models, read off the models themselves.

A model is built on the meta device (``weights=None``: no weights, no download, no memory) and run once on a meta input
of the requested batch and image size by ``reference.routed.trace`` — the tracer the routed training step checks itself
with — which records every ``F.conv2d``, ``F.max_pool2d`` and ``F.avg_pool2d`` call, the calls of
``nn.Conv2d``/``nn.MaxPool2d``/``nn.AvgPool2d`` modules and the functional calls inside ``forward`` alike (Inception's
pools are functional), with the module it was made in. Each call is described by ``reference``'s own argument checks
(``conv2d_problem``, …), so a layer is exactly the problem the bench times. Identical calls are one layer with a count:
ResNet-18's 3×3 64→64 conv at 56×56 occurs 4 times, and its whole-network time is 4 × its median.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch

from reference import ConvProblem, PoolProblem
from reference.routed import on_meta, trace

from ..runs.schema import models_text

#: the models of the ``zoo`` suite: together they hold every layer kind the suites care about — dense 3×3 and 1×1
#: convs, a 7×7 stride-2 stem and a padded 3×3 max pool (resnet18), depthwise 3×3 and 5×5 with squeeze-excite 1×1s
#: (mobilenet_v3_small), 7×7 depthwise and a 4×4 stride-4 patchify stem (convnext_tiny), depthwise 3×3 between
#: channel splits (shufflenet_v2_x0_5), grouped 3×3 (regnet_x_400mf), ceil-mode max pools and 1×1/3×3 fire modules
#: (squeezenet1_1), dilated 3×3 convs (fcn_resnet50) — in 143 distinct layers at 64×64
ZOO = ("resnet18", "mobilenet_v3_small", "convnext_tiny", "shufflenet_v2_x0_5", "regnet_x_400mf", "squeezenet1_1",
       "fcn_resnet50")
#: image size and batch of the zoo suite on each device (the CPU's keeps the suite within the quick budget)
ZOO_SHAPE = {"cpu": (64, 2), "cuda": (224, 32)}


@dataclass(frozen=True)
class Layer:
    """One distinct conv or pool call of one or more models: its problem, how often each model makes it and the
    first module each model makes it in."""

    problem: ConvProblem | PoolProblem
    counts: dict = field(default_factory=dict, hash=False, compare=False)  # model → occurrences
    where: dict = field(default_factory=dict, hash=False, compare=False)  # model → first module path

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def models_text(self) -> str:
        """``resnet18:4;convnext_tiny:1`` — the results row's ``models`` column."""
        return models_text(self.counts)


def model_names() -> list[str]:
    """Every torchvision model whose forward is an image → tensor: classification and semantic segmentation."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm) + tvm.list_models(module=tvm.segmentation))


def check_models(names: list[str]) -> list[str]:
    """``names`` if all are torchvision models of ``model_names()``; else ValueError naming the unknown ones and
    the choices."""
    known = model_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--model: unknown torchvision model(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(known)}")
    if not names:
        raise ValueError("--model: name at least one torchvision model")
    return names


def _build(name: str) -> torch.nn.Module:
    import torchvision.models as tvm

    kwargs = {"weights": None}
    if name in tvm.list_models(module=tvm.segmentation):
        kwargs.update(weights_backbone=None, aux_loss=False)
    with warnings.catch_warnings():  # e.g. googlenet's "init_weights will change" FutureWarning: not the user's run
        warnings.simplefilter("ignore")
        return on_meta(lambda: tvm.get_model(name, **kwargs))


@functools.lru_cache(maxsize=64)
def model_calls(name: str, image_size: int = 224, batch: int = 1) -> tuple[tuple[ConvProblem | PoolProblem, str], ...]:
    """Every conv/pool call of one inference forward of ``name`` (eval mode: no aux heads, no dropout) on a meta
    batch of ``batch`` images of ``image_size``², in order, with the module path it was made in
    (``reference.routed.trace``). Remembered: a run's selection and its env.json ask for the same models."""
    return trace(_build(name).eval(), (batch, 3, image_size, image_size)).calls


def model_layers(names: list[str], image_size: int = 224, batch: int = 1, dtype: str = "float32",
                 layout: str = "nchw") -> list[Layer]:
    """The distinct conv and pool layers of the models ``names``, in order of first occurrence, each with its
    per-model counts; problems in ``dtype`` and ``layout``."""
    layers: dict = {}
    for name in check_models(list(names)):
        for problem, where in model_calls(name, image_size, batch):
            p = problem.replace(dtype=dtype, layout=layout)
            layer = layers.setdefault(p, Layer(p))
            layer.counts[name] = layer.counts.get(name, 0) + 1
            layer.where.setdefault(name, where)
    return list(layers.values())
