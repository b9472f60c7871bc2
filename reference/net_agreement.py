"""The step-by-step float64 agreement check of a torchvision network's training step (``NetTrainProblem``).

As ``reference.agreement.train_agreement`` does for SimpleCNN, every checked step starts from the implementation's
own state (teacher forcing): a float64 copy of the network — plain torch, nothing routed — loads the
implementation's parameters, buffers (BatchNorm running statistics) and optimizer state, computes the loss and
gradients of the same batch, and the implementation's loss, every gradient, every update and every buffer it leaves
are compared with it.

Non-smooth decisions are followed, not re-decided (``DecisionTape``): a ReLU, ReLU6 / hardtanh, hardswish or
hardsigmoid branch and a max-pool window's choice that rounding settles differently in float32 and float64 would
route a whole gradient path differently. In a small network that is rare; in ResNet-18 at 64 px it is most steps —
layer4 has 2×2 positions per image, so one flipped ReLU there is 1/16 of a weight gradient's terms (measured: 20 %
elementwise, 2 % norm-wise error in layer4.1.conv1.weight, 4.9 M elements out of tolerance in a correct float32
step). So the implementation's decisions are recorded in an eager forward of its own, each is checked against
float64's within the dtype's tolerance (it may differ only near a kink or a tie), and the reference then takes it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from .agreement import checked_gradients, plain_train_step, update_check
from .data import cross_entropy
from .net_problem import NetTrainProblem
from .optim import ReferenceOptimizer, make_optimizer, optimizer_spec
from .routed import _FUNCS, route
from .tolerance import Check, check, combine

# ---- the implementation's non-smooth decisions ---------------------------------------------------------------------
#: activation functions with a kink, as a mode sees them (the F.* wrapper when the caller named it, else the builtin)
_KINKED = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu",
           torch.Tensor.relu_: "relu", F.hardtanh: "hardtanh", F.relu6: "hardtanh", F.hardswish: "hardswish",
           F.hardsigmoid: "hardsigmoid"}
_IN_PLACE = (torch.relu_, torch.Tensor.relu_)
_MAX_POOL = frozenset(_FUNCS["max_pool2d"])
_POOL_SIGNATURE = inspect.signature(F.max_pool2d_with_indices)  # F.max_pool2d itself is (*args, **kwargs)


def _arguments(func, args, kwargs) -> dict:
    """The call's arguments by name, defaults filled in (input, inplace, min_val, …)."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature: relu(input), Tensor.relu(self)
        return {"input": args[0], "inplace": func in _IN_PLACE}
    bound.apply_defaults()
    a = dict(bound.arguments)
    a["input"] = a.pop(next(iter(a)))  # the first parameter, whatever its name
    a.setdefault("inplace", func in _IN_PLACE)
    return a


def _branch(kind: str, a: dict) -> torch.Tensor:
    """Which piece of the piecewise function each input element is on (relu: passed; the others: 0 below, 1 in
    the middle, 2 above)."""
    x = a["input"].detach()
    if kind == "relu":
        return x > 0
    # hardtanh: its min_val/max_val (F.relu6 has none: 0 and 6); hardswish, hardsigmoid: kinks at ±3
    lo, hi = (a.get("min_val", 0.0), a.get("max_val", 6.0)) if kind == "hardtanh" else (-3.0, 3.0)
    return (x > lo).to(torch.uint8) + (x >= hi).to(torch.uint8)


def _decided(kind: str, a: dict, branch: torch.Tensor) -> torch.Tensor:
    """The function's value with each element on the piece ``branch`` says (differentiable in ``input``)."""
    x = a["input"]
    if kind == "relu":
        return torch.where(branch, x, torch.zeros_like(x))
    mid = {"hardtanh": lambda: x, "hardswish": lambda: x * (x + 3) / 6, "hardsigmoid": lambda: x / 6 + 0.5}[kind]()
    if kind == "hardtanh":
        lo, hi = (a["min_val"], a["max_val"]) if "min_val" in a else (0.0, 6.0)
        low, high = torch.full_like(x, lo), torch.full_like(x, hi)
    else:
        low, high = torch.zeros_like(x), (x if kind == "hardswish" else torch.ones_like(x))
    return torch.where(branch == 1, mid, torch.where(branch == 0, low, high))


