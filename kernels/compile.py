"""compile: the torch.nn.functional op through ``torch.compile`` (TorchInductor), one compiled callable per problem.

Each problem (shape, dtype, layout, arguments, device, whether gradients are needed) gets its own compiled function
with its own code object: Dynamo keeps its compiled-graph cache on the code object, so sharing one function across
hundreds of shapes would pile up guards to evaluate on every call and, past the recompile limit, silently fall back
to eager. The first call of each problem pays the compilation (backward compiles on the first backward); the bench
reports that as ``compile_s`` and never times it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import types

import torch
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from .base import Implementation, device_type

_ids = itertools.count()


def fresh_function(fn):
    """A copy of ``fn`` with a code object of its own (and so a Dynamo cache of its own)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_ids)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _conv_fn(kwargs):
    def conv(x, w, b):
        return F.conv2d(x, w, b, **kwargs)
    return conv


def _max_pool_fn(kwargs):
    def max_pool(x):
        return F.max_pool2d(x, **kwargs)
    return max_pool


def _avg_pool_fn(kwargs):
    def avg_pool(x):
        return F.avg_pool2d(x, **kwargs)
    return avg_pool


@register
class Compiled(Implementation):
    name = "compile"
    summary = "torch.compile (Inductor) of the torch.nn.functional op, compiled once per problem"
    jit = True

    def __init__(self) -> None:
        #: torch.compile mode: None (default), "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"
        self.mode: str | None = os.environ.get("CONVBENCH_COMPILE_MODE") or None
        self._cache: dict[tuple, object] = {}

    def unavailable_reason(self, device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        if device_type(device) == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
                                                  or shutil.which("clang++")):
            return "TorchInductor's CPU backend needs a C++ compiler (g++/clang++) and none is on PATH"
        return None

    def backend(self, op: str, device, problem=None) -> str:
        return f"inductor{'-' + self.mode if self.mode else ''}"

    def compiled(self, factory, problem, *tensors: torch.Tensor | None):
        """The compiled callable of ``problem``, compiling lazily on its first call."""
        live = [t for t in tensors if t is not None]
        key = (factory.__name__, problem, live[0].device, tuple(t.requires_grad for t in live),
               torch.is_grad_enabled(), self.mode)
        fn = self._cache.get(key)
        if fn is None:
            kwargs = problem.kwargs()
            fn = torch.compile(fresh_function(factory(kwargs)), mode=self.mode, dynamic=False)
            self._cache[key] = fn
        return fn

    def train_ops(self):
        """The whole step is compiled, so the model is plain torch.nn.functional and Inductor sees every op."""
        return F

    def wrap_train_step(self, step, model, optimizer, device):
        """torch.compile of the whole step: forward and loss (with their AOT-compiled backward) and the optimizer
        update; ``loss.backward()`` splits the graph there."""
        return torch.compile(fresh_function(step), mode=self.mode)

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        return self.compiled(_conv_fn, p, x, weight, bias)(x, weight, bias)

    def _max_pool2d(self, x, p: PoolProblem):
        out = self.compiled(_max_pool_fn, p, x)(x)
        return out if p.return_indices else (out, None)

    def _avg_pool2d(self, x, p: PoolProblem):
        return self.compiled(_avg_pool_fn, p, x)(x)
