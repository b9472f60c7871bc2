"""A measuring process driven one request at a time: the two sides of ``bench ab``, and the valgrind process of
``--metric instructions``.

Unlike the run worker (bench/measure/worker.py), which measures a whole case on its own, a peer does what it is told —
prepare a case (oracle, validate, warm up), take one sample of one implementation, count one implementation's
instructions, release the case — so that the parent can interleave two peers sample by sample.

A peer is a fresh interpreter (``python -m bench.measure.peer FD``, optionally under valgrind) whose ``PYTHONPATH``
starts with a *farm*: a directory of three links, ``bench`` → the invoking checkout's harness, ``kernels`` and
``reference`` → the revision under test. The harness (timing, statistics) is the same on both sides; the
implementations are each revision's own. Requests and replies are pickled over a socket pair.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from .callgrind import Counter

HARNESS = Path(__file__).resolve().parents[1]  # the bench package


class PeerError(RuntimeError):
    """The peer died or did not answer in time; ``status`` is ``error`` or ``timeout``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_farm(farm: Path, checkout: Path) -> Path:
    """``farm/{bench,kernels,reference}``: this harness, and the implementations of ``checkout``."""
    farm.mkdir(parents=True, exist_ok=True)
    for name, target in (("bench", HARNESS), ("kernels", checkout / "kernels"), ("reference", checkout / "reference")):
        link = farm / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    return farm


class Peer:
    """The parent's handle on one peer process."""

    def __init__(self, label: str, farm: Path, device: str, threads: int, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None, start_timeout: float = 600.0, cpus: set[int] | None = None,
                 log: Path | None = None) -> None:
        self.label, self.farm, self.device, self.threads = label, Path(farm), device, threads
        self.log = log  # where the process's stderr goes (torch's and the compilers' messages); None: inherited
        self.cpus = cpus
        self.env, self.prefix, self.start_timeout = dict(env or {}), list(prefix or []), start_timeout
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.info: dict = {}
        self.restarts = 0

    def start(self) -> dict:
        ours, theirs = socket.socketpair()
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(
            [str(self.farm), *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [*self.prefix, sys.executable, "-m", "bench.measure.peer", str(theirs.fileno()), self.device,
               str(self.threads)]
        err = open(self.log, "ab") if self.log else None  # noqa: SIM115 — the child keeps its own copy
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=env, cwd=self.farm,
                                         stdout=subprocess.DEVNULL, stderr=err)
        finally:
            if err is not None:
                err.close()
        theirs.close()
        if self.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.proc.pid, self.cpus)  # threads it starts inherit the mask
        self.conn = Connection(ours.detach())
        self.info = self._reply(self.start_timeout, "starting")
        return self.info

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, msg: tuple, timeout: float, what: str):
        if not self.alive():
            self.restarts += bool(self.proc)
            self.start()
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            raise PeerError("error", f"{self.label}: {self._death()} before {what}") from None
        return self._reply(timeout, what)

    def _reply(self, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn.poll(0.2):
                    kind, payload = self.conn.recv()
                    if kind == "raise":
                        raise PeerError("error", f"{self.label}: {payload}")
                    return payload
            except (EOFError, OSError, pickle.UnpicklingError):
                raise PeerError("error", f"{self.label}: {self._death()} while {what}") from None
            if not self.alive():
                raise PeerError("error", f"{self.label}: {self._death()} while {what}")
            if time.monotonic() > deadline:
                self.kill()
                raise PeerError("timeout", f"{self.label}: no answer within {timeout:g}s while {what}")

    def _death(self) -> str:
        if self.proc is None:
            return "not started"
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "stopped answering"
        return f"peer killed by signal {-code}" if code < 0 else f"peer exited with code {code}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        if self.alive():
            try:
                self.conn.send(("stop",))
                self.proc.wait(30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


# ---- the child ----------------------------------------------------------------------------------------------------
def serve(conn: Connection, device: str, threads: int) -> None:
    # torch and the measuring modules are the child's alone: the parent that drives a Peer never loads them
    import torch

    import kernels
    from reference import __file__ as reference_file

    from .measure import grad_mode, has_bind, prepare_case
    from .timing import L2Flush, SleepClock, enqueue_ms, take_sample

    torch.set_num_threads(threads)
    counter = None
    if os.environ.get("CONVBENCH_CALLGRIND_OUT"):
        counter = Counter(Path(os.environ["CONVBENCH_CALLGRIND_OUT"]))
    defaults = getattr(kernels, "default_names", kernels.names)()  # a revision before opt-in variants: all
    conn.send(("ok", {"threads": torch.get_num_threads(), "impls": list(defaults),
                      "kernels": str(Path(kernels.__file__).resolve().parent),
                      "reference": str(Path(reference_file).resolve().parent), "pid": os.getpid(),
                      "load_errors": dict(kernels.load_errors()),
                      "bind": all(has_bind(kernels.get(n)) for n in kernels.names())}))
    flush = L2Flush() if device == "cuda" else None
    clock = SleepClock() if device == "cuda" else None
    ready: dict = {}
    gc.disable()  # samples are taken without the collector, as in bench run; collected between cases
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "stop":
                return
            if msg[0] == "prepare":
                _, case, impls, timing, seed, public = msg
                if counter is not None:  # under valgrind: warm up by a count (2 calls), not for a time, so that
                    # the heap a window finds does not depend on the clock (bench/measure/callgrind.py)
                    timing = dataclasses.replace(timing, warmup_ms=0.0)
                outcomes = []
                ready = prepare_case(case, impls, timing, seed, report=outcomes.append, public=public)
                grad_mode(case)  # called, set_grad_enabled sets the mode: the case's samples and counts run under it
                conn.send(("ok", {"failed": outcomes, "ready": {
                    n: {"backend": p.outcome.backend, "call_ms": p.call_ms, "loops": p.sampler.loops,
                        "first_s": p.first_s, "jit": kernels.get(n).jit, "max_abs_err": p.outcome.max_abs_err,
                        "max_rel_err": p.outcome.max_rel_err} for n, p in ready.items()}}))
            elif msg[0] == "sample":
                _, name, loops = msg
                sampler = ready[name].sampler
                sampler.loops = loops
                if clock is not None and not sampler.host_ms:
                    sampler.host_ms = min(enqueue_ms(sampler.fn) for _ in range(3))
                conn.send(("ok", take_sample(sampler, device, flush, clock)))
            elif msg[0] == "count":
                _, name, calls = msg
                if counter is None:
                    raise RuntimeError("this peer does not run under valgrind")
                conn.send(("ok", counter.count(ready[name].sampler.fn, calls, label=f"{case.key} {name}")))
            elif msg[0] == "release":
                ready = {}
                gc.collect()
                conn.send(("ok", None))
            else:
                raise ValueError(f"unknown request {msg[0]!r}")
        except Exception as exc:  # noqa: BLE001 — report, keep serving; the parent decides
            conn.send(("raise", f"{type(exc).__name__}: {str(exc)[:400]}"))


def main(argv: list[str]) -> None:
    fd, device, threads = int(argv[0]), argv[1], int(argv[2])
    conn = Connection(fd)
    try:
        serve(conn, device, threads)
    except EOFError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
