"""Measure one case: the float64 answer, then per implementation validate → (if right) time, interleaved.

This runs inside the worker process (bench/measure/worker.py). Nothing is timed before it has been compared with the
oracle: a wrong result is recorded as ``mismatch`` with its errors, an exception as ``error``.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.profiler

import kernels
from reference import Check, NetTrainProblem, check, check_exact, combine, oracle

from .cases import Case
from .net_train import net_train_call
from .suites import Timing
from .timing import (
    NOISY_IQR,
    Sampler,
    back_to_back_ms,
    calibrate_loops,
    enqueue_ms,
    host_overhead_us,
    summarize,
    synchronize,
    time_interleaved,
    wall_timed,
    warm_up,
)
from .train import train_call

#: how the facts of several records combine (kernels.merge_facts); a ``bench ab`` side whose kernels predate that
#: public name has the same function in the module it came from
merge_facts = getattr(kernels, "merge_facts", None) or kernels._provenance.merge
GRAD_SEED = 1234  # the fixed output gradient of conv2d_backward cases
#: interpreter implementations (correctness only) are validated on cases up to this many FLOPs
INTERPRETER_FLOP_LIMIT = 2e7


def set_precision(dtype: str) -> None:
    """float32 means IEEE fp32 math everywhere; tf32 lets cuDNN and cuBLAS use TF32 tensor cores."""
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def grad_mode(case: Case) -> torch.autograd.grad_mode.set_grad_enabled:
    """The grad mode a case is validated and timed under, set once around it (never per call): autograd recording
    only for a training step; forward rows are inference, and a backward row's gradients are computed by the
    autograd engine whatever the mode (its graph is built with grad enabled on the untimed first call)."""
    return torch.set_grad_enabled(case.op == "train_step")


@dataclass
class Expected:
    """The oracle's answer for a case, computed once from the same (dtype-rounded) inputs every impl gets."""

    tensors: dict
    output: object = None  # conv2d / pools: tensor, or (values, indices)
    grads: tuple | None = None  # conv2d_backward: (d input, d weight, d bias?)
    grad_out: torch.Tensor | None = None


def make_grad_out(case: Case, tensors: dict) -> torch.Tensor:
    """The fixed output gradient ``dy`` a conv2d_backward case hands every implementation (and the oracle): drawn
    from N(0, 1) in float64 on the CPU from ``GRAD_SEED`` (bit-identical on every device and for every seed of the
    inputs), in the shape of the conv's output, cast to the dtype of ``tensors["input"]`` (the case's inputs, from
    ``problem.make_inputs``), on the case's device, and in the memory format the forward's output has:
    channels_last for a channels_last problem — in training, dy comes from the next layer's backward in y's layout,
    so a timed backward must not pay an NCHW→NHWC copy of dy that training never makes."""
    p = case.problem
    gen = torch.Generator().manual_seed(GRAD_SEED)
    dy = torch.randn(p.output_shape, generator=gen, dtype=torch.float64).to(case.device, tensors["input"].dtype)
    if case.layout == "channels_last":
        dy = dy.contiguous(memory_format=torch.channels_last)
    return dy


def expected_for(case: Case, seed: int) -> Expected:
    p = case.problem
    if case.op == "train_step":  # checked per implementation, step by step, inside train_agreement
        return Expected({})
    tensors = p.make_inputs(case.device, seed)
    ref = {k: (v.detach().double() if v is not None else None) for k, v in tensors.items()}
    if case.op == "conv2d":
        return Expected(tensors, output=oracle.conv2d(ref["input"], ref["weight"], ref["bias"], **p.kwargs()))
    if case.op in ("max_pool2d", "avg_pool2d"):
        return Expected(tensors, output=getattr(oracle, case.op)(ref["input"], **p.kwargs()))
    if case.op == "conv2d_backward":
        leaves = [v.requires_grad_(True) for v in ref.values() if v is not None]
        with torch.enable_grad():  # the oracle's graph, whatever the case's grad mode
            out = oracle.conv2d(ref["input"], ref["weight"], ref["bias"], **p.kwargs())
        grad_out = make_grad_out(case, tensors)
        grads = torch.autograd.grad(out, leaves, grad_out.double())
        return Expected(tensors, grads=grads, grad_out=grad_out)
    raise ValueError(f"measure: op {case.op!r} has no oracle here")


