"""A torchvision model whose every conv and pool layer computes through an ``ops`` object.

``routed(model, ops)`` swaps each ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.AvgPool2d`` of ``model`` for a module that
calls ``ops.conv2d`` / ``ops.max_pool2d`` / ``ops.avg_pool2d`` with the layer's own arguments and the layer's own
Parameter objects — so an optimizer built before or after routing, and every state dict, is unchanged. ``ops`` is
found by duck typing (``reference`` never imports ``kernels``): a kernels implementation, ``torch.nn.functional`` or
``reference.oracle``. Everything else in the model (BatchNorm, activations, adaptive pools, linears) stays on torch:
those are not what convbench measures, and they are the same for every implementation.

Routing is all or nothing. A forward that makes a conv/pool call outside those modules (Inception v3's functional
``F.avg_pool2d``, a subclass of ``nn.Conv2d`` with its own ``forward``) would leave that call on torch, and the
timing would silently mix implementations; ``trace`` runs the model once on meta tensors (no memory, no compute)
and ``routed`` refuses such a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from .args import avg_pool2d_problem, conv2d_problem, max_pool2d_problem
from .problems import ConvProblem, PoolProblem

_OPS = ("conv2d", "max_pool2d", "avg_pool2d")
#: the torch functions a conv/pool call can reach the dispatcher through, per op (F.max_pool2d is a Python wrapper
#: over several of them; a mode sees whichever the caller named)
_FUNCS = {
    "conv2d": (F.conv2d, torch.conv2d),
    "max_pool2d": (F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices, F._max_pool2d),
    "avg_pool2d": (F.avg_pool2d, torch._C._nn.avg_pool2d),
}
_OP_OF = {f: op for op, funcs in _FUNCS.items() for f in funcs}
_CHECKS = {"conv2d": conv2d_problem, "max_pool2d": max_pool2d_problem, "avg_pool2d": avg_pool2d_problem}
#: the input a model is traced with when the caller gives none (meta tensors: the size costs nothing)
DEFAULT_INPUT = (2, 3, 224, 224)


def _check_ops(ops) -> None:
    missing = [op for op in _OPS if not callable(getattr(ops, op, None))]
    if missing:
        raise TypeError(f"routed: 'ops' must provide {', '.join(_OPS)} (a kernels implementation, "
                        f"torch.nn.functional or reference.oracle); {type(ops).__name__} lacks {', '.join(missing)}")


# ---- the routed layers ---------------------------------------------------------------------------------------------
class RoutedConv2d(nn.Module):
    """``nn.Conv2d``'s forward with ``ops.conv2d``; holds the original layer's ``weight`` and ``bias`` Parameters."""

    def __init__(self, conv: nn.Conv2d, ops) -> None:
        super().__init__()
        self.ops = ops
        self.weight, self.bias = conv.weight, conv.bias  # the same Parameter objects (bias may be None)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.padding_mode = conv.padding_mode
        self._explicit_padding = conv._reversed_padding_repeated_twice  # F.pad's (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as nn.Conv2d does: pad by hand (reflect, replicate, circular), conv unpadded
            x = F.pad(x, self._explicit_padding, mode=self.padding_mode)
            return self.ops.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return self.ops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        k = tuple(self.weight.shape)
        return (f"{k[1] * self.groups}, {k[0]}, kernel_size={k[2:]}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, ops={_name(self.ops)}")


class RoutedMaxPool2d(nn.Module):
    """``nn.MaxPool2d``'s forward with ``ops.max_pool2d``."""

    def __init__(self, pool: nn.MaxPool2d, ops) -> None:
        super().__init__()
        self.ops = ops
        self.args = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, pool.return_indices)

    def forward(self, x: torch.Tensor):
        return self.ops.max_pool2d(x, *self.args)

    def extra_repr(self) -> str:
        return f"kernel_size, stride, padding, dilation, ceil_mode, return_indices={self.args}, ops={_name(self.ops)}"


