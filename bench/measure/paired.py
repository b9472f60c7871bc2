"""The paired-timing engine of ``bench ab``: two peer processes (bench/measure/peer.py) measured round by round, and
the verdict of every (case, implementation) settled over a sweep and its confirmations. The command, its sides
(git worktrees) and its report: bench/commands/ab.py.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runs.schema import FAILED
from ..runs.stats import Ratio, Settled, classify, explain, fewest_samples, paired_halfwidth, paired_ratio, settle
from . import callgrind
from .counting import count_suite
from .peer import Peer, PeerError, make_farm
from .timing import calibrate_loops

ALPHA = 0.01  # significance level of every timed verdict


@dataclass(frozen=True)
class ABTiming:
    """How hard ``ab`` measures each (case, implementation): rounds of paired samples until the 95% interval of the
    median ratio is within ±``rel_precision`` (after ``min_rounds``, never fewer than the signed-rank test needs to
    decide at all), or ``max_rounds`` / ``max_seconds``; a confirmation still ambiguous then goes on, re-judged every
    third more rounds, up to ``extra_rounds`` / ``extra_seconds``. A change is flagged when ``need`` measurements,
    each in its own pair of processes (the sweep and up to ``confirmations`` confirmations), agree on it;
    confirmations and extra rounds only within ``budget`` seconds of the start."""

    min_rounds: int = 10
    max_rounds: int = 80
    max_seconds: float = 2.0
    rel_precision: float = 0.015
    confirm_rounds: int = 20  # at least this many fresh rounds in a confirmation
    extra_rounds: int = 400
    extra_seconds: float = 20.0
    need: int = 3
    confirmations: int = 3
    budget: float = 900.0


@dataclass
class Pair:
    """One (case, implementation) on both sides: statuses, paired samples, verdicts."""

    case: object
    impl: str
    status: dict = field(default_factory=lambda: {"base": "", "new": ""})
    error: dict = field(default_factory=lambda: {"base": "", "new": ""})
    backend: dict = field(default_factory=lambda: {"base": "", "new": ""})
    base_ms: list = field(default_factory=list)
    new_ms: list = field(default_factory=list)
    first: str = ""
    verdict: str = ""
    note: str = ""
    stats: object = None
    instructions: dict = field(default_factory=dict)
    measurements: list = field(default_factory=list)  # Measurement per pass: the sweep, then each confirmation
    settled: Settled | None = None
    inconclusive: str = ""  # why the verdict stayed ambiguous, in words ('' when it did not)
    threshold: float = 0.05  # the relative change that counts for this pair's op


@dataclass(frozen=True)
class Measurement:
    """One measurement of a pair in one pair of peer processes: its verdict and the rounds it rests on."""

    verdict: str
    stats: Ratio | None
    base_ms: tuple
    new_ms: tuple


def timed_verdict(base_ms, new_ms, threshold: float) -> tuple[str, Ratio]:
    """The verdict of one measurement's paired rounds alone."""
    r = paired_ratio(np.asarray(base_ms, float), np.asarray(new_ms, float))
    return classify(r, threshold, ALPHA), r


def record(p: Pair, verdict: str, stats: Ratio | None, ab: ABTiming) -> None:
    """Add one measurement's verdict to a pair and settle the pair's verdict over all of its measurements."""
    p.measurements.append(Measurement(verdict, stats, tuple(p.base_ms), tuple(p.new_ms)))
    if len(p.measurements) == 1:
        p.first = verdict
    if stats is not None:
        p.stats = stats
    p.settled = settle([m.verdict for m in p.measurements], ab.need, ab.confirmations)
    p.verdict = p.settled.verdict
    describe(p)


def describe(p: Pair, budget_spent: float | None = None) -> None:
    """The pair's note (every measurement's verdict, ratio and rounds) and, when it stays ambiguous, the reason."""
    ms = p.measurements
    p.note = "" if len(ms) == 1 and ms[0].verdict not in ("slower", "faster", "ambiguous") else "; ".join(
        ("sweep" if i == 0 else f"confirmation {i}") + f" {m.verdict}"
        + (f" ×{m.stats.ratio:.3f} ({m.stats.n} rounds)" if m.stats is not None and math.isfinite(m.stats.ratio)
           else "") for i, m in enumerate(ms))
    why = p.settled.why if p.settled else ""
    if p.verdict == "broken" and why:
        p.note = f"{p.note}; {why}"
    p.inconclusive = ""
    if p.verdict == "ambiguous":
        last = ms[-1].stats if ms and ms[-1].verdict == "ambiguous" else None
        detail = explain(last, p.threshold, ALPHA) if last is not None else ""
        if budget_spent is not None and not p.settled.done:
            why = why.replace("not settled yet", f"--budget {budget_spent:g} s spent before the confirmations settled "
                                                 "it", 1)
        p.inconclusive = "; ".join(filter(None, [why, detail and f"last: {detail}"]))