def fresh_inputs(case: Case, seed: int, requires_grad: bool) -> dict:
    """The case's inputs drawn from ``seed``; leaves that require grad when asked, whatever the grad mode."""
    with torch.set_grad_enabled(requires_grad or torch.is_grad_enabled()):
        return case.problem.make_inputs(case.device, seed, requires_grad=requires_grad)


def build_call(impl, case: Case, seed: int, expected: Expected,
               phase: Callable[[str], None] | None = None, inputs: dict | None = None,
               public: bool = False) -> tuple[Callable[[], object], Callable[[object], Check]]:
    """The zero-argument callable to time for this (impl, case), and how to check what it returns. ``phase(stage)``
    announces each long step of the setup (a train_step case's checked steps, one watchdog phase each).
    ``inputs``: the tensors to bind (``fresh_inputs`` of the case; default: drawn here).

    A forward op's callable is ``impl.bind(op, …)``: the public method's argument checks run here, once, and each
    call does only the implementation's own work — no check, no grad-mode switch (the caller sets ``grad_mode``
    once around validation and sampling, and builds the call under it too: torch.compile keys its graphs on it).
    ``public``: time the public method instead, checks and all, per call (see ``bound``)."""
    p, dtype = case.problem, case.dtype
    if case.op == "train_step":
        if isinstance(p, NetTrainProblem):  # a torchvision network's step, its convs and pools routed to impl
            return net_train_call(impl, case, seed, phase=phase)
        return train_call(impl, case, seed, phase=phase)
    if case.op == "conv2d":
        t = inputs or fresh_inputs(case, seed, False)
        call = bound(impl, "conv2d", public, t["input"], t["weight"], t["bias"], **p.kwargs())
        return call, lambda out: check(out, expected.output, dtype)
    if case.op in ("max_pool2d", "avg_pool2d"):
        call = bound(impl, case.op, public, (inputs or fresh_inputs(case, seed, False))["input"], **p.kwargs())

        def verify(out):
            if isinstance(expected.output, tuple):
                return combine(check(out[0], expected.output[0], dtype), check_exact(out[1], expected.output[1]))
            return check(out, expected.output, dtype)
        return call, verify
    if case.op == "conv2d_backward":
        t = inputs or fresh_inputs(case, seed, True)
        return BackwardCall(impl, t, p.kwargs(), expected.grad_out), \
            lambda grads: combine(*(check(g, e, dtype) for g, e in zip(grads, expected.grads)))
    raise ValueError(f"measure: op {case.op!r} is not measured here")


#: the provenance fact of a row timed through the public method (``bound``)
PUBLIC_PATH = ("the public method per call, argument checks included: these kernels predate Implementation.bind, "
               "or bench ab times both sides this way because one side's kernels do")


def has_bind(impl) -> bool:
    return callable(getattr(impl, "bind", None))


def bound(impl, op: str, public: bool, *args, **kwargs) -> Callable[[], object]:
    """``impl.bind(op, …)``; or, when ``public`` or the implementation predates ``bind`` (a BASE revision's kernels
    under ``bench ab``, a plugin on an older base class), a closure calling the public method — the rows say so
    (``PUBLIC_PATH`` in their provenance), and ``bench ab`` then times both sides that way so the harness's path
    never differs between them."""
    if not public and has_bind(impl):
        return impl.bind(op, *args, **kwargs)
    fn = getattr(impl, op)
    return lambda: fn(*args, **kwargs)


class BackwardCall:
    """A conv2d_backward case's timed callable: the gradients of one forward graph, re-walked every call. The
    graph is built on the first call, so that call (whose cost beyond a steady call is compile_s) holds all the
    implementation's first-call work — a compiled forward and backward, an autotuned forward and the backward
    kernels — on inputs that already exist; what the forward ran is recorded apart (``forward_record``), so the
    row's backend names the backward."""

    def __init__(self, impl, tensors: dict, kwargs: dict, grad_out: torch.Tensor) -> None:
        self.impl, self.t, self.kwargs, self.grad_out = impl, tensors, kwargs, grad_out
        self.leaves = [v for v in tensors.values() if v is not None]
        self.out = None
        self.forward_record = None

    def __call__(self):
        if self.out is None:  # the untimed first call builds the graph, with grad enabled whatever the case's mode
            with kernels.recording() as self.forward_record, torch.enable_grad():
                self.out = self.impl.conv2d(self.t["input"], self.t["weight"], self.t["bias"], **self.kwargs)
        return torch.autograd.grad(self.out, self.leaves, self.grad_out, retain_graph=True)


