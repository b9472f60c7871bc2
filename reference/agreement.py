"""The float64 reference training run and the step-by-step agreement check of an implementation's training.

``reference_training`` runs a model on ``reference.oracle`` in float64 with the written-out cross entropy and
``ReferenceOptimizer``, independent of ``torch.optim``. ``train_agreement`` trains an implementation with the plain
training step (``plain_train_step``) and checks every step from the implementation's own state: its ReLU and
max-pool decisions (``DecisionRecorder``, ``DecidedOracle``), loss, gradients and optimizer update
(``update_check``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import oracle
from .cnn import build_model
from .data import cross_entropy
from .optim import ReferenceOptimizer, make_optimizer, optimizer_spec
from .problems import dtype_name
from .tolerance import UPDATE_ULPS, Check, check, combine
from .train_problem import TrainProblem


def plain_train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                       torch.Tensor]:
    """``step(x, y) -> loss``: forward, cross-entropy, backward, optimizer.step(); the detached loss is returned.

    The gradients are cleared with set_to_none at the start of the step, so a step is the same work every time and
    keeps no Python-side state of its own: it can be timed as is, compiled with torch.compile, or captured in a CUDA
    graph (with static x, y and a capturable optimizer). ``bench.train.make_train_step`` is this step with
    torch.profiler labels on its phases."""
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# ---- the float64 reference and the agreement check ----------------------------------------------------------------
class DecisionRecorder:
    """Ops proxy that computes through ``ops`` and records each non-smooth decision in call order: which outputs
    of a ReLU passed (``output > 0``) and which input each max-pool window took (the first one equal to its output,
    ATen's rule). The models pool with kernel_size = stride, no padding."""

    def __init__(self, ops) -> None:
        self.ops, self.decisions = ops, []

    def conv2d_relu(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        fused = getattr(self.ops, "conv2d_relu", None)
        if fused is not None:
            out = fused(input, weight, bias, stride, padding, dilation, groups)
        else:
            out = torch.relu(self.ops.conv2d(input, weight, bias, stride, padding, dilation, groups))
        self.decisions.append(("relu", (out > 0).detach()))
        return out

    def relu(self, input):
        out = torch.relu(input)
        self.decisions.append(("relu", (out > 0).detach()))
        return out

    def conv2d(self, *args, **kwargs):
        return self.ops.conv2d(*args, **kwargs)

    def max_pool2d(self, input, kernel_size, stride):
        out = self.ops.max_pool2d(input, kernel_size, stride)
        k, (N, C, H, W) = kernel_size, input.shape
        windows = F.unfold(input.detach().reshape(N * C, 1, H, W), k, stride=stride)  # (N·C, k·k, P·Q)
        tap = (windows == out.detach().reshape(N * C, 1, -1)).int().argmax(dim=1)  # first equal tap
        P, Q = out.shape[-2:]
        p = torch.arange(P, device=tap.device).repeat_interleave(Q)
        q = torch.arange(Q, device=tap.device).repeat(P)
        index = (p * stride + tap // k) * W + q * stride + tap % k
        self.decisions.append(("max_pool", index.reshape(N, C, P, Q)))
        return out


class DecidedOracle:
    """``reference.oracle`` arithmetic in float64 taking the recorded decisions of an implementation: a ReLU passes
    what the implementation's passed, a max-pool window returns the input the implementation's took.

    Each decision is first checked against the float64 one under the dtype's tolerance (``checks``): a decision
    may differ only where float64 itself is within rounding of a tie or a kink, so following it changes the
    reference by no more than that rounding — and spares the comparison the discontinuity: near such a tie the
    float32 and float64 choices route a whole gradient path differently (observed: a 1e-8 relative near-tie in
    a max-pool window failing 104 of 144 conv1 weight gradients). Ties and kinks at that distance occur in ~1 %
    of steps at batch 4, and more often the larger the batch."""

    def __init__(self, decisions: Sequence[tuple[str, torch.Tensor]], dtype: str, device="cpu") -> None:
        self.decisions, self.dtype, self.checks = list(decisions), dtype, []
        self.device = torch.device(device)  # where the float64 reference computes (ReferenceTrainer.device)

    def _next(self, kind: str) -> torch.Tensor:
        if not self.decisions or self.decisions[0][0] != kind:
            raise RuntimeError(f"DecidedOracle: the recorded forward pass has no {kind} decision here")
        return self.decisions.pop(0)[1].to(self.device)

    def _relu(self, z: torch.Tensor, what: str) -> torch.Tensor:
        passed = z * self._next("relu")  # z where the implementation's ReLU passed, 0 elsewhere
        c = check(passed, torch.relu(z), self.dtype)
        self.checks.append(c if c.ok else dataclasses.replace(c, detail=f"{what} decisions: {c.detail}"))
        return passed

    def conv2d(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return oracle.conv2d(input, weight, bias, stride, padding, dilation, groups)

    def conv2d_relu(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return self._relu(oracle.conv2d(input, weight, bias, stride, padding, dilation, groups), "conv+ReLU")

    def relu(self, input):
        return self._relu(input, "ReLU")

    def max_pool2d(self, input, kernel_size, stride):
        index = self._next("max_pool")
        taken = input.flatten(2).gather(2, index.flatten(2)).view(index.shape)
        c = check(taken, oracle.max_pool2d(input, kernel_size, stride), self.dtype)
        self.checks.append(c if c.ok else dataclasses.replace(c, detail=f"max_pool2d decisions: {c.detail}"))
        return taken


class ReferenceTrainer:
    """``model_name`` in float64 on ``device`` (the CPU by default) through ``reference.oracle``, trained with the
    written-out cross entropy and ``ReferenceOptimizer``: everything torch.optim and the implementations do,
    computed independently. On a GPU the float64 arithmetic is IEEE double as on the CPU (only the summation order
    differs, ~1e-16 relative), and a reference step of a large batch takes milliseconds instead of seconds.

    ``init_dtype``: round the initial weights to an implementation's dtype first, so that both runs start from the
    same numbers and only the arithmetic of the steps differs."""

    def __init__(self, model_name: str, optimizer_name: str, seed: int = 0,
                 init_dtype: torch.dtype = torch.float64, device="cpu") -> None:
        self.device = torch.device(device)
        # rounded to init_dtype on the CPU, widened, then moved: the same numbers on every device
        self.model = build_model(model_name, oracle, seed, init_dtype).to(torch.float64).to(self.device)
        self.names, self.params = zip(*self.model.named_parameters())
        self.optimizer = ReferenceOptimizer(optimizer_spec(optimizer_name), self.params)

    def loss_and_gradients(self, x: torch.Tensor, y: torch.Tensor, ops=None
                           ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Loss and parameter gradients on (x, y), converted exactly to float64 on this trainer's device; no update.
        ``ops`` replaces the oracle (a ``DecidedOracle``)."""
        model = self.model if ops is None else self.model.with_ops(ops)
        loss = cross_entropy(model(x.detach().to(self.device, torch.float64)), y.to(self.device))
        return loss.detach(), torch.autograd.grad(loss, self.params)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step; returns the loss before the update."""
        loss, grads = self.loss_and_gradients(x, y)
        self.optimizer.step(grads)
        return loss

    def parameters(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in zip(self.names, self.params)}

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, t: int) -> None:
        """Continue from the parameters of ``model`` and the state of ``optimizer`` after ``t`` steps (float64
        copies; parameters matched by name)."""
        theirs = dict(model.named_parameters())
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                p.copy_(theirs[n].detach().to(self.device, torch.float64))
        self.optimizer.load_state(optimizer, [theirs[n] for n in self.names], t)


@dataclass(frozen=True)
class ReferenceRun:
    """Float64 loss of each step (computed before its update) and the parameters after the last step."""

    losses: torch.Tensor
    parameters: dict[str, torch.Tensor]


def reference_training(model_name: str, optimizer_name: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       seed: int = 0, init_dtype: torch.dtype = torch.float64) -> ReferenceRun:
    """Train ``model_name`` with ``optimizer_name`` from the initial weights of ``seed``, one step per batch, all in
    float64 with the oracle ops and the written-out optimizer (see ``ReferenceTrainer``)."""
    trainer = ReferenceTrainer(model_name, optimizer_name, seed, init_dtype)
    losses = [trainer.step(x, y) for x, y in batches]
    return ReferenceRun(torch.stack(losses), trainer.parameters())


@dataclass(frozen=True)
class TrainAgreement:
    """An implementation's training run, each step checked against the float64 reference from the same state."""

    losses: torch.Tensor  # float64 copy of the implementation's loss of each step
    reference_losses: torch.Tensor  # float64 loss at the implementation's parameters before each step
    decisions_check: Check  # every ReLU and max-pool decision of every step, against float64's
    losses_check: Check
    gradients_check: Check  # every step, every parameter, against the oracle's gradients
    updates_check: Check  # every step, every parameter, against the written-out optimizer
    check: Check  # all four: the verdict
    step: Callable | None = None  # the checked (wrapped) step, ready to be timed on ``batch``
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the first batch, on the device


def update_check(delta: torch.Tensor, expected: torch.Tensor, stored: torch.Tensor, dtype: torch.dtype) -> Check:
    """Compare an optimizer update ``delta`` with the ``expected`` float64 update from the same gradient and state.

    Allowed: UPDATE_ULPS · u · (max|expected| + |stored|) per element, u the unit roundoff of the storage
    ``dtype``: the update is a few rounded operations (whose terms can cancel, hence the tensor's largest update as
    scale) and the new parameter ``stored`` is rounded once. max_rel_err is |error| / (max|expected| + |stored|)."""
    u = torch.finfo(dtype).eps / 2
    diff = (delta - expected).abs()
    scale = expected.abs().max() + stored.abs()
    bad = ~(diff <= UPDATE_ULPS * u * scale)  # NaN fails too
    detail = f"{int(bad.sum())} of {bad.numel()} elements beyond {UPDATE_ULPS} ulps" if bool(bad.any()) else ""
    rel = diff / scale.clamp(min=torch.finfo(torch.float64).tiny)
    return Check(diff.max().item(), rel.max().item(), not detail, detail)


def checked_gradients(params: dict, names, ref_grads, dtype, ref_device, k: int, who: str) -> tuple[list, list]:
    """Step ``k``'s gradient of every parameter (``params[name].grad``) against the reference's, under the dtype's
    tolerance: (the gradients in float64 on ``ref_device``, for the written-out update; their checks, labelled)."""
    grads, checks = [], []
    for pname, ref_grad in zip(names, ref_grads):
        g = params[pname].grad
        if g is None:
            raise RuntimeError(f"{who}: the step left no gradient in {pname}.grad; 'wrap' must keep the step's "
                               f"gradients there")
        grads.append(g.detach().to(ref_device, torch.float64))
        c = check(g, ref_grad, dtype)
        checks.append(c if c.ok else dataclasses.replace(c, detail=f"step {k}, grad of {pname}: {c.detail}"))
    return grads, checks


def train_agreement(ops, model_name: str, optimizer_name: str, steps: int = 5, batch: int = 8,
                    dtype: torch.dtype | str = torch.float32, device="cpu", seed: int = 0,
                    wrap: Callable | None = None, layout: str = "nchw",
                    optimizer_options: dict | None = None,
                    on_step: Callable[[int], None] | None = None) -> TrainAgreement:
    """Train ``model_name`` through ``ops`` for ``steps`` steps and check every step against the float64 reference.

    ``dtype`` is a floating torch.dtype or a benchmark dtype name ('tf32': float32 storage, tf32 tolerance; the
    caller enables TF32 math). ``layout`` as in ``TrainProblem``. ``optimizer_options`` picks how torch.optim
    computes the update (capturable=True for CUDA graphs; see ``make_optimizer``). ``wrap(step, model, optimizer)``
    turns the step (``plain_train_step``) into what the benchmark times (torch.compile, a CUDA-graph replay), so the
    callable checked is the callable timed; the step must leave its gradients in ``.grad``. Nothing is timed here:
    the benchmark times the first call through ``wrap`` (``bench.train``). ``on_step(k)`` is called before checked
    step k (0-based) starts (the benchmark's per-step watchdog phase).

    The float64 reference runs on the implementation's ``device`` when that is a GPU (exact IEEE double there too,
    and seconds per step faster at large batches than the CPU), else on the CPU.

    Every step k is checked from the implementation's own state (teacher forcing): the reference loads the
    parameters p_k and the optimizer state, and
      1. every ReLU and max-pool decision of the step's forward pass must agree with float64's within the dtype's
         ``check`` tolerance; the reference then takes the implementation's decisions (``DecidedOracle``), so a
         near-tie that rounding resolves the other way does not reroute a whole gradient path;
      2. the loss at p_k must agree with the oracle's within the dtype's ``check`` tolerance;
      3. the gradient of every parameter must agree with the oracle's within the same tolerance — the one every
         kernel gradient is held to (elementwise, |error| ≤ atol·max(1, max|g|) + rtol·|g|);
      4. the update p_{k+1} − p_k of every parameter must equal the written-out optimizer applied to the
         implementation's own gradient and state, to ``update_check``'s few ulps.
    Why not run the reference freely and compare the parameters after K steps: errors compound. Once the two
    trajectories differ by rounding, a ReLU or max-pool decision near its kink goes the other way, and with Adam a
    unit that wakes up for one image gets a full-size lr step on its whole weight row: 2e-2 relative update errors
    after ten steps of a correct float32 BasicCNN. And why the update is checked on the implementation's gradient
    rather than the oracle's: Adam divides by √v, so where a gradient is near zero its rounding error becomes an
    update of up to ±lr (in a correct float32 BasicCNN step, elementwise errors of 6.5e-3 of the largest update,
    against 3e-5 for SGD); the gradient itself is checked in 3., where its error is measured on its own scale.
    ``check.max_abs_err`` / ``max_rel_err`` are the worst over all steps of the four."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    problem = TrainProblem(model_name, batch, optimizer_name, name, layout)
    storage = problem.storage
    batches = problem.make_batches(steps, seed, device)
    model = problem.build(ops, seed, device)
    optimizer = make_optimizer(optimizer_name, model.parameters(), **(optimizer_options or {}))
    step = plain_train_step(model, optimizer)
    if wrap is not None:
        step = wrap(step, model, optimizer)
    ref_device = torch.device(device) if torch.device(device).type == "cuda" else torch.device("cpu")
    reference = ReferenceTrainer(model_name, optimizer_name, seed, storage, ref_device)
    params = dict(model.named_parameters())

    losses, ref_losses, decision_checks, grad_checks, update_checks = [], [], [], [], []
    for k, (x, y) in enumerate(batches):
        if on_step is not None:
            on_step(k)
        reference.load(model, optimizer, k)
        before = reference.parameters()
        recorder = DecisionRecorder(model.ops)
        model.with_ops(recorder)(x)  # the forward of the step, as is, to read its decisions
        decided = DecidedOracle(recorder.decisions, problem.dtype, ref_device)
        ref_loss, ref_grads = reference.loss_and_gradients(x, y, decided)
        decision_checks += [c if c.ok else dataclasses.replace(c, detail=f"step {k}, {c.detail}")
                            for c in decided.checks]
        loss = step(x, y)
        losses.append(loss.detach().to("cpu", torch.float64))
        ref_losses.append(ref_loss.to("cpu"))
        grads, checks = checked_gradients(params, reference.names, ref_grads, problem.dtype, ref_device, k,
                                          "train_agreement")
        grad_checks += checks
        reference.optimizer.step(grads)  # the written-out update from the implementation's gradient and state
        for pname, expected in reference.parameters().items():
            stored = params[pname].detach().to(ref_device, torch.float64)
            c = update_check(stored - before[pname], expected - before[pname], stored, storage)
            update_checks.append(c if c.ok else dataclasses.replace(c, detail=f"step {k}, update of {pname}: "
                                                                              f"{c.detail}"))
    losses_t, ref_losses_t = torch.stack(losses), torch.stack(ref_losses)
    loss_check = check(losses_t, ref_losses_t, problem.dtype)
    if not loss_check.ok:
        loss_check = dataclasses.replace(loss_check, detail=f"losses {losses_t.tolist()} vs reference "
                                                            f"{ref_losses_t.tolist()}: {loss_check.detail}")
    decisions, grads_check, updates_check = combine(*decision_checks), combine(*grad_checks), combine(*update_checks)
    return TrainAgreement(losses_t, ref_losses_t, decisions, loss_check, grads_check, updates_check,
                          combine(decisions, loss_check, grads_check, updates_check), step, batches[0])
