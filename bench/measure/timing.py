"""Timing primitives: warm-up, loop calibration, samples, interleaved rounds, adaptive stopping, statistics.

CPU: ``time.perf_counter`` around ``loops`` back-to-back calls (loops calibrated so one sample lasts about
``target_sample_ms``; the thread count is set explicitly by the caller and recorded), garbage collection off.
GPU: one call per sample between two CUDA events, with the L2 cache flushed (a write of twice its size) before
each sample so that no implementation is timed on data its predecessor left in cache; synchronised per sample.
Between the flush and the start event the GPU is kept busy by a ``torch.cuda._sleep`` sized from the call's own
measured host time (×1.5 + 20 µs), so the host work of the call (Python dispatch, autotuner lookup, autograd,
Dynamo guards) is enqueued while the device sleeps and does not land inside the event window: the sample is
device time. The host cost is reported apart: ``host_us`` = wall time per call of back-to-back calls minus the
median device time (what a training loop of this call would lose to the host).
A GPU training step (``wall_timed``) is the exception: its figure is what a training loop gets, so a sample is the
wall time of ``loops`` back-to-back steps, synchronised once before and once at the end (loops calibrated like the
CPU's, at least ``MIN_WALL_STEPS``), with no sleep and no L2 flush: the host work of a step counts, and an eager
step and a CUDA-graph replay differ by exactly what the host saves (``WALL_TIMING_MODE`` in the row).

Implementations are sampled in rounds — one sample of each per round, the order rotating every round — so that
slow drifts of the machine (thermal, frequency, neighbours) hit all of them alike. An implementation leaves the
rotation when it has converged or spent its budget, except the control (``CONTROL``, the library that ``bench
compare`` normalises by), which stays while any other implementation of the case is still sampling.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..runs.stats import NOISY_IQR, median_ci, summarize  # noqa: F401 — re-exported
from .suites import Timing

#: GPU training steps: the fewest back-to-back steps in one wall-clock sample
MIN_WALL_STEPS = 3
#: the rows' ``timing_mode`` (before ``loops=``) of wall-timed GPU rows (``wall_timed``)
WALL_TIMING_MODE = "wall-clock,back-to-back,cuda-sync-at-end"


def wall_timed(op: str, device: str) -> bool:
    """Whether a case is timed as wall time of back-to-back calls synchronised at the end rather than between CUDA
    events: a training step on a GPU (on the CPU every sample is wall time already)."""
    return op == "train_step" and device == "cuda"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class SleepClock:
    """``torch.cuda._sleep`` cycles per microsecond, measured once per process with CUDA events."""

    def __init__(self) -> None:
        cycles = 1_000_000
        torch.cuda._sleep(1000)  # first launch: module load, not the sleep itself
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        self.cycles_per_us = cycles / max(1.0, start.elapsed_time(end) * 1e3)

    def cycles(self, us: float) -> int:
        return int(self.cycles_per_us * us)


#: the GPU sleeps this much longer than the host needs to enqueue a call (and 1.5× that host time)
SLEEP_MARGIN_US = 20.0


def sleep_cycles(clock: SleepClock, host_ms: float) -> int:
    """Cycles of GPU sleep that cover a call's host time with margin."""
    return clock.cycles(host_ms * 1e3 * 1.5 + SLEEP_MARGIN_US)


def host_overhead_us(wall_ms_per_call: float, device_ms: float) -> float:
    """Host overhead per call that the device cannot hide: back-to-back wall time per call minus device time
    (never negative: a call whose host work overlaps its kernels entirely costs nothing extra)."""
    return max(0.0, (wall_ms_per_call - device_ms) * 1e3)


def enqueue_ms(fn: Callable[[], object]) -> float:
    """Host time of one call on a GPU: from an idle device to the call's return (its kernels enqueued, not run)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    return ms


def back_to_back_ms(fn: Callable[[], object], device: str, calls: int) -> float:
    """Wall time per call of ``calls`` calls in a row, synchronised once at each end."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3 / calls


class L2Flush:
    """A buffer of twice the GPU's L2 size, zeroed before each sample to evict whatever the last call left."""

    def __init__(self) -> None:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        size = max(2 * getattr(props, "L2_cache_size", 50 << 20), 64 << 20)
        self.buffer = torch.empty(size, dtype=torch.uint8, device="cuda")

    def __call__(self) -> None:
        self.buffer.zero_()


