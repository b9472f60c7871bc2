"""compile: the torch.nn.functional op through ``torch.compile`` (TorchInductor), one compiled callable per problem.

Registered once per compile mode, each a first-class implementation with its own rows: ``compile`` (default mode),
``compile-max-autotune`` and, on a GPU, ``compile-max-autotune-no-cudagraphs``. Only ``compile`` is in a run by
default; ``run --compile-mode …`` or ``--impl compile-max-autotune`` adds the others.

Each problem (shape, dtype, layout, arguments, device, whether gradients are needed) gets its own compiled function
with its own code object: Dynamo keeps its compiled-graph cache on the code object, so sharing one function across
hundreds of shapes would pile up guards to evaluate on every call and, past the recompile limit, silently fall back
to eager. Ops compile with ``fullgraph=True``: a graph break fails the call instead of running part of it eagerly.

What ran is told from inside the call (``kernels.note``): the code Inductor generated for the call's graphs is
read as it is written (``GraphLowering.save_output_code``), so a row's backend says whether the conv was a
generated kernel (Triton/C++ template) or handed to a library (``extern_kernels.convolution`` → oneDNN/cuDNN), and
its facts carry Dynamo's graph, graph-break and recompile counts for the call.

With CUDA graphs (``compile-max-autotune`` on a GPU) Inductor replays a captured graph that reads its inputs from
static buffers, and copies every input that is not known to be static into them on each replay: x, w and b of a
conv, a copy the op never makes. The tensors of a problem's first call are therefore marked static
(``torch._dynamo.mark_static_address``, unguarded) before that call compiles, so the graph reads them in place —
the bench times one set of tensors, call after call; another tensor of the same problem re-records the graph
rather than recompiling. The row's facts say so (``compile.static_inputs``).
"""

from __future__ import annotations

import functools
import itertools
import re
import shutil
import threading
import types
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference import ConvProblem, PoolProblem

from . import register
from ._provenance import active, note
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


# ---- what Inductor generated -----------------------------------------------------------------------------------
_GENERATED = re.compile(r"^(\w+) = async_compile\.(triton|cpp_pybinding|cpp)\(", re.M)
_EXTERN = re.compile(r"\bextern_kernels\.(\w+)\(")
_ATEN_CALL = re.compile(r"\btorch\.ops\.(\w+)\.(\w+)\.\w+\(")
_CONV_OPS = {"convolution", "convolution_backward", "_convolution_pointwise", "mkldnn_convolution",
             "cudnn_convolution", "_convolution"}


def summarize_code(code: str) -> dict:
    """Kernels in one Inductor output module: ``generated`` (name → 'triton', 'triton-template', 'cpp' or
    'cpp-template') and ``extern`` (library calls: extern_kernels.* and torch.ops.* fallbacks, in order)."""
    generated = {}
    for name, kind in _GENERATED.findall(code):
        if kind == "triton":
            generated[name] = "triton-template" if name.startswith("triton_tem_") else "triton"
        else:
            generated[name] = "cpp"
    if "CppMicroGemm" in code or "cpp_template" in code:  # Inductor's C++ GEMM template (max-autotune on CPU)
        generated = {n: ("cpp-template" if k == "cpp" else k) for n, k in generated.items()}
    extern = []
    for line in code.splitlines():
        text = line.split("#", 1)[0]
        if "assert_" in text or "import" in text:
            continue
        extern += [f"extern_kernels.{m}" for m in _EXTERN.findall(text)]
        extern += [f"{ns}.{op}" for ns, op in _ATEN_CALL.findall(text) if ns != "inductor"]
    return {"generated": generated, "extern": extern}


def _on_output_code(code: str) -> None:
    if active():
        note(inductor_code=[summarize_code(code)])


_hook_lock = threading.Lock()
_hooked = False


def _install_code_hook() -> None:
    """Route every module Inductor writes through ``_on_output_code`` (chaining whatever hook was there)."""
    global _hooked
    with _hook_lock:
        if _hooked:
            return
        try:
            from torch._inductor.graph import GraphLowering
        except ImportError:
            return
        previous = getattr(GraphLowering, "save_output_code", None)

        def hook(code: str) -> None:
            _on_output_code(code)
            if previous is not None:
                previous(code)

        GraphLowering.save_output_code = staticmethod(hook)
        _hooked = True


def _dynamo_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


#: torch.compile modes whose Inductor graphs run as CUDA graph replays on a GPU
CUDAGRAPH_MODES = ("max-autotune", "reduce-overhead")


