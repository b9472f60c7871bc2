"""Does the harness time ``F.conv2d`` as an independent timer does? (``python -m bench selfcheck`` asks.)

For every conv2d, conv2d_backward and pooling case of a suite, the ``cudnn`` row's timed callable is prepared exactly
as ``bench run`` prepares it (``bench.measure.prepare_case``: bound, validated against the oracle, warmed up, its loop
count calibrated) on tensors that are then handed, unchanged, to ``torch.utils.benchmark.Timer`` as the plain
``F.conv2d(x, w, b, stride=…, …)`` statement (a backward case: ``torch.autograd.grad`` of the same graph). The two
are sampled in paired rounds — one convbench sample (``bench.measure.timing.take_sample``, ``loops`` calls) and one
Timer block of as many calls (``Timer.timeit``), the order alternating — under the same grad mode and thread count, with
the garbage collector off. Per case: the median of the per-round ratios convbench/Timer and its distribution-free 95%
interval (``bench.runs.stats.paired_ratio``). On a GPU the device time of a sample is also set against
``triton.testing.do_bench`` (events around each call, L2 cleared before it), and the Timer's figure (wall time of
back-to-back calls, synchronised per block) against convbench's back-to-back wall time.

It also measures the sampler's own cost per call: an empty callable through the same CPU sample loop.

Exit 0 when the median ratio over the cases is within ``--tolerance`` (3%) of 1, 1 when it is not, 2 on bad usage.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..runs.schema import UsageError
from ..runs.stats import paired_ratio
from .cases import Case
from .measure import Prepared, fresh_inputs, grad_mode, prepare_case
from .suites import SUITES, Timing
from .timing import L2Flush, Sampler, SleepClock, back_to_back_ms, collector_off, synchronize, take_sample

#: the ops whose timed call is one plain ``torch.nn.functional`` call (or the autograd backward of one)
TIMER_OPS = ("conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d")
#: calls of the empty callable per sample of the loop-overhead measurement
EMPTY_LOOPS = 10_000


@dataclass(frozen=True)
class Agreement:
    """convbench's and an independent timer's figure for one case, in µs per call, paired over ``rounds``."""

    case: str
    timer: str  # torch.utils.benchmark.Timer | triton.testing.do_bench
    convbench_us: float
    timer_us: float
    ratio: float  # median per-round convbench/timer
    ci_low: float
    ci_high: float
    rounds: int
    loops: int
    gate: bool  # this timer decides selfcheck's exit code (CPU: Timer; GPU: do_bench, device time against device time)


def timer_statement(case: Case, prepared: Prepared, inputs: dict) -> tuple[str, dict]:
    """The ``torch.utils.benchmark.Timer`` statement doing what the case's ``cudnn`` row claims to time, written as a
    user would write it, and its globals: the very tensors the row's callable is bound to."""
    kw = case.problem.kwargs()
    named = ", ".join(f"{k}={k}" for k in kw)
    if case.op == "conv2d":
        return f"F.conv2d(x, w, b, {named})", {"F": F, "x": inputs["input"], "w": inputs["weight"],
                                               "b": inputs["bias"], **kw}
    if case.op in ("max_pool2d", "avg_pool2d"):
        return f"F.{case.op}(x, {named})", {"F": F, "x": inputs["input"], **kw}
    call = prepared.sampler.fn  # bench.measure.BackwardCall: its graph exists after the validation call
    return ("torch.autograd.grad(y, leaves, dy, retain_graph=True)",
            {"torch": torch, "y": call.out, "leaves": call.leaves, "dy": call.grad_out})


def loop_overhead_ns(samples: int = 15) -> float:
    """What the CPU sample loop costs per call, measured: the median sample of an empty callable (a call of a
    Python function that does nothing, through ``take_sample``'s own loop), in ns."""
    empty = Sampler("empty", lambda: None, loops=EMPTY_LOOPS)
    with collector_off():
        return statistics.median(take_sample(empty, "cpu", None) for _ in range(samples)) * 1e6


def _paired(case: Case, name: str, ours, theirs, rounds: int, loops: int, gate: bool) -> Agreement:
    """Alternate ``ours()`` and ``theirs()`` (each one sample in ms per call) for ``rounds`` rounds."""
    a, b = [], []
    with collector_off():
        for r in range(rounds):
            if r % 2:
                b.append(theirs())
                a.append(ours())
            else:
                a.append(ours())
                b.append(theirs())
    ratio = paired_ratio(b, a)
    return Agreement(case.key, name, statistics.median(a) * 1e3, statistics.median(b) * 1e3, ratio.ratio,
                     ratio.ci_low, ratio.ci_high, rounds, loops, gate)


def check_case(case: Case, timing: Timing, rounds: int, threads: int, seed: int = 0) -> list[Agreement]:
    """The case's agreements (one per independent timer), its call prepared with the suite's ``timing``; a case
    cudnn cannot run raises RuntimeError."""
    from torch.utils.benchmark import Timer  # imported here: it pulls in torch's C++ extension helpers

    requires_grad = case.op == "conv2d_backward"
    with grad_mode(case):
        inputs = fresh_inputs(case, seed, requires_grad)
        failed = []
        ready = prepare_case(case, ["cudnn"], timing, seed, report=failed.append, inputs=inputs)
        if "cudnn" not in ready:
            why = failed[0] if failed else None
            raise RuntimeError(f"{case.key}: cudnn did not run ({why.status if why else '?'}: "
                               f"{why.error if why else ''})")
        prepared = ready["cudnn"]
        sampler = prepared.sampler
        stmt, env = timer_statement(case, prepared, inputs)
        timer = Timer(stmt, globals=env, num_threads=threads)
        if case.device == "cpu":
            loops = sampler.loops
            return [_paired(case, "torch.utils.benchmark.Timer", lambda: take_sample(sampler, "cpu", None),
                            lambda: timer.timeit(loops).median * 1e3, rounds, loops, gate=True)]
        # on a GPU: device time against do_bench; back-to-back wall time against Timer (which synchronises per block)
        from triton.testing import do_bench  # optional dependency, needed on a GPU only

        flush, clock = L2Flush(), SleepClock()
        calls = max(3, min(200, int(20 / max(prepared.call_ms, 1e-3))))
        fn = sampler.fn
        return [
            _paired(case, "triton.testing.do_bench", lambda: take_sample(sampler, "cuda", flush, clock),
                    lambda: do_bench(fn, warmup=1, rep=5, return_mode="median"), rounds, 1, gate=True),
            _paired(case, "torch.utils.benchmark.Timer", lambda: back_to_back_ms(fn, "cuda", calls),
                    lambda: _synced(timer, calls), rounds, calls, gate=False),
        ]


def _synced(timer, calls: int) -> float:
    synchronize("cuda")
    return timer.timeit(calls).median * 1e3


def selfcheck_cases(suite: str, device: str) -> list[Case]:
    """The suite's cases whose timed call is one ``F.*`` call or its backward."""
    if suite not in SUITES:
        raise UsageError(f"--suite: unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    return [c for c in SUITES[suite].cases(device) if c.op in TIMER_OPS]


def short(timer: str) -> str:
    return {"torch.utils.benchmark.Timer": "Timer", "triton.testing.do_bench": "do_bench"}.get(timer, timer)
