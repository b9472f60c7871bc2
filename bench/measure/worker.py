"""Case isolation: every case is measured in a worker process that the runner can kill and replace.

A crash (segfault, abort), a hang or an out-of-memory in one implementation must cost that one result, not the
sweep, and a CUDA error that poisons the context must not poison later cases. The worker announces each phase
(oracle, validate, warm-up, every timing sample) before running it; the parent keeps a per-phase deadline
(``--timeout``), kills the worker when it passes or when the worker dies, records ``timeout`` / ``error`` for the
implementation in flight, starts a fresh worker, and re-submits the rest of the case.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import kernels

from ..runs.runlog import process_output_to
from .cases import Case
from .faults import inject
from .measure import Outcome, measure_case
from .profiler import profile_timed
from .suites import Timing


def inherited_env() -> tuple[tuple[str, str], ...]:
    """What a worker takes from this process's environment: the Triton interpreter switch and the visible GPUs."""
    keep = ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
    return tuple((k, os.environ[k]) for k in keep if k in os.environ)


@dataclass(frozen=True)
class WorkerConfig:
    device: str
    threads: int
    env: tuple[tuple[str, str], ...] = ()  # variables set in the worker before its first case (cache dirs)
    profile_dir: str | None = None  # run --profile: each timed case is profiled after its timing, into this run dir
    warmup_cache: str | None = None  # a directory kept across runs for the process warm-up's compiles (warm_up_cache)
    log_path: str | None = None  # the run's run.log: this process's stdout and stderr go there (bench/runs/runlog.py)


def warm_up_cache() -> Path | None:
    """Where a worker's process warm-up keeps its Inductor and Triton caches from one run to the next. The warm-up
    compiles a tiny graph only to pay what a process pays once (Inductor's imports, its C++ toolchain checks, the
    Triton driver); from a cold cache that is ~12 s on 2 CPU cores, from this one ~1 s, and no row depends on it:
    the cases compile in the run's own cold caches (bench.commands.runner.compile_caches), after one more tiny
    compile there that takes what a fresh cache directory costs once (~0.5 s) off the first case's compile_s.
    None where it cannot be written (a read-only home): the warm-up then compiles in the run's cold caches, as
    before, rather than fail and leave its cost to the first case."""
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convbench" / \
        f"warm-up-torch-{torch.__version__}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def serve(conn, config: WorkerConfig) -> None:
    """Worker main loop: receive ('case', Case, impls, Timing, seed), send phases and outcomes, then 'done'."""
    os.environ.update(dict(config.env))
    if config.log_path:  # torch's and the compilers' own messages: run.log, not the console
        process_output_to(config.log_path)
    torch.set_num_threads(config.threads)
    conn.send(("ready", torch.get_num_threads()))
    warmed = False
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        _, case, impls, timing, seed = msg
        inject("worker")  # a rehearsal's fault (bench/measure/faults.py); nothing unless CONVBENCH_FAULT is set
        if not warmed:  # process start-up lands here, not in the first case's compile_s
            conn.send(("warmup", _warm_up(config, case.device, impls,
                                          lambda name: conn.send(("phase", name, "process warm-up")))))
            warmed = True
        reported: set[str] = set()

        def report(outcome: Outcome, reported=reported) -> None:
            reported.add(outcome.impl)
            conn.send(("outcome", outcome))

        def phase(impl: str, stage: str) -> None:
            conn.send(("phase", impl, stage))

        try:
            measure_case(case, impls, timing, seed, phase=phase, report=report,
                         after_timing=_profiler(config.profile_dir, phase) if config.profile_dir else None)
        except Exception as exc:  # noqa: BLE001 — e.g. the float64 oracle ran out of memory
            for name in impls:
                if name not in reported:
                    report(Outcome(name, "error", f"case failed outside the implementation: "
                                                  f"{type(exc).__name__}: {str(exc)[:300]}"))
        poisoned = _cuda_poisoned(config.device)
        conn.send(("done", poisoned))
        if poisoned:
            return  # the parent starts a fresh process for the next case


def _profiler(run_dir: str, phase):
    """run --profile: profile each implementation timed ok on a case (bench/measure/profiler.py) into the run
    directory."""
    return lambda case, timed: profile_timed(case, timed, Path(run_dir), announce=lambda name: phase(name, "profile"))


def _warm_up(config: WorkerConfig, device: str, impls: list[str], phase) -> dict[str, float]:
    """The process warm-up, in the kept warm-up cache when the config names one (then once more, smaller, in the
    run's cold caches: see warm_up_cache); the seconds each step took."""
    if config.warmup_cache is None:
        return warm_up_process(device, impls, phase)
    cold = {k: os.environ.get(k) for k in _CACHE_VARS}
    os.environ.update({k: str(Path(config.warmup_cache) / sub) for k, sub in _CACHE_VARS.items()})
    try:
        spent = warm_up_process(device, impls, phase)
    finally:
        for k, v in cold.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cold_spent = warm_up_process(device, impls, phase, size=7, full=False)
    return {**spent, **{f"{name} (run cache)": s for name, s in cold_spent.items()}}