class _PoolRecorder:
    """Ops proxy for the routed layers of the recording forward: computes through ``ops`` and notes, per max pool,
    the input index of each window's maximum (the first one, ATen's rule; the value is exact, so it is the index of
    the implementation's answer too)."""

    def __init__(self, ops, tape: DecisionTape) -> None:
        self.ops, self.tape = ops, tape

    def conv2d(self, *args, **kwargs):
        with self.tape.paused():
            return self.ops.conv2d(*args, **kwargs)

    def avg_pool2d(self, *args, **kwargs):
        with self.tape.paused():
            return self.ops.avg_pool2d(*args, **kwargs)

    def max_pool2d(self, input, *args, **kwargs):
        with self.tape.paused():
            out = self.ops.max_pool2d(input, *args, **kwargs)
            a = _POOL_SIGNATURE.bind(input.detach(), *args, **kwargs)
            a.arguments["return_indices"] = True
            _, index = F.max_pool2d_with_indices(*a.args, **a.kwargs)
        self.tape.decisions.append(("max_pool2d", index))
        return out


class DecisionTape(TorchFunctionMode):
    """Records (``replay=False``) or follows (``replay=True``) the non-smooth decisions of one forward, in call
    order: every kinked activation (``_KINKED``) and every max pool. Replaying, each decided value is checked
    against the natural float64 one under ``dtype``'s tolerance (``checks``)."""

    def __init__(self, dtype: str, decisions: list | None = None, device=None) -> None:
        super().__init__()
        self.dtype, self.device = dtype, device
        self.replay = decisions is not None
        self.decisions = list(decisions) if decisions is not None else []
        self.checks: list[Check] = []
        self._paused = False

    class _Pause:
        def __init__(self, tape) -> None:
            self.tape = tape

        def __enter__(self):
            self.was, self.tape._paused = self.tape._paused, True

        def __exit__(self, *exc):
            self.tape._paused = self.was

    def paused(self):
        """Calls made inside (an implementation's own internals) are not decisions of the network."""
        return DecisionTape._Pause(self)

    def _next(self, kind: str) -> torch.Tensor:
        if not self.decisions or self.decisions[0][0] != kind:
            have = self.decisions[0][0] if self.decisions else "nothing"
            raise RuntimeError(f"DecisionTape: the recorded forward has {have} where this one makes a {kind}")
        return self.decisions.pop(0)[1].to(self.device)

    def _note(self, decided: torch.Tensor, natural: torch.Tensor, kind: str) -> None:
        c = check(decided, natural, self.dtype)
        self.checks.append(c if c.ok else dataclasses.replace(c, detail=f"{kind} decisions: {c.detail}"))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _KINKED.get(func)
        if self._paused or (kind is None and not (self.replay and func in _MAX_POOL)):
            return func(*args, **kwargs)
        if kind is None:  # a max pool of the float64 reference: take the implementation's window choices
            x, index = _POOL_SIGNATURE.bind(*args, **kwargs).arguments["input"], self._next("max_pool2d")
            natural = func(*args, **kwargs)
            taken = x.flatten(2).gather(2, index.flatten(2)).view(index.shape)
            self._note(taken, natural[0] if isinstance(natural, tuple) else natural, "max_pool2d")
            return (taken, natural[1]) if isinstance(natural, tuple) else taken
        a = _arguments(func, args, kwargs)
        if not self.replay:
            self.decisions.append((kind, _branch(kind, a)))
            return func(*args, **kwargs)
        branch = self._next(kind)
        x = a["input"]
        natural = func(x.clone() if a["inplace"] else x, *args[1:], **kwargs)
        decided = _decided(kind, a, branch)
        self._note(decided, natural, kind)
        # out of place even for an in-place call: the decided value needs x for its backward (hardswish), and the
        # networks use the returned tensor (out = relu(out)), never the side effect alone
        return decided


def record_decisions(model: nn.Module, ops, x: torch.Tensor, dtype: str) -> list:
    """The decisions of one eager forward of the routed ``model`` through ``ops`` on ``x`` — the forward of the
    step, on copies of its buffers (BatchNorm's running statistics are left as they were), without gradients."""
    tape = DecisionTape(dtype)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    route(model, _PoolRecorder(ops, tape))
    try:
        with torch.no_grad(), tape:
            functional_call(model, buffers, (x,), strict=False)
    finally:
        route(model, ops)
    return tape.decisions