@dataclass
class Outcome:
    """What the worker reports for one (case, implementation)."""

    impl: str
    status: str
    error: str = ""
    backend: str = ""
    times_ms: tuple[float, ...] = ()
    loops: int = 0
    compile_s: float | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    warning: str = ""
    instructions: float | None = None  # Callgrind count per call (run --metric instructions)
    provenance: dict | None = None  # what the implementation said it ran (kernels.note facts), for the row
    host_us: float | None = None  # GPU: back-to-back wall time per call minus device time (not for wall-timed rows)


def _unsupported(impl, case: Case) -> str | None:
    """The implementation's own reason for not running this op or problem (``Implementation.unsupported``; kernels
    that predate it support every op)."""
    unsupported = getattr(impl, "unsupported", None)
    return unsupported(case.op, case.problem) if unsupported else None


def _what_ran(first, *others) -> kernels.Record:
    """One record for the row: the labels of the first timed-callable call (what is timed; else those of the
    setup, e.g. a train row's checked steps), and the facts of every record (compile counters and generated code
    may come from the forward a backward row builds, or from a train row's first checked step)."""
    facts: dict = {}
    for rec in (*others, first):
        if rec is not None:
            merge_facts(facts, rec.facts)
    labels = first.labels or next((r.labels for r in others if r is not None and r.labels), [])
    return kernels.Record(list(labels), facts)


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"[:500]


def _errs(c: Check) -> tuple[float | None, float | None]:
    finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731
    return finite(c.max_abs_err), finite(c.max_rel_err)


@dataclass
class Prepared:
    """An implementation validated on a case and warmed up, ready to be sampled: ``call`` is what is timed."""

    sampler: Sampler
    outcome: Outcome
    first_s: float
    call_ms: float


def prepare_case(case: Case, impl_names: list[str], timing: Timing, seed: int = 0,
                 phase: Callable[[str, str], None] = lambda impl, stage: None,
                 report: Callable[[Outcome], None] = lambda o: None,
                 inputs: dict | None = None, public: bool = False) -> dict[str, Prepared]:
    """Validate every implementation on ``case`` against the oracle and warm up the correct ones; ``report`` each
    outcome that is final already (unsupported, skipped, error, mismatch); return the rest, ready to time.
    ``inputs``: tensors to bind every implementation's call to (``fresh_inputs(case, seed, …)``; ``bench
    selfcheck`` hands the same ones to an independent timer); default: fresh ones per implementation.

    ``public``: time each forward op through its public method (``bound``; bench ab across the change to ``bind``).

    Runs under ``grad_mode(case)``; so must the samplers' calls (``measure_case`` sets it around the whole case)."""
    with grad_mode(case):
        return _prepare_case(case, impl_names, timing, seed, phase, report, inputs, public)