#: the compile caches a process warm-up may keep (variable → its sub-directory of the warm-up cache)
_CACHE_VARS = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def warm_up_process(device: str, impls: list[str], phase=lambda name: None, size: int = 8,
                    full: bool = True) -> dict[str, float]:
    """Run every compiling implementation (``jit``) once on a tiny conv (forward and backward) and pools before
    the first case, so that what a process pays once — imports, Inductor's compile workers and C++ toolchain,
    the Triton driver and CUDA context — is not charged to the first case's compile_s (the others have no
    compile_s, and their first-call costs fall in untimed warm-up). Nothing is recorded but the seconds each took
    (env.json ``worker_warmup_s``); a failure here is left for the real cases to report, and a hang or crash is
    charged to the implementation announced by ``phase``."""
    spent = {}
    for name in impls:
        impl = kernels.get(name)
        if not impl.jit or impl.unavailable_reason(device) or impl.correctness_only(device):
            continue
        phase(name)
        t0 = time.perf_counter()
        try:
            x = torch.randn(1, 4, size, size, device=device, requires_grad=True)
            w = torch.randn(4, 4, 3, 3, device=device, requires_grad=True)
            if full:
                impl.conv2d(x, w, None, 1, 1).sum().backward()
            with torch.no_grad():
                impl.conv2d(x, w, None, 1, 1)
                if full:
                    impl.max_pool2d(x, 2)
                    impl.avg_pool2d(x, 2)
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 — warm-up only; the cases check and report this implementation
            pass
        spent[name] = round(time.perf_counter() - t0, 3)
    return spent


def _cuda_poisoned(device: str) -> str | None:
    if device != "cuda":
        return None
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
        torch.cuda.empty_cache()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


#: seconds a fresh worker may take to import torch and start (less when a deadline is nearer)
START_TIMEOUT_S = 300.0


class Supervisor:
    """Owns the worker process and turns crashes and hangs into outcomes."""

    def __init__(self, config: WorkerConfig, timeout_s: float) -> None:
        self.config, self.timeout_s = config, timeout_s
        self.ctx = mp.get_context("spawn")
        self.proc = None
        self.conn = None
        self.threads: int | None = None
        self.restarts = 0
        self.cut: str | None = None  # set when a run's deadline cut a case short (what was in flight)
        self.warmups: list[dict[str, float]] = []  # seconds per implementation, one entry per worker process

    def _start(self, deadline: float | None = None) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=serve, args=(child, self.config), daemon=True, name="convbench-worker")
        self.proc.start()
        child.close()
        wait = START_TIMEOUT_S if deadline is None else max(1.0, min(START_TIMEOUT_S, deadline - time.monotonic()))
        if not self.conn.poll(wait):
            self._kill()
            raise RuntimeError(f"the benchmark worker did not start within {wait:.0f} s")
        _, self.threads = self.conn.recv()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(10)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(("stop",))
                self.proc.join(10)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def _death(self) -> str:
        if self.proc is not None:
            self.proc.join(5)  # reap it, so that the exit code or signal is known
        code = self.proc.exitcode if self.proc is not None else None
        if code is not None and code < 0:
            return f"worker killed by signal {signal.Signals(-code).name}"
        return f"worker exited with code {code}"

    def measure(self, case: Case, impls: list[str], timing: Timing, seed: int,
                deadline: float | None = None) -> Iterator[Outcome]:
        """Yield one Outcome per implementation of ``case``, whatever happens to the worker. ``deadline``
        (time.monotonic()): when it passes mid-case, the worker is killed, the implementation in flight gets a
        ``timeout`` row, the others none (they stay for --resume), and ``cut`` says what was cut."""
        pending = list(impls)
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                self.cut = f"{case.key}: {', '.join(pending)} not started"
                return
            if self.proc is None or not self.proc.is_alive():
                try:
                    self._start(deadline)
                except RuntimeError:
                    if deadline is None or time.monotonic() < deadline:
                        raise
                    self.cut = f"{case.key}: the worker was still starting at the run's deadline"
                    return
            self.conn.send(("case", case, pending, timing, seed))
            current, stage, phase_deadline = None, "starting", time.monotonic() + self.timeout_s
            failure = None
            while True:
                try:
                    ready = self.conn.poll(0.2)
                    msg = self.conn.recv() if ready else None
                except (EOFError, OSError):
                    failure = ("error", f"{self._death()} while {stage}")
                    break
                if msg is None:
                    if not self.proc.is_alive():
                        failure = ("error", f"{self._death()} while {stage}")
                        break
                    if time.monotonic() > phase_deadline:
                        failure = ("timeout", f"exceeded --timeout {self.timeout_s:g}s while {stage}")
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        failure = ("timeout", f"the run's deadline passed while {stage}")
                        self.cut = f"{case.key}: {stage}"
                        break
                    continue
                if msg[0] == "phase":
                    current, stage = msg[1], f"{msg[2]} ({msg[1]})"
                    phase_deadline = time.monotonic() + self.timeout_s
                elif msg[0] == "warmup":
                    self.warmups.append(msg[1])
                elif msg[0] == "outcome":
                    if msg[1].impl in pending:
                        pending.remove(msg[1].impl)
                        yield msg[1]
                elif msg[0] == "done":
                    if msg[1]:  # the CUDA context is poisoned: this process cannot run another case
                        self.proc.join(10)
                        self._kill()
                        self.restarts += 1
                    for name in pending:
                        yield Outcome(name, "error", "the worker returned no result for this implementation")
                    pending = []
                    break
            if failure is None:
                continue
            self._kill()
            self.restarts += 1
            status, message = failure
            if self.cut:  # out of time: what was in flight is a timeout, the rest is left for --resume
                if current in pending:
                    yield Outcome(current, status, message)
                return
            if current in pending:  # that implementation is to blame; the others are re-run in a fresh worker
                pending.remove(current)
                yield Outcome(current, status, message)
            else:  # the oracle (or start-up) failed: nothing can be checked for this case
                for name in pending:
                    yield Outcome(name, status, message)
                pending = []