class Schedule:
    """When one measurement of one pair has taken enough rounds: ``more`` is asked after every round.

    Regular end: the interval of the median ratio within ±``rel_precision`` (looked at every 5 rounds), or
    ``max_rounds`` / ``max_seconds``, never before ``min_rounds`` (``confirm_rounds`` in a confirmation) nor before
    the signed-rank test can reach p < ALPHA at all (8 rounds). A confirmation whose verdict is then ambiguous takes
    extra rounds, re-judged at every third more, until it is not, or ``extra_rounds`` / ``extra_seconds`` / the
    deadline (the ``--budget``)."""

    def __init__(self, ab: ABTiming, confirming: bool, threshold: float, deadline: float = math.inf,
                 clock=time.monotonic) -> None:
        self.ab, self.confirming, self.threshold, self.deadline, self.clock = ab, confirming, threshold, deadline, clock
        self.min = max(ab.min_rounds, ab.confirm_rounds if confirming else 0, fewest_samples(ALPHA))
        self.check = self.min
        self.extending = False

    def more(self, base, new, spent: float) -> bool:
        n, ab = len(base), self.ab
        if n < self.min:
            return True
        if not self.extending:
            if not (n >= ab.max_rounds or spent >= ab.max_seconds):
                if n < self.check:
                    return True
                if paired_halfwidth(base, new) > ab.rel_precision:
                    self.check = n + 5
                    return True
            if not self.confirming or self._decided(base, new):
                return False
            self.extending = True
        elif n < self.check:
            return not self._over(n, spent)
        elif self._decided(base, new):
            return False
        self.check = n + max(5, n // 3)
        return not self._over(n, spent)

    def _decided(self, base, new) -> bool:
        return timed_verdict(base, new, self.threshold)[0] != "ambiguous"

    def _over(self, n: int, spent: float) -> bool:
        return n >= self.ab.extra_rounds or spent >= self.ab.extra_seconds or self.clock() >= self.deadline


def confirm_all(pairs: list[Pair], ab: ABTiming, deadline: float, measure, restart, clock=time.monotonic,
                log=lambda _: None) -> None:
    """Confirmation passes over the pairs not yet settled: each pass in fresh processes (``restart()``), case by
    case (``measure(case, pairs of that case)`` adds one measurement to each); at most ``ab.confirmations`` passes,
    none started — nor a further case — once the deadline has passed (those pairs are reported inconclusive)."""
    for k in range(1, ab.confirmations + 1):
        todo = [p for p in pairs if p.settled is not None and not p.settled.done]
        if not todo:
            return
        by_case: dict[str, list[Pair]] = {}
        for p in todo:
            by_case.setdefault(p.case.key, []).append(p)
        if clock() >= deadline:
            break
        restart()  # fresh processes: a bias of one process (its memory layout, its core) must not confirm itself
        for j, (key, group) in enumerate(by_case.items(), 1):
            if clock() >= deadline:
                break
            measure(group[0].case, group)
            log(f"[confirm {k}: {j}/{len(by_case)}] {key}: " + " ".join(f"{p.impl}={p.measurements[-1].verdict}"
                                                                      for p in group))
    for p in pairs:
        if p.settled is not None and not p.settled.done:
            describe(p, budget_spent=ab.budget)


class ABRun:
    """Both sides of an A/B (``sides``: label → an object with ``spec`` and ``checkout``, bench/commands/ab.py's
    Side) measured in peer processes: ``time()`` interleaved paired rounds, ``instructions()`` Callgrind counts."""

    def __init__(self, sides: dict, cases: list, impls: list[str] | None, device: str, threads: int,
                 timing, ab: ABTiming, thresholds: dict, seed: int, timeout: float, progress: bool,
                 log: Path | None = None) -> None:
        self.sides, self.cases, self.impls, self.device, self.threads = sides, cases, impls, device, threads
        self.timing, self.ab, self.thresholds, self.seed = timing, ab, thresholds, seed
        self.timeout, self.progress = timeout, progress
        self.peer_log = log  # the peers' stderr: torch's and the compilers' own messages (bench/runs/runlog.py)
        self.rng = np.random.default_rng(seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="convbench-ab-"))

    def threshold(self, op: str, metric: str) -> float:
        return self.thresholds.get((metric, op), self.thresholds[(metric, None)])

    def _peers(self) -> dict[str, Peer]:
        """Both sides on the same cores — all but the first, which is left to the OS and this process — so that
        neither side gets a core the other never sees; they take turns, so they never compete."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        pin = set(cpus[1:]) if len(cpus) > self.threads else None
        return {k: Peer(f"{k} ({s.spec})", make_farm(self.tmp / f"farm-{k}", s.checkout), self.device,
                        self.threads, None, None, start_timeout=max(self.timeout, 600.0), cpus=pin, log=self.peer_log)
                for k, s in self.sides.items()}

    def log(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    # -- time --
    def time(self) -> tuple[list[Pair], dict]:
        deadline = time.monotonic() + self.ab.budget
        live = {"peers": self._peers()}
        try:
            live["info"] = {k: p.start() for k, p in live["peers"].items()}
            pairs: list[Pair] = []
            for i, case in enumerate(self.cases, 1):
                got = self._measure_case(live["peers"], live["info"], case, None, deadline)
                pairs += got
                self.log(f"[{i}/{len(self.cases)}] {case.key}: " + " ".join(f"{p.impl}={p.first}" for p in got))

            def restart() -> None:
                for peer in live["peers"].values():
                    peer.close()
                live["peers"] = self._peers()
                live["info"] = {k: peer.start() for k, peer in live["peers"].items()}

            confirm_all(pairs, self.ab, deadline,
                        lambda case, group: self._measure_case(live["peers"], live["info"], case, group, deadline),
                        restart, log=self.log)
            return pairs, live["info"]
        finally:
            for peer in live["peers"].values():
                peer.close()

    def _prepare(self, peers, info, case, names) -> dict[str, dict]:
        # both sides' calls go through the same harness path: bound (Implementation.bind) only when both have it
        public = not all(i.get("bind") for i in info.values())
        out = {}
        for k, peer in peers.items():
            try:
                out[k] = peer.request(("prepare", case, names, self.timing, self.seed, public), self.timeout,
                                      f"preparing {case.key}")
            except PeerError as exc:
                out[k] = {"failed": [], "ready": {}, "peer_error": (exc.status, str(exc))}
        return out

    def _measure_case(self, peers, info, case, confirming: list[Pair] | None, deadline: float) -> list[Pair]:
        """One measurement of the case's pairs (all of them in the sweep, ``confirming`` in a confirmation):
        validate and warm up on both sides, then rounds; every pair gets the measurement's verdict."""
        names = [p.impl for p in confirming] if confirming else [
            n for n in (self.impls or info["new"]["impls"]) if n in info["base"]["impls"] or n in info["new"]["impls"]]
        prep = self._prepare(peers, info, case, names)
        pairs = confirming or [Pair(case, n, threshold=self.threshold(case.op, "time")) for n in names]
        for pair in pairs:
            pair.base_ms, pair.new_ms = [], []  # each measurement is judged on its own rounds only
            for k in ("base", "new"):
                ready = prep[k]["ready"].get(pair.impl)
                failed = next((o for o in prep[k]["failed"] if o.impl == pair.impl), None)
                pair.error[k] = ""
                if ready:
                    pair.status[k], pair.backend[k] = "ok", ready["backend"]
                elif failed:
                    pair.status[k], pair.error[k], pair.backend[k] = failed.status, failed.error, failed.backend
                elif pair.impl not in info[k]["impls"]:
                    pair.status[k], pair.error[k] = "missing", f"not registered in {self.sides[k].spec}"
                else:
                    pair.status[k], pair.error[k] = prep[k].get("peer_error", ("error", "no result"))
        timed = [p for p in pairs if p.status["base"] == "ok" and p.status["new"] == "ok"]
        try:
            self._rounds(peers, prep, timed, confirming is not None, deadline)
        except PeerError as exc:
            for p in timed:
                side = "base" if exc.args[0].startswith("base") else "new"
                p.status[side], p.error[side] = exc.status, str(exc)
        for p in pairs:
            self._judge(p)
        for peer in peers.values():
            try:
                peer.request(("release",), self.timeout, "releasing")
            except PeerError:
                peer.kill()  # restarted for the next case
        return pairs

    def _rounds(self, peers, prep, pairs: list[Pair], confirming: bool, deadline: float) -> None:
        loops = {p.impl: calibrate_loops(min(prep["base"]["ready"][p.impl]["call_ms"],
                                             prep["new"]["ready"][p.impl]["call_ms"]),
                                         self.device, self.timing.target_sample_ms) for p in pairs}
        spent = {p.impl: 0.0 for p in pairs}
        schedule = {p.impl: Schedule(self.ab, confirming, p.threshold, deadline) for p in pairs}
        active = list(pairs)
        rnd = 0
        while active:
            for i, p in enumerate(active[rnd % len(active):] + active[:rnd % len(active)]):
                order = ("base", "new") if (rnd + i) % 2 == 0 else ("new", "base")
                t0 = time.perf_counter()
                for k in order:
                    ms = peers[k].request(("sample", p.impl, loops[p.impl]), self.timeout, f"timing {p.impl}")
                    (p.base_ms if k == "base" else p.new_ms).append(ms)
                spent[p.impl] += time.perf_counter() - t0
            rnd += 1
            active = [p for p in active if schedule[p.impl].more(p.base_ms, p.new_ms, spent[p.impl])]

    def _judge(self, p: Pair) -> None:
        """This measurement's verdict from both sides' statuses and rounds, added to the pair's measurements."""
        sb, sn = p.status["base"], p.status["new"]
        stats = None
        if sb == "ok" and sn == "ok" and p.base_ms:
            v, stats = timed_verdict(p.base_ms, p.new_ms, p.threshold)
        elif sb == "ok" and sn in FAILED:
            v = "broken"
        elif sn == "ok" and sb in FAILED:
            v = "fixed"
        elif sb == "missing" or sn == "missing":
            v = "new case" if sb == "missing" else "missing"
        else:
            v = sb if sb == sn else f"{sb}→{sn}"
        record(p, v, stats, self.ab)

    # -- instructions --
    def instructions(self, out_dir: Path) -> tuple[list[Pair], dict]:
        dirs = {k: out_dir.resolve() / f"callgrind-{k}" for k in self.sides}  # the peers run in their farms
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        peers = {k: Peer(f"{k} ({s.spec}) under valgrind", make_farm(self.tmp / f"farm-cg-{k}", s.checkout),
                         self.device, 1, {**callgrind.ENV, "CONVBENCH_CALLGRIND_OUT": str(dirs[k])},
                         callgrind.command(dirs[k]), start_timeout=900.0, log=self.peer_log)
                 for k, s in self.sides.items()}
        results: dict[str, dict] = {}
        started: dict[str, dict] = {}
        both = threading.Barrier(len(peers))

        def count_side(k: str) -> None:
            try:
                started[k] = peers[k].start()
            except PeerError as exc:
                started[k] = {"error": str(exc)}
            both.wait()  # both sides count through the same harness path (see _prepare)
            public = not all(i.get("bind") for i in started.values())
            results[k] = (count_suite(peers[k], self.cases, self.impls, self.timing, self.seed, self.timeout * 20,
                                      self.log if k == "new" else lambda _: None, public)
                          if "error" not in started[k] else {"info": started[k], "impls": [], "counts": {}})

        threads = [threading.Thread(target=count_side, args=(k,)) for k in peers]  # the two sides in parallel:
        for t in threads:  # counts do not depend on the machine's load
            t.start()
        for t in threads:
            t.join()
        pairs = []
        for case in self.cases:
            names = [n for n in (self.impls or results["new"]["impls"])
                     if n in results["base"]["impls"] or n in results["new"]["impls"]]
            for n in names:
                p = Pair(case, n, threshold=self.threshold(case.op, "instructions"))
                for k in ("base", "new"):
                    got = results[k]["counts"].get((case.key, n), ("missing", "not measured", "", None))
                    p.status[k], p.error[k], p.backend[k], p.instructions[k] = got
                if p.status["base"] == "ok" and p.status["new"] == "ok":
                    r = p.instructions["new"] / p.instructions["base"]
                    thr = p.threshold
                    p.verdict = p.first = "slower" if r > 1 + thr else "faster" if r < 1 - thr else "same"
                else:
                    self._judge(p)
                pairs.append(p)
        return pairs, {k: r["info"] for k, r in results.items()}

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