# ---- the float64 reference -----------------------------------------------------------------------------------------
class NetReference:
    """The network of ``problem`` in float64 on ``device``, plain torch (not routed), trained by the written-out
    cross entropy and ``ReferenceOptimizer``."""

    def __init__(self, problem: NetTrainProblem, seed: int = 0, device="cpu") -> None:
        self.problem, self.device = problem, torch.device(device)
        self.model = problem.reference_model(seed, self.device, torch.float64)
        self.names, self.params = zip(*self.model.named_parameters())
        self.optimizer = ReferenceOptimizer(optimizer_spec(problem.optimizer), self.params)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, t: int) -> None:
        """Continue from the parameters and buffers of ``model`` and the state of ``optimizer`` after ``t`` steps
        (float64 copies, matched by name; integer buffers such as num_batches_tracked exactly)."""
        theirs = model.state_dict()
        with torch.no_grad():
            for n, v in self.model.state_dict().items():
                v.copy_(theirs[n])
        mine = dict(model.named_parameters())
        self.optimizer.load_state(optimizer, [mine[n] for n in self.names], t)

    def loss_and_gradients(self, x: torch.Tensor, y: torch.Tensor, decisions: list
                           ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], list[Check]]:
        """Loss and parameter gradients on (x, y) following ``decisions``, and the checks of those decisions; the
        BatchNorm running statistics are updated as the step's forward updates them."""
        tape = DecisionTape(self.problem.dtype, decisions, self.device)
        with tape:
            logits = self.model(x.detach().to(self.device, torch.float64))
        if tape.decisions:
            raise RuntimeError(f"DecisionTape: {len(tape.decisions)} recorded decisions left over")
        loss = cross_entropy(logits, y.to(self.device))
        return loss.detach(), torch.autograd.grad(loss, self.params), tape.checks

    def parameters(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in zip(self.names, self.params)}


@dataclass(frozen=True)
class NetTrainAgreement:
    """An implementation's training steps of a torchvision network, each checked against float64 from its own
    state."""

    losses: torch.Tensor  # float64 copy of the implementation's loss of each step
    reference_losses: torch.Tensor  # float64 loss at the implementation's state before each step
    decisions_check: Check  # every kinked activation and max pool decision, against float64's
    losses_check: Check
    gradients_check: Check  # every step, every parameter
    updates_check: Check  # every step, every parameter, against the written-out optimizer
    buffers_check: Check  # every floating buffer (BatchNorm running statistics) after each step
    check: Check  # all five: the verdict
    step: Callable | None = None  # the checked (wrapped) step, ready to be timed on ``batch``
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the first batch, on the device
    model: nn.Module | None = None  # the routed network the step trains


def _labelled(c: Check, what: str) -> Check:
    return c if c.ok else dataclasses.replace(c, detail=f"{what}: {c.detail}")