def uses_cudagraphs(mode: str | None, device) -> bool:
    """Whether torch.compile in ``mode`` replays CUDA graphs for calls on ``device``."""
    return mode in CUDAGRAPH_MODES and device_type(device) == "cuda"


def mark_static_inputs(tensors) -> int:
    """Mark ``tensors`` as static inputs (``torch._dynamo.mark_static_address(t, guard=False)``, torch ≥ 2.1):
    a CUDA graph reads them where they are instead of copying them into its own buffers on every replay; another
    tensor in their place re-records the graph (no recompile: the address is not guarded). Returns how many were
    marked (0 where this torch has no such call)."""
    try:
        from torch._dynamo import mark_static_address
    except ImportError:
        return 0
    for t in tensors:
        mark_static_address(t, guard=False)
    return len(tensors)


class _Counted:
    """Wraps a compiled callable: when a caller records (the bench's validation call), the call notes how many
    graphs Dynamo compiled and how many graph breaks it hit during it; timed calls pass straight through.
    ``static_inputs``: how many inputs of its first call were marked static for CUDA graphs (a fact of the row)."""

    def __init__(self, fn, mode: str | None, label: str, static_inputs: int = 0) -> None:
        self.fn, self.mode, self.label, self.static_inputs = fn, mode, label, static_inputs

    def __call__(self, *args):
        if not active():
            return self.fn(*args)
        graphs0, breaks0 = _dynamo_counts()
        out = self.fn(*args)
        graphs, breaks = _dynamo_counts()
        facts = {"mode": self.mode or "default"}
        if self.static_inputs:
            facts["static_inputs"] = (f"{self.static_inputs} input(s) of the first call marked static "
                                      f"(mark_static_address): CUDA graph replays read them in place, no copy")
        note(compile=facts)
        if graphs > graphs0 or breaks > breaks0:  # a steady call compiles nothing and notes nothing more
            note(dynamo=[{"what": self.label, "fullgraph": True, "graphs": graphs - graphs0,
                          "graph_breaks": breaks - breaks0}])
        return out


def inductor_backend(facts: dict, conv_library: str | None) -> str | None:
    """The row's backend from a call's recorded facts: 'inductor/extern:<library>' when the conv went to a
    library, 'inductor/<kind>' for generated kernels (triton, triton-template, cpp, cpp-template), joined with '+';
    other library fallbacks are named ('extern:aten.max_pool2d_with_indices_backward')."""
    parts = []
    for module in facts.get("inductor_code", []):
        for call in module["extern"]:
            op = call.rsplit(".", 1)[-1]
            name = op if call.startswith("extern_kernels.") else call  # extern:mm, extern:aten.sort
            parts.append(f"extern:{conv_library}" if op in _CONV_OPS and conv_library else f"extern:{name}")
        parts += sorted(set(module["generated"].values()))
    return "inductor/" + "+".join(dict.fromkeys(parts)) if parts else None


