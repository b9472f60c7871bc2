"""A torchvision network's training step as a benchmark case: ``NetTrainCall``, built by ``net_train_call``, is the
timed callable of a train_step case whose problem is a ``reference.NetTrainProblem`` — what ``TrainCall`` is for
SimpleCNN, with the same implementation hooks (``train_ops``, ``optimizer_options``, ``wrap_train_step``).
"""

from __future__ import annotations

from collections.abc import Callable

from reference.net_agreement import net_train_agreement

from .cases import Case
from .train import FirstCallTimer

NET_CHECK_STEPS = 3  # steps checked against the float64 reference before timing …
NET_CHECK_STEPS_LARGE = 2  # … and above this many images per step, fewer
NET_CHECK_LARGE_BATCH = 32


def net_check_steps(batch: int) -> int:
    """Steps of a torchvision train_step case checked against float64: 3 up to batch 32, 2 above. Fewer than
    SimpleCNN's 5 because a checked step of a real network costs a float64 forward + backward of the whole network
    (seconds on a CPU for ResNet-18 at 64 px) plus an eager recording forward; two steps still check a first update
    and one from the optimizer state it left."""
    return NET_CHECK_STEPS if batch <= NET_CHECK_LARGE_BATCH else NET_CHECK_STEPS_LARGE


class NetTrainCall:
    """The implementation's (wrapped) step of ``case.problem`` (a NetTrainProblem), already checked for
    ``net_check_steps(batch)`` steps against the float64 reference (``reference.net_agreement``); calling it runs
    one more full step — zero_grad(set_to_none), forward, cross-entropy, backward, optimizer.step() — on the first
    batch. ``first_step_s``: wall time of the first step call, the first checked one (compilation / graph capture
    included). ``phase(stage)`` is told "validate step k/n" before each checked step (a watchdog phase each)."""

    def __init__(self, impl, case: Case, seed: int, phase: Callable[[str], None] | None = None) -> None:
        p = case.problem
        timer: FirstCallTimer | None = None
        self.steps = steps = net_check_steps(p.batch)

        def wrap(step, model, optimizer):
            nonlocal timer
            timer = FirstCallTimer(impl.wrap_train_step(step, model, optimizer, case.device))
            return timer

        def on_step(k: int) -> None:
            if phase is not None:
                phase(f"validate step {k + 1}/{steps}")

        self.agreement = net_train_agreement(
            impl.train_ops(), p, steps=steps, device=case.device, seed=seed, wrap=wrap,
            optimizer_options=impl.optimizer_options(case.device), on_step=on_step)
        self.step, (self.x, self.y) = timer.step, self.agreement.batch  # the checked step, without the timer
        self.first_step_s = timer.first_s

    def __call__(self):
        return self.step(self.x, self.y)


def net_train_call(impl, case: Case, seed: int, phase: Callable[[str], None] | None = None):
    """``(call, verify)`` for a torchvision train_step case: ``verify(_)`` is the agreement's combined Check."""
    call = NetTrainCall(impl, case, seed, phase)
    return call, lambda _: call.agreement.check
