"""Real networks as suites: the distinct conv and pool layers of torchvision models, read off the models themselves.

A model is built on the meta device (``weights=None``: no weights, no download, no memory) and run once on a meta
input of the requested batch and image size under a ``TorchFunctionMode`` that records every ``F.conv2d``,
``F.max_pool2d`` and ``F.avg_pool2d`` call — the calls of ``nn.Conv2d``/``nn.MaxPool2d``/``nn.AvgPool2d`` modules and
the functional calls inside ``forward`` alike (Inception's pools are functional) — with the module it was made in.
Each call is described by ``reference``'s own argument checks (``conv2d_problem``, …), so a layer is exactly the
problem the bench times. Identical calls are one layer with a count: ResNet-18's 3×3 64→64 conv at 56×56 occurs 4
times, and its whole-network time is 4 × its median.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from reference import ConvProblem, PoolProblem, avg_pool2d_problem, conv2d_problem, max_pool2d_problem

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
        return ";".join(f"{m}:{n}" for m, n in self.counts.items())


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


class _Recorder(TorchFunctionMode):
    """Records the conv and pool calls made inside it, with the module path each was made in."""

    def __init__(self, where: list[str]) -> None:
        super().__init__()
        self.where = where
        self.calls: list[tuple[ConvProblem | PoolProblem, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        problem = None
        if func in (F.conv2d, torch.conv2d):
            problem = conv2d_problem(*args, **kwargs)
        elif func in (F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices, torch.nn.functional._max_pool2d):
            problem = max_pool2d_problem(*args, **kwargs)
        elif func in (F.avg_pool2d, torch._C._nn.avg_pool2d):
            problem = avg_pool2d_problem(*args, **kwargs)
        if problem is not None:
            self.calls.append((problem, self.where[-1] if self.where else ""))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter and buffer a module registers is moved to the meta device as it is registered (for builders
    that compute with real tensors, e.g. RegNet's widths, and so cannot run under ``torch.device("meta")``)."""
    register = torch.nn.Module.register_parameter
    buffer = torch.nn.Module.register_buffer

    def on_meta(self, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        return register(self, name, param)

    def buffer_on_meta(self, name, tensor, persistent=True):
        return buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    torch.nn.Module.register_parameter, torch.nn.Module.register_buffer = on_meta, buffer_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter, torch.nn.Module.register_buffer = register, buffer


def _build(name: str) -> torch.nn.Module:
    import torchvision.models as tvm

    kwargs = {"weights": None}
    if name in tvm.list_models(module=tvm.segmentation):
        kwargs.update(weights_backbone=None, aux_loss=False)
    with warnings.catch_warnings():  # e.g. googlenet's "init_weights will change" FutureWarning: not the user's run
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return tvm.get_model(name, **kwargs)
        except NotImplementedError:  # the builder computes with tensors: build on the CPU, keep nothing there
            with _parameters_on_meta():
                return tvm.get_model(name, **kwargs)


def model_calls(name: str, image_size: int = 224, batch: int = 1) -> list[tuple[ConvProblem | PoolProblem, str]]:
    """Every conv/pool call of one inference forward of ``name`` (eval mode: no aux heads, no dropout) on a meta
    batch of ``batch`` images of ``image_size``², in order, with the module path it was made in."""
    model = _build(name).eval()
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    pre = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, _: stack.append(names.get(m, type(m).__name__)))
    def leave(_module, _inputs, _output) -> None:  # returns None: a hook's result would replace the output
        stack.pop()

    post = torch.nn.modules.module.register_module_forward_hook(leave)
    try:
        with torch.no_grad(), _Recorder(stack) as rec:
            model(torch.empty(batch, 3, image_size, image_size, device="meta"))
    finally:
        pre.remove()
        post.remove()
    return rec.calls


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
