"""What the benchmark adds to the reference's training step: the profiled step (``make_train_step``, the step with
torch.profiler phase labels, for ``bench profile``), the first-call timer (``FirstCallTimer``) and a train_step
case's timed callable (``TrainCall``, built by ``train_call``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import record_function

from reference.agreement import train_agreement

from .cases import Case

TRAIN_CHECK_STEPS = 5  # train_step cases: steps checked against the float64 reference before timing …
TRAIN_CHECK_STEPS_LARGE = 2  # … and above this batch, fewer: each step costs a float64 reference step
TRAIN_CHECK_LARGE_BATCH = 256


def train_check_steps(batch: int) -> int:
    """Steps of a train_step case checked against the float64 reference: TRAIN_CHECK_STEPS (5) up to batch
    TRAIN_CHECK_LARGE_BATCH (256), TRAIN_CHECK_STEPS_LARGE (2) above. Two steps still check a first update and one
    from the optimizer state it left (momentum, Adam's moments), the part of a step a first step cannot show;
    a float64 reference step grows with the batch (on a CPU ~2.7 s at 256, ~43 s at 4096)."""
    return TRAIN_CHECK_STEPS if batch <= TRAIN_CHECK_LARGE_BATCH else TRAIN_CHECK_STEPS_LARGE


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                      torch.Tensor]:
    """``reference.agreement.plain_train_step`` with torch.profiler labels on its phases: ``step(x, y) -> loss``,
    forward, cross-entropy, backward, optimizer.step(); the detached loss is returned.

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


class FirstCallTimer:
    """``step(x, y)`` as is, with the wall time of its first call in ``first_s`` (None before it): compilation or
    graph capture included, the GPU synchronised after it when ``x`` is on one. Later calls are passed through
    untimed; ``step`` is the wrapped callable, to time without this wrapper."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.step = step
        self.first_s: float | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.first_s is not None:
            return self.step(x, y)
        t0 = time.perf_counter()
        loss = self.step(x, y)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        self.first_s = time.perf_counter() - t0
        return loss


class TrainCall:
    """A train_step case's timed callable: the implementation's (wrapped) step, already checked for
    ``train_check_steps(batch)`` steps against the float64 reference (computed on the implementation's device);
    its first call returns that agreement's verdict. ``first_step_s``: the wall time of the first step call, the
    first checked one (compilation / graph capture included). ``phase(stage)`` is told "validate step k/n" before
    each checked step, so each is a watchdog phase of its own (the worker's per-phase deadline)."""

    #: how many steps of a batch are checked before timing
    check_steps = staticmethod(train_check_steps)

    def __init__(self, impl, case: Case, seed: int, phase: Callable[[str], None] | None = None) -> None:
        p = case.problem
        timer: FirstCallTimer | None = None
        self.steps = steps = self.check_steps(p.batch)

        def wrap(step, model, optimizer):
            nonlocal timer
            timer = FirstCallTimer(impl.wrap_train_step(step, model, optimizer, case.device))
            return timer

        def on_step(k: int) -> None:
            if phase is not None:
                phase(f"validate step {k + 1}/{steps}")

        self.agreement = self.agree(impl, case, seed, steps, wrap, on_step)
        self.step, (self.x, self.y) = timer.step, self.agreement.batch  # the checked step, without the timer
        self.first_step_s = timer.first_s

    def agree(self, impl, case: Case, seed: int, steps: int, wrap, on_step):
        """The checked steps: SimpleCNN's / BasicCNN's against reference.agreement."""
        p = case.problem
        return train_agreement(
            impl.train_ops(), p.model, p.optimizer, steps=steps, batch=p.batch, dtype=p.dtype,
            device=case.device, seed=seed, layout=p.layout, optimizer_options=impl.optimizer_options(case.device),
            wrap=wrap, on_step=on_step)

    def __call__(self):
        return self.step(self.x, self.y)


def train_call(impl, case: Case, seed: int, phase: Callable[[str], None] | None = None):
    call = TrainCall(impl, case, seed, phase)
    return call, lambda _: call.agreement.check