class RoutedAvgPool2d(nn.Module):
    """``nn.AvgPool2d``'s forward with ``ops.avg_pool2d``."""

    def __init__(self, pool: nn.AvgPool2d, ops) -> None:
        super().__init__()
        self.ops = ops
        self.args = (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
                     pool.divisor_override)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.avg_pool2d(x, *self.args)

    def extra_repr(self) -> str:
        return (f"kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override={self.args}, "
                f"ops={_name(self.ops)}")


ROUTED = (RoutedConv2d, RoutedMaxPool2d, RoutedAvgPool2d)
#: exact types only: a subclass may override forward, and routing it by the base class's arguments would change it
_REPLACE = {nn.Conv2d: RoutedConv2d, nn.MaxPool2d: RoutedMaxPool2d, nn.AvgPool2d: RoutedAvgPool2d}


def _name(ops) -> str:
    return getattr(ops, "name", None) or getattr(ops, "__name__", None) or type(ops).__name__


# ---- tracing a forward on meta tensors -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Trace:
    """What one forward of a model makes, read on meta tensors: every conv/pool call in order with the module path
    it was made in (``calls``), the ones made outside a routed layer (``unrouted``), every linear as
    (rows, in features, out features, bias), the elements of every tensor produced (views and in-place results
    excluded: they move no new data), and the output's shape."""

    calls: tuple[tuple[ConvProblem | PoolProblem, str], ...]
    unrouted: tuple[tuple[ConvProblem | PoolProblem, str], ...]
    linears: tuple[tuple[int, int, int, bool], ...]
    activation_elements: int
    output_shape: tuple[int, ...] | None  # None when the forward returns no single tensor (e.g. aux-head tuples)


class _ThroughF:
    """Ops that call torch.nn.functional and say, while doing so, that the call came through a routed layer."""

    def __init__(self) -> None:
        self.inside = False

    def _call(self, op: str, *args):
        self.inside = True
        try:
            return getattr(F, op)(*args)
        finally:
            self.inside = False

    def conv2d(self, *args):
        return self._call("conv2d", *args)

    def max_pool2d(self, *args):
        return self._call("max_pool2d", *args)

    def avg_pool2d(self, *args):
        return self._call("avg_pool2d", *args)


