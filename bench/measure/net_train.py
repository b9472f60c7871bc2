"""A torchvision network's training step as a benchmark case: ``NetTrainCall``, built by ``net_train_call``, is the
timed callable of a train_step case whose problem is a ``reference.NetTrainProblem`` — what ``TrainCall`` is for
SimpleCNN, with the same implementation hooks (``train_ops``, ``optimizer_options``, ``wrap_train_step``).
"""

from __future__ import annotations

from collections.abc import Callable

from reference.net_agreement import net_train_agreement

from .cases import Case
from .train import TrainCall

NET_CHECK_STEPS = 3  # steps checked against the float64 reference before timing …
NET_CHECK_STEPS_LARGE = 2  # … and above this many images per step, fewer
NET_CHECK_LARGE_BATCH = 32


def net_check_steps(batch: int) -> int:
    """Steps of a torchvision train_step case checked against float64: 3 up to batch 32, 2 above. Fewer than
    SimpleCNN's 5 because a checked step of a real network costs a float64 forward + backward of the whole network
    (seconds on a CPU for ResNet-18 at 64 px) plus an eager recording forward; two steps still check a first update
    and one from the optimizer state it left."""
    return NET_CHECK_STEPS if batch <= NET_CHECK_LARGE_BATCH else NET_CHECK_STEPS_LARGE


class NetTrainCall(TrainCall):
    """``TrainCall`` for a ``reference.NetTrainProblem``: the implementation's (wrapped) step of a torchvision
    network, checked for ``net_check_steps(batch)`` steps against the float64 reference
    (``reference.net_agreement``) before it is timed; same hooks, same ``first_step_s`` and phases."""

    check_steps = staticmethod(net_check_steps)

    def agree(self, impl, case: Case, seed: int, steps: int, wrap, on_step):
        return net_train_agreement(impl.train_ops(), case.problem, steps=steps, device=case.device, seed=seed,
                                   wrap=wrap, optimizer_options=impl.optimizer_options(case.device), on_step=on_step)


def net_train_call(impl, case: Case, seed: int, phase: Callable[[str], None] | None = None):
    """``(call, verify)`` for a torchvision train_step case: ``verify(_)`` is the agreement's combined Check."""
    call = NetTrainCall(impl, case, seed, phase)
    return call, lambda _: call.agreement.check