def net_train_agreement(ops, problem: NetTrainProblem, steps: int = 3, device="cpu", seed: int = 0,
                        wrap: Callable | None = None, optimizer_options: dict | None = None,
                        on_step: Callable[[int], None] | None = None) -> NetTrainAgreement:
    """Train ``problem``'s network routed through ``ops`` for ``steps`` steps and check each against float64.

    ``wrap(step, model, optimizer)``, ``optimizer_options`` and ``on_step(k)`` as in ``train_agreement``: the
    callable checked is the callable the benchmark times. The float64 reference runs on ``device`` when that is a
    GPU, else on the CPU. Each step k, from the implementation's parameters, buffers and optimizer state:
      1. every kinked activation and max-pool decision of the step's forward (recorded in an eager forward of the
         implementation's own) agrees with float64's within the dtype's ``check`` tolerance, and the reference
         takes it (``DecisionTape``);
      2. the loss, 3. every parameter's gradient and 5. every floating buffer after the step (BatchNorm running
         mean and variance) agree with float64's within the same ``check`` tolerance of ``problem.dtype`` — the
         one every kernel output and gradient is held to;
      4. every update equals the written-out optimizer applied to the implementation's own gradient and state, to
         ``update_check``'s few ulps.
    The check is meaningful only where the network is well conditioned in the dtype: BatchNorm over a handful of
    values per channel (layer4 of ResNet-18 at 32 px is 1×1, so batch 2 normalises pairs: x̂ = ±1 whatever the
    input, a gradient that is zero in exact arithmetic and rounding noise in float32) fails any relative
    criterion. Check at ≥ 16 values per channel in the last stage (ResNet-18: 64 px and batch 4).

    The tolerance is the dtype's entry of ``reference.tolerance.TOLERANCES``, unchanged (float32: rtol 1e-4,
    atol 1e-5·max(1, max|g|)); a deep network needs no looser one once its decisions are followed. Measured on the
    CPU in float32, worst |error| / allowed over every gradient element of 2–3 steps (1.0 would fail):
    ResNet-18 64 px batch 4: cudnn 0.20–0.22 (seeds 0, 1), im2col 0.32–0.44, naive 0.15; batch 8: cudnn 0.14;
    batch 2 (8 values per BatchNorm channel): cudnn 0.50, im2col 0.81, naive 0.34 — usable, but too close for a
    test. MobileNetV3-Small 64 px batch 4–8: cudnn 0.03, im2col 0.05, naive 0.03. Losses ≤ 0.013, BatchNorm
    running statistics ≤ 0.04, decisions ≤ 0.08 of allowed; updates within ``UPDATE_ULPS`` (≤ 6e-8 absolute).
    Without following decisions the same correct cudnn ResNet-18 step (64 px, batch 4, step 2, one ReLU of layer4
    flipped by 1.3e-6) is 4.9 M gradient elements out of tolerance."""
    storage = problem.storage
    batches = problem.make_batches(steps, seed, device)
    model = problem.build(ops, seed, device)
    optimizer = make_optimizer(problem.optimizer, model.parameters(), **(optimizer_options or {}))
    step = plain_train_step(model, optimizer)
    if wrap is not None:
        step = wrap(step, model, optimizer)
    ref_device = torch.device(device) if torch.device(device).type == "cuda" else torch.device("cpu")
    reference = NetReference(problem, seed, ref_device)
    params = dict(model.named_parameters())
    dt = problem.dtype

    losses, ref_losses, decision_checks, grad_checks, update_checks, buffer_checks = [], [], [], [], [], []
    for k, (x, y) in enumerate(batches):
        if on_step is not None:
            on_step(k)
        reference.load(model, optimizer, k)
        before = reference.parameters()
        decisions = record_decisions(model, ops, x, dt)
        ref_loss, ref_grads, checks = reference.loss_and_gradients(x, y, decisions)
        decision_checks += [_labelled(c, f"step {k}") for c in checks]
        loss = step(x, y)
        losses.append(loss.detach().to("cpu", torch.float64))
        ref_losses.append(ref_loss.to("cpu"))
        grads, checks = checked_gradients(params, reference.names, ref_grads, dt, ref_device, k,
                                          "net_train_agreement")
        grad_checks += checks
        reference.optimizer.step(grads)  # the written-out update from the implementation's gradient and state
        for pname, expected in reference.parameters().items():
            stored = params[pname].detach().to(ref_device, torch.float64)
            update_checks.append(_labelled(update_check(stored - before[pname], expected - before[pname], stored,
                                                        storage), f"step {k}, update of {pname}"))
        for bname, b in model.named_buffers():
            if b.is_floating_point():
                buffer_checks.append(_labelled(check(b, reference.model.get_buffer(bname), dt),
                                               f"step {k}, buffer {bname}"))
    losses_t, ref_losses_t = torch.stack(losses), torch.stack(ref_losses)
    loss_check = check(losses_t, ref_losses_t, dt)
    if not loss_check.ok:
        loss_check = dataclasses.replace(loss_check, detail=f"losses {losses_t.tolist()} vs reference "
                                                            f"{ref_losses_t.tolist()}: {loss_check.detail}")
    parts = (combine(*decision_checks) if decision_checks else Check(0.0, 0.0, True), loss_check,
             combine(*grad_checks), combine(*update_checks),
             combine(*buffer_checks) if buffer_checks else Check(0.0, 0.0, True))
    return NetTrainAgreement(losses_t, ref_losses_t, *parts, combine(*parts), step, batches[0], model)