class _Recorder(TorchFunctionMode):
    def __init__(self, where: list[str], through: _ThroughF) -> None:
        super().__init__()
        self.where, self.through = where, through
        self.calls, self.unrouted, self.linears, self.elements = [], [], [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _OP_OF.get(func)
        if op is not None:
            call = (_CHECKS[op](*args, **kwargs), self.where[-1] if self.where else "")
            self.calls.append(call)
            if not self.through.inside:
                self.unrouted.append(call)
        elif func is F.linear:
            x, w = args[0], args[1]
            bias = (args[2] if len(args) > 2 else kwargs.get("bias")) is not None
            self.linears.append((x.numel() // w.shape[1], w.shape[1], w.shape[0], bias))
        out = func(*args, **kwargs)
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t._base is None and not any(t is a for a in inputs):
                self.elements += t.numel()
        return out


@contextlib.contextmanager
def _module_paths(model: nn.Module) -> Iterator[list[str]]:
    """A stack holding the path of the module whose forward is running (global hooks, removed on exit)."""
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    pre = nn.modules.module.register_module_forward_pre_hook(
        lambda m, _: stack.append(names.get(m, type(m).__name__)))

    def pop(module, inputs, output) -> None:  # returns None: any other value would replace the module's output
        stack.pop()

    post = nn.modules.module.register_module_forward_hook(pop)
    try:
        yield stack
    finally:
        pre.remove()
        post.remove()


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer a module registers inside the block is moved to the meta device as it registers."""
    register, buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        return register(self, name, param)

    def buffer_on_meta(self, name, tensor, persistent=True):
        return buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register, buffer


def on_meta(construct: Callable[[], nn.Module]) -> nn.Module:
    """``construct()`` with every parameter and buffer on the meta device — no memory, no initialisation — to trace
    it: under ``torch.device("meta")``, or, for builders that compute with real tensors and so cannot run there
    (RegNet's widths), on the CPU with each parameter and buffer moved to meta as it registers."""
    try:
        with torch.device("meta"):
            return construct()
    except NotImplementedError:
        with _parameters_on_meta():
            return construct()


def trace(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT) -> Trace:
    """One forward of ``model`` (in its current train/eval mode) on a meta input of ``input_shape``, its parameters
    and buffers swapped for meta tensors of the same shape: nothing is computed or allocated, and the model's own
    state (weights, BatchNorm running statistics, its layers' ``ops``) is left as it was. Routed layers call
    torch.nn.functional for the trace, so any ``ops`` traces alike. Raises what the forward raises (e.g. an image
    too small for the model)."""
    meta = {n: torch.empty_like(t, device="meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
    through = _ThroughF()
    layers = [m for m in model.modules() if isinstance(m, ROUTED)]
    saved = [m.ops for m in layers]
    try:
        for m in layers:
            m.ops = through
        with torch.no_grad(), _module_paths(model) as where, _Recorder(where, through) as rec:
            out = functional_call(model, meta, (torch.empty(input_shape, device="meta"),))
    finally:
        for m, ops in zip(layers, saved):
            m.ops = ops
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    return Trace(tuple(rec.calls), tuple(rec.unrouted), tuple(rec.linears), rec.elements, shape)


# ---- routing -------------------------------------------------------------------------------------------------------
def route(model: nn.Module, ops) -> nn.Module:
    """``model`` itself with its ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.AvgPool2d`` layers replaced in place by
    ``RoutedConv2d`` / ``RoutedMaxPool2d`` / ``RoutedAvgPool2d`` computing through ``ops`` (same Parameters, same
    state-dict keys); layers routed before are rerouted to ``ops``. No check that the routing is complete: use
    ``routed``."""
    _check_ops(ops)
    if isinstance(model, ROUTED) or type(model) in _REPLACE:
        raise TypeError("routed: 'model' must contain the conv/pool layers, not be one (route its parent)")
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            cls = _REPLACE.get(type(child))
            if cls is not None:
                setattr(parent, child_name, cls(child, ops))
            elif isinstance(child, ROUTED):
                child.ops = ops
    return model


def refuse_unrouted(traced: Trace, name: str) -> None:
    """ValueError naming model ``name`` and its first conv/pool call made outside a routed layer, if any."""
    if traced.unrouted:
        problem, where = traced.unrouted[0]
        raise ValueError(f"routed: {name} makes {len(traced.unrouted)} conv/pool call(s) outside "
                         f"nn.Conv2d/nn.MaxPool2d/nn.AvgPool2d layers, which routing cannot reach — the first is "
                         f"{problem.op if isinstance(problem, PoolProblem) else 'conv2d'} {_describe(problem)} in "
                         f"{where or 'the top-level forward'}; refusing rather than leave them on torch")


def routed(model: nn.Module, ops, input_shape: tuple[int, ...] = DEFAULT_INPUT, name: str | None = None
           ) -> nn.Module:
    """``route(model, ops)``, then one forward traced on meta tensors of ``input_shape`` (``trace``): ValueError,
    naming the model (``name``, else its class) and the first such call, if the forward makes any conv/pool call
    outside the routed layers — a routed model computes every conv and pool in ``ops`` or is refused."""
    route(model, ops)
    refuse_unrouted(trace(model, input_shape), name or type(model).__name__)
    return model


def _describe(p: ConvProblem | PoolProblem) -> str:
    if isinstance(p, ConvProblem):
        return (f"(N{p.N} C{p.C} H{p.H} W{p.W}, K{p.K} R{p.R} S{p.S}, stride {p.stride}, padding {p.padding}, "
                f"dilation {p.dilation}, groups {p.groups})")
    return f"(N{p.N} C{p.C} H{p.H} W{p.W}, kernel {p.kernel}, stride {p.stride}, padding {p.padding})"


def routed_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The routed layers of ``model`` with their paths, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ROUTED)]