def _prepare_case(case, impl_names, timing, seed, phase, report, inputs, public) -> dict[str, Prepared]:
    set_precision(case.dtype)
    if case.device == "cuda":
        torch.backends.cudnn.benchmark = True
    phase("oracle", "reference")
    expected = expected_for(case, seed)
    ready: dict[str, Prepared] = {}
    for name in impl_names:
        impl = kernels.get(name)
        backend = impl.backend(case.op, case.device, case.problem)
        why = impl.unavailable_reason(case.device) or _unsupported(impl, case)
        if why:  # nothing ran: the backend is none
            report(Outcome(name, "unsupported", why, "none"))
            continue
        only_check = impl.correctness_only(case.device)
        if only_check and case.flops() > INTERPRETER_FLOP_LIMIT:
            report(Outcome(name, "skipped", f"{only_check}; case too large to check there ({case.flops():.3g} FLOP)",
                           "none"))
            continue
        phase(name, "validate")
        try:
            with kernels.recording() as setup:  # inputs (and, for backward and train rows, what they need)
                call, verify = build_call(impl, case, seed, expected,
                                          phase=lambda stage, name=name: phase(name, stage), inputs=inputs,
                                          public=public)
            # compile_s starts here, on existing inputs: the first timed-callable call compiles / autotunes
            t0 = time.perf_counter()
            with kernels.recording() as first:
                observed = getattr(impl, "observed_call", None)  # absent from kernels that predate bind
                result = observed(case.op, call, case.problem, case.device) if observed else call()
                synchronize(case.device)
            first_s = getattr(call, "first_step_s", None) or time.perf_counter() - t0
            verdict = verify(result)
        except Exception as exc:  # noqa: BLE001 — any failure of an implementation is a result, not a crash
            report(Outcome(name, "error", _describe(exc), backend))
            continue
        ran = _what_ran(first, setup, getattr(call, "forward_record", None))
        backend, facts = impl.ran(case.op, case.device, case.problem, ran), ran.facts or None
        if case.op in kernels.OPS and (public or not has_bind(impl)):
            facts = {**(facts or {}), "timed": PUBLIC_PATH}
        abs_err, rel_err = _errs(verdict)
        if not verdict.ok:
            report(Outcome(name, "mismatch", verdict.detail, backend, max_abs_err=abs_err, max_rel_err=rel_err,
                           provenance=facts))
            continue
        if only_check:
            report(Outcome(name, "skipped", f"{only_check}: agrees with the oracle, not timed", backend,
                           max_abs_err=abs_err, max_rel_err=rel_err, provenance=facts))
            continue
        try:
            phase(name, "warm-up")
            call_ms = warm_up(call, case.device, timing.warmup_ms)
        except Exception as exc:  # noqa: BLE001
            report(Outcome(name, "error", _describe(exc), backend, max_abs_err=abs_err, max_rel_err=rel_err))
            continue
        sampler = make_sampler(name, call, case, call_ms, timing)
        ready[name] = Prepared(sampler, Outcome(name, "ok", "", backend, max_abs_err=abs_err, max_rel_err=rel_err,
                                                provenance=facts), first_s, call_ms)
    return ready


def make_sampler(name: str, call: Callable[[], object], case: Case, call_ms: float, timing: Timing) -> Sampler:
    """The timing state of a validated, warmed-up ``call`` (``call_ms``: its fastest warm-up call). A GPU
    train_step is timed as a training loop runs (``bench.measure.timing.wall_timed``): wall time of back-to-back steps,
    synchronised at the end, looped so a sample lasts ``target_sample_ms`` (at least MIN_WALL_STEPS steps); any other
    GPU call is device time between CUDA events, its host time measured here to size the sleep before each
    sample."""
    wall = wall_timed(case.op, case.device)
    sampler = Sampler(name, call, calibrate_loops(call_ms, case.device, timing.target_sample_ms, wall=wall),
                      wall=wall)
    if case.device == "cuda" and not wall:
        sampler.host_ms = min(enqueue_ms(call) for _ in range(3))
    return sampler


def measure_case(case: Case, impl_names: list[str], timing: Timing, seed: int = 0,
                 phase: Callable[[str, str], None] = lambda impl, stage: None,
                 report: Callable[[Outcome], None] = lambda o: None,
                 after_timing: Callable[[Case, dict[str, Prepared]], None] | None = None,
                 profile: bool | None = None) -> None:
    """Validate every implementation on ``case``, then time the correct ones interleaved; ``report`` each outcome
    as soon as it is final; ``phase(impl, stage)`` announces what is about to run (the parent's watchdog).
    ``after_timing(case, timed)``: called once every row is final, with the implementations timed ok (run --profile:
    the profiler never sees a timed sample, and its calls never become one).

    After timing, each implementation makes one more call (did the timed calls run the steady state?) and, on a GPU,
    its ``host_us`` is measured — before any torch.profiler session of the case, so that no profiler state (CUPTI
    initialised, re-initialised after a CUDA-graph capture) is in it. ``profile``: also label each GPU row with the
    kernels one steady call launches (``gpu_kernels`` in its provenance, a torch.profiler session per row); by
    default only when ``after_timing`` is given, i.e. under ``run --profile``."""
    with grad_mode(case):  # once around validation, sampling and what follows; never per call
        _measure_case(case, impl_names, timing, seed, phase, report, after_timing, profile)