@dataclass
class Sampler:
    """Timing state of one implementation on one case."""

    name: str
    fn: Callable[[], object]
    loops: int = 1
    samples_ms: list[float] = field(default_factory=list)
    spent_s: float = 0.0
    done: bool = False
    host_ms: float = 0.0  # GPU: host time to enqueue one call, sizes the sleep before each sample
    wall: bool = False  # GPU: wall time of ``loops`` back-to-back calls, synchronised at the end (see wall_timed)


def warm_up(fn: Callable[[], object], device: str, warmup_ms: float) -> float:
    """Call ``fn`` until ``warmup_ms`` has passed (at least twice); return the fastest call in ms."""
    best, deadline, calls = math.inf, time.perf_counter() + warmup_ms / 1e3, 0
    while calls < 2 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) * 1e3)
        calls += 1
        if calls >= 1000:
            break
    return best


def calibrate_loops(call_ms: float, device: str, target_sample_ms: float, wall: bool = False) -> int:
    """CPU: repeat short calls so a sample is long against timer resolution and scheduler noise. GPU: one call per
    sample (events time the device, and the L2 flush must sit between calls), except ``wall``-timed calls (a
    training step), repeated like the CPU's and at least MIN_WALL_STEPS times."""
    if device == "cuda" and not wall:
        return 1
    loops = int(min(10_000, max(1, math.ceil(target_sample_ms / max(call_ms, 1e-4)))))
    return max(MIN_WALL_STEPS, loops) if device == "cuda" else loops


def take_sample(sampler: Sampler, device: str, flush: L2Flush | None, clock: SleepClock | None = None) -> float:
    """One sample in ms per call."""
    fn, loops = sampler.fn, sampler.loops
    if device == "cuda" and sampler.wall:  # a training loop's figure: its host work counts, nothing sleeps
        return back_to_back_ms(fn, device, loops)
    if device == "cuda":
        if flush is not None:
            flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if clock is not None and sampler.host_ms > 0:
            torch.cuda._sleep(sleep_cycles(clock, sampler.host_ms))  # busy while the host enqueues the call
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) * 1e3 / loops


def converged(samples: list[float], timing: Timing) -> bool:
    if len(samples) < timing.min_samples:
        return False
    lo, hi = median_ci(samples)
    med = float(np.median(samples))
    return med > 0 and (hi - lo) / 2 <= timing.rel_precision * med


#: the implementation ``bench compare`` normalises by: it stays in rotation while any other implementation of the
#: case is still sampling, so every round of every implementation is also a round of the control
CONTROL = "cudnn"


@contextlib.contextmanager
def collector_off():
    """The garbage collector off inside the block (no collection lands in a sample), as it was after it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def time_interleaved(samplers: list[Sampler], device: str, timing: Timing,
                     on_sample: Callable[[str], None] | None = None, control: str | None = CONTROL) -> None:
    """Sample every implementation in rotating rounds until each has converged or used its budget. The ``control``
    (when it is one of the samplers) leaves the rotation only once it has converged or used its budget *and* every
    other implementation has left: its samples keep being recorded, so it is timed in every round its subjects
    are."""
    events = device == "cuda" and any(not s.wall for s in samplers)  # wall-timed samples need neither
    flush = L2Flush() if events else None
    clock = SleepClock() if events else None
    with collector_off():
        rnd = 0
        while True:
            subjects_left = any(not s.done for s in samplers if s.name != control)
            active = [s for s in samplers if not s.done or (s.name == control and subjects_left)]
            if not active:
                break
            shift = rnd % len(active)
            for s in active[shift:] + active[:shift]:
                if on_sample:
                    on_sample(s.name)
                t0 = time.perf_counter()
                s.samples_ms.append(take_sample(s, device, flush, clock))
                s.spent_s += time.perf_counter() - t0
                n = len(s.samples_ms)
                s.done = (n >= timing.max_samples or converged(s.samples_ms, timing)
                          or (s.spent_s >= timing.max_seconds and n >= min(timing.min_samples, 3)))
            rnd += 1
