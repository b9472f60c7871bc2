"""What every implementation is: a registered object with conv2d / max_pool2d / avg_pool2d.

The public methods take exactly the arguments of ``torch.nn.functional``, check them with ``reference.args`` (so every
implementation refuses the same calls, with the same messages, before doing any work), turn 3-D input into a batch of
one, and hand a 4-D tensor plus the problem description to the ``_conv2d`` / ``_max_pool2d`` / ``_avg_pool2d`` hooks
that each implementation file provides. Implementations contain no timing code: ``bench`` owns that.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import torch

from reference import ConvProblem, PoolProblem, avg_pool2d_problem, conv2d_problem, max_pool2d_problem

OPS = ("conv2d", "max_pool2d", "avg_pool2d")


def device_type(device) -> str:
    """'cpu' / 'cuda' from a string, torch.device or tensor."""
    if isinstance(device, torch.Tensor):
        return device.device.type
    return torch.device(device).type


_CHECKED: dict[tuple, ConvProblem] = {}


def _plain(v):
    """``v`` when it is None, an int, a str or a tuple of ints, ``(bool, v)`` for a bool (so equal keys mean equal
    arguments: a bool hashes like an int, and where an int is refused so must the bool be); else TypeError, and the
    call is checked in full."""
    if v is None or type(v) is int or type(v) is str or (type(v) is tuple and all(type(e) is int for e in v)):
        return v
    if type(v) is bool:
        return (bool, v)
    raise TypeError


def _tensor_key(t) -> tuple:
    return (type(t), t.shape, t.stride(), t.dtype, t.device)


def _remember(key: tuple, check, args: tuple):
    p = _CHECKED.get(key)
    if p is None:
        p = check(*args)
        if len(_CHECKED) >= 4096:
            _CHECKED.clear()
        _CHECKED[key] = p
    return p


def checked_conv2d(input, weight, bias, stride, padding, dilation, groups) -> ConvProblem:
    """``reference.conv2d_problem`` remembered per argument signature (types, shapes, strides, dtypes, devices and
    the plain int/str/tuple arguments): the checks cost ~20 µs of Python per call, more than a small conv's GPU
    kernel. Only calls that passed the full check are remembered; anything unusual is checked in full again."""
    args = (input, weight, bias, stride, padding, dilation, groups)
    try:
        key = ("conv2d", _tensor_key(input), _tensor_key(weight), None if bias is None else _tensor_key(bias),
               _plain(stride), _plain(padding), _plain(dilation), _plain(groups))
    except (AttributeError, TypeError):  # not a tensor, a list argument, …: the full check names the problem
        return conv2d_problem(*args)
    return _remember(key, conv2d_problem, args)


def checked_pool2d(check, *args) -> PoolProblem:
    """``check(input, …)`` (``reference.max_pool2d_problem`` / ``avg_pool2d_problem``) remembered like
    ``checked_conv2d``: a training step calls its pools with the same arguments every step."""
    try:
        key = (check, _tensor_key(args[0]), *map(_plain, args[1:]))
    except (AttributeError, TypeError):
        return check(*args)
    return _remember(key, check, args)


class Implementation:
    """Base class. Subclasses set ``name`` and ``summary`` and implement the three hooks."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: compiles or autotunes on the first call of each problem; bench reports that first-call cost as compile_s
    jit: ClassVar[bool] = False
    #: part of a run when no --impl is given (variants such as compile modes are opt-in)
    default: ClassVar[bool] = True

    def unavailable_reason(self, device) -> str | None:
        """None when this implementation can run on ``device``, else a sentence saying why not."""
        if device_type(device) == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available"
        return None

    def correctness_only(self, device) -> str | None:
        """A reason when this implementation runs on ``device`` but its timings would mean nothing (an interpreter);
        the bench then checks it against the oracle and records the case as skipped instead of timing it."""
        return None

    # ---- the training step -----------------------------------------------------------------------------------------
    def train_ops(self):
        """The ops object a model is built from for this implementation's training step (conv2d, conv2d_relu,
        max_pool2d); the implementation itself by default."""
        return self

    def optimizer_options(self, device) -> dict:
        """torch.optim options this implementation's training step needs (e.g. capturable=True for CUDA graphs)."""
        return {}

    def wrap_train_step(self, step, model, optimizer, device):
        """How this implementation runs a whole training step ``step(x, y) -> loss`` of ``model`` updated by
        ``optimizer``: as is (eager) by default; an implementation may compile it or capture it in a CUDA graph.
        The wrapped step must still leave the gradients in ``.grad`` and perform exactly one update per call."""
        return step

    def backend(self, op: str, device, problem=None) -> str:
        """The library or code generator that actually computes ``op`` on ``device`` (a results column).

        ``problem`` (a ConvProblem or PoolProblem) lets an implementation say what it picks for that exact call."""
        return "torch-ops"

    def ran(self, op: str, device, problem, record) -> str:
        """The backend column of a row that ran: what its calls said they ran (``record``, a kernels.Record of
        the untimed validation call), else the prediction of ``backend``."""
        return record.backend or self.backend(op, device, problem)

    def steady_state_problem(self, record) -> str | None:
        """Why the timed calls would not be the steady state, from a record of one call made after timing
        (e.g. it recompiled); None when they were."""
        return None

    def __repr__(self) -> str:
        return f"<convbench implementation {self.name!r}: {self.summary}>"

    # ---- public API: exactly torch.nn.functional's signatures ---------------------------------------------------
    def conv2d(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        p = checked_conv2d(input, weight, bias, stride, padding, dilation, groups)
        self._require(input.device)
        if input.dim() == 4:
            return self._conv2d(input, weight, bias, p)
        return self._conv2d(input.unsqueeze(0), weight, bias, p).squeeze(0)

    def conv2d_relu(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        """relu(conv2d(...)) — the conv+bias+ReLU block of a CNN; implementations with a fused epilogue override
        ``_conv2d_relu``, the others compute the two ops one after the other."""
        p = checked_conv2d(input, weight, bias, stride, padding, dilation, groups)
        self._require(input.device)
        x = input if input.dim() == 4 else input.unsqueeze(0)
        out = self._conv2d_relu(x, weight, bias, p)
        return out if input.dim() == 4 else out.squeeze(0)

    def max_pool2d(self, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                   return_indices=False):
        p = checked_pool2d(max_pool2d_problem, input, kernel_size, stride, padding, dilation, ceil_mode,
                           return_indices)
        self._require(input.device)
        x = input if input.dim() == 4 else input.unsqueeze(0)
        out, indices = self._max_pool2d(x, p)
        if input.dim() == 3:
            out, indices = out.squeeze(0), (indices.squeeze(0) if indices is not None else None)
        return (out, indices) if return_indices else out

    def avg_pool2d(self, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None):
        p = checked_pool2d(avg_pool2d_problem, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                           divisor_override)
        self._require(input.device)
        x = input if input.dim() == 4 else input.unsqueeze(0)
        out = self._avg_pool2d(x, p)
        return out if input.dim() == 4 else out.squeeze(0)

    # ---- a call bound once, for timing -----------------------------------------------------------------------
    def bind(self, op: str, *args, **kwargs) -> Callable[[], object]:
        """``getattr(self, op)(*args, **kwargs)`` as a zero-argument callable, with every check of the public method
        done now, once: argument checks (they raise here, as the call would), the device check, the 3-D → 4-D view.
        Each call of the result does only this implementation's own work for that call and returns what the public
        method returns — it is what ``bench`` times. By default it calls the hook (``_conv2d`` …) on the checked
        problem; an implementation overrides ``_bind_conv2d`` / ``_bind_max_pool2d`` / ``_bind_avg_pool2d`` to bind
        its steady-state call more directly (cudnn: the ``torch.nn.functional`` function itself)."""
        if op not in OPS:
            raise ValueError(f"{self.name}.bind: 'op' must be one of {', '.join(OPS)}, got {op!r}")
        bound = inspect.signature(getattr(type(self), op)).bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        del a["self"]
        x = a["input"]
        if op == "conv2d":
            p = checked_conv2d(x, a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"])
        elif op == "max_pool2d":
            p = checked_pool2d(max_pool2d_problem, *a.values())
        else:
            p = checked_pool2d(avg_pool2d_problem, *a.values())
        self._require(x.device)
        x4 = x if x.dim() == 4 else x.unsqueeze(0)
        if op == "conv2d":
            call = self._bind_conv2d(x4, a["weight"], a["bias"], p)
        else:
            call = getattr(self, f"_bind_{op}")(x4, p)
        if x.dim() == 4:
            return call
        if op == "max_pool2d" and p.return_indices:
            return lambda: tuple(t.squeeze(0) for t in call())
        return lambda: call().squeeze(0)

    def _bind_conv2d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     p: ConvProblem) -> Callable[[], torch.Tensor]:
        hook = self._conv2d
        return lambda: hook(x, weight, bias, p)

    def _bind_max_pool2d(self, x: torch.Tensor, p: PoolProblem) -> Callable[[], object]:
        hook = self._max_pool2d
        if p.return_indices:
            return lambda: hook(x, p)
        return lambda: hook(x, p)[0]

    def _bind_avg_pool2d(self, x: torch.Tensor, p: PoolProblem) -> Callable[[], torch.Tensor]:
        hook = self._avg_pool2d
        return lambda: hook(x, p)

    def observed_call(self, op: str, call: Callable[[], object], problem, device):
        """Make the bench's untimed validation call of a bound ``call`` (inside ``kernels.recording()``) and return
        its result. By default just ``call()``: the hooks note what they ran as they run. An implementation whose
        bound call is a plain library function observes it from outside instead (cudnn)."""
        return call()

    def unsupported(self, op: str, problem=None) -> str | None:
        """Why this implementation does not run ``op`` (on ``problem``), or None when it does. By default: an op whose
        hook the class leaves unimplemented (a plugin that brings only a conv2d; a training step needs conv2d and
        max_pool2d). An implementation with partial support (no depthwise kernel, …) overrides this. The bench
        records such a case as ``unsupported`` with this reason — never a silent fallback to another
        implementation."""
        needs = {"conv2d": ("_conv2d",), "conv2d_backward": ("_conv2d",), "max_pool2d": ("_max_pool2d",),
                 "avg_pool2d": ("_avg_pool2d",), "train_step": ("_conv2d", "_max_pool2d")}.get(op, ())
        missing = [h[1:] for h in needs if getattr(type(self), h) is getattr(Implementation, h)]
        if missing:
            return f"{self.name} does not implement {' or '.join(missing)}"
        return None

    # ---- hooks ----------------------------------------------------------------------------------------------------
    def _conv2d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: ConvProblem):
        raise NotImplementedError(f"{self.name} does not implement conv2d")

    def _conv2d_relu(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: ConvProblem):
        return torch.relu(self._conv2d(x, weight, bias, p))

    def _max_pool2d(self, x: torch.Tensor, p: PoolProblem) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (values, indices); indices may be None when ``p.return_indices`` is False."""
        raise NotImplementedError(f"{self.name} does not implement max_pool2d")

    def _avg_pool2d(self, x: torch.Tensor, p: PoolProblem) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not implement avg_pool2d")

    def _require(self, device) -> None:
        """Refuse a device this implementation cannot run on. A device found usable is remembered (availability
        does not change within a process, and asking costs microseconds per call: a driver query on a GPU)."""
        usable = vars(self).setdefault("_usable_devices", set())
        if device in usable:
            return
        reason = self.unavailable_reason(device)
        if reason:
            raise RuntimeError(f"{self.name}: cannot run on {device}: {reason}")
        usable.add(device)