def _measure_case(case, impl_names, timing, seed, phase, report, after_timing, profile) -> None:
    profile = after_timing is not None if profile is None else profile
    ready = prepare_case(case, impl_names, timing, seed, phase, report)
    if not ready:
        return
    timed: dict[str, Prepared] = {}
    try:
        retried = time_case([p.sampler for p in ready.values()], case.device, timing, phase)
    except Exception as exc:  # noqa: BLE001 — a failure mid-timing fails every impl still being timed
        for p in ready.values():
            report(Outcome(p.outcome.impl, "error", f"during timing: {_describe(exc)}", p.outcome.backend))
        return
    to_label: list[Prepared] = []  # GPU rows that get their kernels named once every host_us is measured
    for p in ready.values():
        sampler, outcome = p.sampler, p.outcome
        impl = kernels.get(outcome.impl)
        try:
            phase(outcome.impl, "steady-state check")
            with kernels.recording() as after:  # one more call: did the timed calls run the steady state?
                sampler.fn()
                synchronize(case.device)
            unsteady = impl.steady_state_problem(after)
        except Exception as exc:  # noqa: BLE001
            unsteady = f"the call after timing failed: {_describe(exc)}"
        if unsteady:
            report(Outcome(outcome.impl, "error", unsteady, outcome.backend, provenance=outcome.provenance))
            continue
        stats = summarize(sampler.samples_ms)
        if case.device == "cuda" and not sampler.wall:  # the host cost the device time leaves out
            calls = max(3, min(200, int(200 / max(stats.median_ms, 1e-3))))
            outcome.host_us = host_overhead_us(back_to_back_ms(sampler.fn, case.device, calls), stats.median_ms)
        outcome.times_ms = tuple(sampler.samples_ms)
        outcome.loops = sampler.loops
        if impl.jit:  # the first call's cost beyond one steady call: compile/autotune time
            outcome.compile_s = max(0.0, p.first_s - stats.median_ms / 1e3)
        if stats.spread > NOISY_IQR:
            outcome.warning = f"noisy: IQR is {stats.spread:.0%} of the median"
        if retried:
            outcome.warning = "; ".join(filter(None, [outcome.warning, "re-timed once after a noisy first attempt"]))
        if profile and case.device == "cuda":
            to_label.append(p)
            continue
        report(outcome)
        timed[outcome.impl] = p
    for p in to_label:  # the profiler comes after every measurement of the case
        outcome = p.outcome
        phase(outcome.impl, "profile kernels")
        kernels_ran = gpu_kernels(p.sampler.fn)
        if kernels_ran:
            outcome.provenance = {**(outcome.provenance or {}), "gpu_kernels": kernels_ran}
        report(outcome)
        timed[outcome.impl] = p
    if after_timing is not None and timed:
        after_timing(case, timed)


def gpu_kernels(fn, top: int = 8) -> list[dict] | None:
    """The GPU kernels one steady call launches, by device time (torch.profiler): the names say which cuDNN
    engine, cuBLAS GEMM or generated kernel ran. None where the profiler is unavailable."""
    try:
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        cuda = torch.autograd.DeviceType.CUDA
        events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0
                  and getattr(e, "device_type", cuda) == cuda]  # kernels, not the CPU ops that launched them
    except Exception:  # noqa: BLE001 — a profiler that cannot start (CUPTI busy) leaves the row unlabelled
        return None
    events.sort(key=lambda e: -e.device_time_total)
    return [{"name": e.key[:160], "us": round(e.device_time_total, 2), "calls": e.count} for e in events[:top]]


def time_case(samplers: list[Sampler], device: str, timing: Timing, phase) -> bool:
    """Time the samplers interleaved. If any came out noisy (IQR > NOISY_IQR of its median: a neighbour, a
    frequency change), time the whole case once more after a pause and keep whichever attempt was quieter (the
    smaller worst spread) — slowdowns are one-sided, so the quieter attempt is the better estimate. All samples of
    the kept attempt are reported. Returns whether the case was re-timed."""
    def worst(ss):
        return max(summarize(s.samples_ms).spread for s in ss)

    time_interleaved(samplers, device, timing, on_sample=lambda name: phase(name, "time"))
    if worst(samplers) <= NOISY_IQR:
        return False
    time.sleep(0.5)
    again = [Sampler(s.name, s.fn, s.loops, host_ms=s.host_ms, wall=s.wall) for s in samplers]
    time_interleaved(again, device, timing, on_sample=lambda name: phase(name, "time"))
    if worst(again) < worst(samplers):
        for old, new in zip(samplers, again):
            old.samples_ms, old.spent_s = new.samples_ms, new.spent_s
    return True
