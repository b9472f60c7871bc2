"""The benchmark optimizers: their fixed hyperparameters (``OPTIMIZERS``), the torch.optim optimizer of each
(``make_optimizer``) and ``ReferenceOptimizer``, the same updates written out in float64 from PyTorch's documented
formulas, independent of ``torch.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimizerSpec:
    """The fixed hyperparameters of a benchmark optimizer (no weight decay, no dampening, no Nesterov)."""

    name: str
    lr: float
    momentum: float = 0.0  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam

    @property
    def state_tensors(self) -> int:
        """Per-parameter state tensors: the momentum buffer (sgd) or the two moments (adam)."""
        return 1 if self.name == "sgd" else 2


#: lr 0.01 with momentum 0.9 (an effective step of 0.1) and Adam's usual 1e-3 both train the models on the synthetic
#: digits in a few hundred small-batch steps without diverging.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", lr=0.01, momentum=0.9),
    "adam": OptimizerSpec("adam", lr=1e-3),
}
#: torch.optim options that choose an implementation of the update, not its math (capturable for CUDA graphs)
_IMPLEMENTATION_OPTIONS = ("foreach", "fused", "capturable")


def optimizer_spec(name: str) -> OptimizerSpec:
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"'name' must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def make_optimizer(name: str, params: Iterable[torch.Tensor], **options) -> torch.optim.Optimizer:
    """torch.optim optimizer ``name`` (sgd, adam) with the fixed hyperparameters of ``OPTIMIZERS``.

    ``options`` may only pick how torch computes the update (foreach, fused, capturable), never its math."""
    spec = optimizer_spec(name)
    for key in options:
        if key not in _IMPLEMENTATION_OPTIONS:
            raise ValueError(f"'{key}' is not an allowed optimizer option (only {', '.join(_IMPLEMENTATION_OPTIONS)}; "
                             f"the hyperparameters are fixed in OPTIMIZERS)")
    if spec.name == "sgd":  # SGD's update is capture-safe as is: torch.optim.SGD takes no 'capturable'
        options.pop("capturable", None)
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, **options)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, **options)


class ReferenceOptimizer:
    """The update of ``spec`` written out from PyTorch's formulas, in float64, without torch.optim.

    sgd:  b ← μ·b + g  (b = g on the first step),  p ← p − lr·b
    adam: t ← t + 1,  m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,
          p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)      (bias-corrected, ε outside the square root)

    ``state`` holds, per parameter, the tensors under torch.optim's names (momentum_buffer; exp_avg, exp_avg_sq),
    so the state of a torch optimizer can be loaded (``load_state``) and the next update checked from it.
    """

    def __init__(self, spec: OptimizerSpec, params: Sequence[torch.Tensor]) -> None:
        self.spec, self.params, self.t = spec, list(params), 0
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def load_state(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], t: int) -> None:
        """Copy (in float64, on the device of our own parameters) the state ``optimizer`` keeps for ``params`` —
        matched to ours by position — after ``t`` steps."""
        self.t = t
        for mine, p, own in zip(self.state, params, self.params):
            mine.clear()
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, torch.Tensor):
                    mine[key] = value.detach().to(own.device, torch.float64).clone()

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        s, self.t = self.spec, self.t + 1
        for p, g, state in zip(self.params, grads, self.state):
            if s.name == "sgd":
                b = state.get("momentum_buffer")
                state["momentum_buffer"] = b = g.clone() if b is None else s.momentum * b + g
                p.sub_(s.lr * b)
            else:
                beta1, beta2 = s.betas
                m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
                v = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g * g
                state["exp_avg"], state["exp_avg_sq"] = m, v
                denom = v.sqrt() / math.sqrt(1 - beta2 ** self.t) + s.eps
                p.sub_(s.lr / (1 - beta1 ** self.t) * m / denom)