@register
class Compiled(Implementation):
    name = "compile"
    summary = "torch.compile (Inductor) of the torch.nn.functional op, fullgraph, compiled once per problem"
    jit = True
    #: torch.compile mode: None (default), "max-autotune", "max-autotune-no-cudagraphs"
    mode: ClassVar[str | None] = None

    def __init__(self) -> None:
        self._cache: dict[tuple, object] = {}
        _install_code_hook()

    def unavailable_reason(self, device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        if device_type(device) == "cpu" and not (shutil.which("g++") or shutil.which("c++")
                                                  or shutil.which("clang++")):
            return "TorchInductor's CPU backend needs a C++ compiler (g++/clang++) and none is on PATH"
        return None

    def backend(self, op: str, device, problem=None) -> str:
        """The label of a row that never ran; rows that ran carry what the call's generated code shows."""
        return "inductor"

    def ran(self, op: str, device, problem, record) -> str:
        """'inductor/extern:onednn', 'inductor/triton-template+triton', 'inductor/cpp', … from the code Inductor
        wrote for the recorded calls; the conv library named the way the cudnn rows name it."""
        from .cudnn import conv_backend

        convs = getattr(problem, "convs", None)  # a training step: its layers' problems
        conv = problem if isinstance(problem, ConvProblem) else next(iter(convs() if convs else ()), None)
        library = conv_backend(conv, device) if conv is not None else None
        return inductor_backend(record.facts, library) or self.backend(op, device, problem)

    def steady_state_problem(self, record) -> str | None:
        compiled = sum(d["graphs"] for d in record.facts.get("dynamo", []))
        if compiled:
            return f"torch.compile recompiled during timing ({compiled} new graph(s)): the samples include compilation"
        return None

    def compiled(self, factory, problem, *tensors: torch.Tensor | None):
        """The compiled callable of ``problem``, compiling lazily on its first call — a call on ``tensors``, which
        are marked static first where the mode replays CUDA graphs (``mark_static_inputs``)."""
        live = [t for t in tensors if t is not None]
        key = (factory.__name__, problem, live[0].device, tuple(t.requires_grad for t in live),
               torch.is_grad_enabled())
        fn = self._cache.get(key)
        if fn is None:
            kwargs = problem.kwargs()
            static = mark_static_inputs(live) if uses_cudagraphs(self.mode, live[0].device) else 0
            fn = _Counted(torch.compile(fresh_function(factory(kwargs)), mode=self.mode, dynamic=False,
                                        fullgraph=True), self.mode, factory.__name__, static)
            self._cache[key] = fn
        return fn

    def train_ops(self):
        """The model is plain torch.nn.functional, so Inductor sees every op of the forward."""
        return F

    def wrap_train_step(self, step, model, optimizer, device):
        """The step compiled the way PyTorch documents for training: forward + loss as one fullgraph graph (its
        backward AOT-compiled and run by ``loss.backward()``), and ``optimizer.step`` compiled on its own —
        torch.optim breaks the graph around the update on purpose (the no_grad annotation), which the row's
        facts count. Same work as ``step``: zero_grad(set_to_none), forward, loss, backward, one update."""
        loss_fn = nn.CrossEntropyLoss()

        def forward_loss(x, y):
            return loss_fn(model(x), y)

        def update():
            optimizer.step()

        forward = _Counted(torch.compile(fresh_function(forward_loss), mode=self.mode, fullgraph=True),
                           self.mode, "forward+loss")
        compiled_update = torch.compile(fresh_function(update), mode=self.mode)

        def compiled_step(x, y):
            optimizer.zero_grad(set_to_none=True)
            loss = forward(x, y)
            loss.backward()
            if active():
                graphs0, breaks0 = _dynamo_counts()
                compiled_update()
                graphs, breaks = _dynamo_counts()
                if graphs > graphs0 or breaks > breaks0:
                    note(dynamo=[{"what": "optimizer.step", "fullgraph": False, "graphs": graphs - graphs0,
                                  "graph_breaks": breaks - breaks0,
                                  "expected": "torch.optim breaks the graph around its no_grad update"}])
            else:
                compiled_update()
            return loss.detach()

        return compiled_step

    # the timed calls: the compiled callable itself (its guards included: they are compile's real per-call cost)
    def _bind_conv2d(self, x, weight, bias, p: ConvProblem):
        return functools.partial(self.compiled(_conv_fn, p, x, weight, bias), x, weight, bias)

    def _bind_max_pool2d(self, x, p: PoolProblem):
        return functools.partial(self.compiled(_max_pool_fn, p, x), x)

    def _bind_avg_pool2d(self, x, p: PoolProblem):
        return functools.partial(self.compiled(_avg_pool_fn, p, x), x)

    def _conv2d(self, x, weight, bias, p: ConvProblem):
        return self.compiled(_conv_fn, p, x, weight, bias)(x, weight, bias)

    def _max_pool2d(self, x, p: PoolProblem):
        out = self.compiled(_max_pool_fn, p, x)(x)
        return out if p.return_indices else (out, None)

    def _avg_pool2d(self, x, p: PoolProblem):
        return self.compiled(_avg_pool_fn, p, x)(x)


@register
class CompiledMaxAutotune(Compiled):
    name = "compile-max-autotune"
    summary = ("torch.compile mode='max-autotune': Inductor benchmarks its Triton/C++ templates (conv, GEMM) "
               "against the library and keeps the fastest; CUDA graphs on a GPU")
    mode = "max-autotune"
    default = False


@register
class CompiledMaxAutotuneNoCudagraphs(Compiled):
    name = "compile-max-autotune-no-cudagraphs"
    summary = "torch.compile mode='max-autotune-no-cudagraphs': template autotuning without CUDA graphs (GPU)"
    mode = "max-autotune-no-cudagraphs"
    default = False

    def unavailable_reason(self, device) -> str | None:
        if device_type(device) == "cpu":
            return "on the CPU there are no CUDA graphs to leave out: this is compile-max-autotune there"
        return super().unavailable_reason(device)
