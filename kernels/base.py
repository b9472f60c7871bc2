"""What every implementation is: a registered object with conv2d / max_pool2d / avg_pool2d.

The public methods take exactly the arguments of ``torch.nn.functional``, check them with ``reference.args`` (so every
implementation refuses the same calls, with the same messages, before doing any work), turn 3-D input into a batch of
one, and hand a 4-D tensor plus the problem description to the ``_conv2d`` / ``_max_pool2d`` / ``_avg_pool2d`` hooks
that each implementation file provides. Implementations contain no timing code: ``bench`` owns that.
"""

from __future__ import annotations

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
    """``v`` when it is an int, a str or a tuple of ints (so equal keys mean equal arguments: no bools, which hash
    like ints but are refused); else TypeError, and the call is checked in full."""
    if type(v) is int or type(v) is str or (type(v) is tuple and all(type(e) is int for e in v)):
        return v
    raise TypeError


def checked_conv2d(input, weight, bias, stride, padding, dilation, groups) -> ConvProblem:
    """``reference.conv2d_problem`` remembered per argument signature (types, shapes, strides, dtypes, devices and
    the plain int/str/tuple arguments): the checks cost ~20 µs of Python per call, more than a small conv's GPU
    kernel. Only calls that passed the full check are remembered; anything unusual is checked in full again."""
    try:
        key = (type(input), input.shape, input.stride(), input.dtype, input.device,
               type(weight), weight.shape, weight.stride(), weight.dtype, weight.device,
               None if bias is None else (type(bias), bias.shape, bias.stride(), bias.dtype, bias.device),
               _plain(stride), _plain(padding), _plain(dilation), _plain(groups))
    except (AttributeError, TypeError):  # not a tensor, a list argument, …: the full check names the problem
        return conv2d_problem(input, weight, bias, stride, padding, dilation, groups)
    p = _CHECKED.get(key)
    if p is None:
        p = conv2d_problem(input, weight, bias, stride, padding, dilation, groups)
        if len(_CHECKED) >= 4096:
            _CHECKED.clear()
        _CHECKED[key] = p
    return p


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
        p = max_pool2d_problem(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        self._require(input.device)
        x = input if input.dim() == 4 else input.unsqueeze(0)
        out, indices = self._max_pool2d(x, p)
        if input.dim() == 3:
            out, indices = out.squeeze(0), (indices.squeeze(0) if indices is not None else None)
        return (out, indices) if return_indices else out

    def avg_pool2d(self, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None):
        p = avg_pool2d_problem(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self._require(input.device)
        x = input if input.dim() == 4 else input.unsqueeze(0)
        out = self._avg_pool2d(x, p)
        return out if input.dim() == 4 else out.squeeze(0)

    # ---- hooks ----------------------------------------------------------------------------------------------------
    def _conv2d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: ConvProblem):
        raise NotImplementedError

    def _conv2d_relu(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: ConvProblem):
        return torch.relu(self._conv2d(x, weight, bias, p))

    def _max_pool2d(self, x: torch.Tensor, p: PoolProblem) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (values, indices); indices may be None when ``p.return_indices`` is False."""
        raise NotImplementedError

    def _avg_pool2d(self, x: torch.Tensor, p: PoolProblem) -> torch.Tensor:
        raise NotImplementedError

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
