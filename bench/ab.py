"""``bench ab BASE NEW``: is NEW slower than BASE? Both revisions measured interleaved in one invocation.

Why not two stored runs: on a shared VM the machine's speed drifts between runs (identical code: median 17%
apart), and samples from one run say nothing about the next. Here both sides see the same machine state:

1. Each side is materialised (a git worktree of the revision in the cache, or a checkout path as it is) and served
   by its own peer process (bench/peer.py) that runs **this** checkout's harness with **that** revision's
   ``kernels`` and ``reference`` — so BASE can be any older revision.
2. Per case, both peers validate every implementation against the float64 oracle (a case that passes on BASE and
   fails on NEW is ``broken``: a regression whatever the speed) and warm up; both then use one loop count.
3. Rounds: per implementation one sample from each side, back to back, the order alternating from round to
   round. The estimate is the median per-round ratio new/base with its distribution-free 95% interval
   (bench/stats.py ``paired_ratio``); rounds go on until that interval is tight (``Schedule``), or the pair's
   round/time limit.
4. Verdict per (case, implementation) against ``--threshold`` (default 5%, ``--op-threshold OP=X`` overrides):
   slower / faster / same / ambiguous. **Confirmation**: every pair that is not ``same`` is measured again after
   the sweep, in fresh peer processes (re-validated, re-warmed) and fresh rounds, judged on those rounds alone; a
   confirmation still ambiguous at its regular end takes extra rounds (up to ``extra_rounds``/``extra_seconds``).
   A change is flagged only when three measurements, each in its own pair of processes, agree on it (the sweep
   and two confirmations, or three confirmations of an ambiguous sweep), none contradicting; a confirmation that
   finds no change clears it; NEW failing in any measurement is ``broken``; at most three confirmation passes
   (bench/stats.py ``settle``). Confirmations and extra rounds are taken only within ``--budget`` seconds of the
   start of the timing; what stays undecided is reported inconclusive, one line per pair.
5. ``--metric instructions``: both sides counted under Callgrind, one valgrind process per side for the whole
   selection (bench/callgrind.py); deterministic, so the verdict is the ratio against 1%.

Exit: 0 no regression · 1 a confirmed slower or a broken case (or, with ``--fail-on-ambiguous``, a pair left
inconclusive) · 2 bad usage (nothing is created) · 3 the two sides run in different environments.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .peer import Peer, PeerError, make_farm
from .schema import UsageError, atomic_write
from .stats import Ratio, Settled, classify, explain, fewest_samples, paired_halfwidth, paired_ratio, settle

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_THRESHOLD = {"time": 0.05, "instructions": 0.01}
FAILED = ("mismatch", "error", "timeout")
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


@dataclass(frozen=True)
class Side:
    label: str  # base | new
    spec: str  # what the user typed
    checkout: Path
    commit: str | None  # None: a checkout path measured as it is
    worktree: bool = False


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


# ---- sides ------------------------------------------------------------------------------------------------------
def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=120)


def cache_dir() -> Path:
    return Path(os.environ.get("CONVBENCH_CACHE_DIR") or Path.home() / ".cache" / "convbench") / "ab"


def resolve(label: str, spec: str) -> Side:
    """Check BASE/NEW without creating anything: a checkout path, or a revision of this repository."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not ((path / "kernels" / "__init__.py").exists() and (path / "reference" / "__init__.py").exists()):
            raise UsageError(f"{label.upper()} {spec!r} is a directory but not a convbench checkout "
                             "(no kernels/ and reference/ packages)")
        return Side(label, spec, path.resolve(), None)
    got = _git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    if got.returncode or not got.stdout.strip():
        raise UsageError(f"{label.upper()} {spec!r} is neither a checkout directory nor a revision of {ROOT}")
    commit = got.stdout.strip()
    if spec.split("~")[0].split("^")[0] == "HEAD":  # HEAD means the committed tree; refuse if the user has more
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "kernels", "reference").stdout.strip()
        if dirty:
            raise UsageError(f"{label.upper()} {spec!r}: kernels/ or reference/ has uncommitted changes that a "
                             f"worktree of {spec} would not contain ({dirty.splitlines()[0].strip()} …); commit "
                             "them, or pass the checkout path (e.g. '.') to measure the tree as it is")
    return Side(label, spec, ROOT, commit)


def merge_base(ref: str) -> str:
    got = _git("merge-base", "HEAD", ref)
    if got.returncode or not got.stdout.strip():
        raise UsageError(f"--merge-base {ref!r}: no merge base of HEAD and {ref} ({got.stderr.strip()[:200]})")
    return got.stdout.strip()


def materialize(side: Side) -> Side:
    """A checkout of the side's commit: a detached git worktree in the cache, reused when it is already there."""
    if side.commit is None:
        return side
    path = cache_dir() / "worktrees" / side.commit[:16]
    if path.exists() and _git("rev-parse", "HEAD", cwd=path).stdout.strip() == side.commit:
        return replace(side, checkout=path, worktree=True)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _git("worktree", "prune")
    got = _git("worktree", "add", "--force", "--detach", str(path), side.commit)
    if got.returncode:
        raise RuntimeError(f"cannot materialise {side.spec}: {got.stderr.strip()[:300]}")
    return replace(side, checkout=path, worktree=True)


# ---- measuring --------------------------------------------------------------------------------------------------
class ABRun:
    def __init__(self, sides: dict[str, Side], cases: list, impls: list[str] | None, device: str, threads: int,
                 timing, ab: ABTiming, thresholds: dict, seed: int, timeout: float, progress: bool) -> None:
        self.sides, self.cases, self.impls, self.device, self.threads = sides, cases, impls, device, threads
        self.timing, self.ab, self.thresholds, self.seed = timing, ab, thresholds, seed
        self.timeout, self.progress = timeout, progress
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
                        self.threads, None, None, start_timeout=max(self.timeout, 600.0), cpus=pin)
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
        from .timing import calibrate_loops

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
        from . import callgrind

        dirs = {k: out_dir / f"callgrind-{k}" for k in self.sides}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        peers = {k: Peer(f"{k} ({s.spec}) under valgrind", make_farm(self.tmp / f"farm-cg-{k}", s.checkout),
                         self.device, 1, {**callgrind.ENV, "CONVBENCH_CALLGRIND_OUT": str(dirs[k])},
                         callgrind.command(dirs[k]), start_timeout=900.0) for k, s in self.sides.items()}
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


def window_calls(case) -> int:
    """Calls in one instruction-count window, from the case alone so that both sides of an A/B count the same
    window (the first call of a window costs more than the rest, so per-call counts of windows of different lengths
    differ by up to 1%): 20 calls for cases up to 10⁸ FLOPs or bytes — per-call counts of a 5-call window varied by
    0.15% between processes here, of a 20-call window by 0.03% — and fewer, down to 3, for larger ones."""
    work = max(case.flops(), case.bytes_moved(), 1)
    return max(3, min(20, int(2e9 / work)))


def count_cases(peer: Peer, cases, impls, timing, seed, timeout, public: bool = False):
    """Instruction counts in one peer process (under valgrind), case by case: validate and warm up as for timing,
    then one window of a few calls per implementation. Yields (case, {impl: (status, error, backend, count)}).
    ``public``: count the public methods' calls (``bench.measure.bound``)."""
    info = peer.info or peer.start()
    for case in cases:
        names = [n for n in (impls or info["impls"]) if n in info["impls"]]
        counts = {}
        try:
            prep = peer.request(("prepare", case, names, timing, seed, public), timeout, f"preparing {case.key}")
        except PeerError as exc:
            yield case, {n: (exc.status, str(exc), "", None) for n in names}
            continue
        for o in prep["failed"]:
            counts[o.impl] = (o.status, o.error, o.backend, None)
        for n, r in prep["ready"].items():
            calls = window_calls(case)
            try:
                counts[n] = ("ok", "", r["backend"], peer.request(("count", n, calls), timeout, f"counting {n}"))
            except PeerError as exc:
                counts[n] = (exc.status, str(exc), r["backend"], None)
        try:
            peer.request(("release",), timeout, "releasing")
        except PeerError:
            peer.kill()
        yield case, counts


def count_suite(peer: Peer, cases, impls, timing, seed, timeout, log, public: bool = False) -> dict:
    """Every count of ``count_cases``, collected: {"info", "impls", "counts": {(case key, impl): …}}."""
    try:
        info = peer.info or peer.start()
    except PeerError as exc:
        return {"info": {"error": str(exc)}, "impls": [], "counts": {}}
    counts: dict = {}
    try:
        for i, (case, got) in enumerate(count_cases(peer, cases, impls, timing, seed, timeout, public), 1):
            counts.update({(case.key, n): v for n, v in got.items()})
            log(f"[instructions {i}/{len(cases)}] {case.key}")
    finally:
        peer.close()
    return {"info": info, "impls": info["impls"], "counts": counts}


# ---- the command --------------------------------------------------------------------------------------------------
def table(pairs: list[Pair], metric: str):
    """One row per pair. Time: ratio, interval, p and the base/new medians are those of the pair's last timed
    measurement; ``base_samples``/``new_samples`` hold every round of every measurement in order (``rounds`` in all,
    ``measurement_rounds`` per measurement), ``measurements`` each measurement's own verdict, ``inconclusive`` why
    an ``ambiguous`` verdict stayed undecided."""
    import pandas as pd

    rows = []
    for p in pairs:
        timed = [m for m in p.measurements if m.stats is not None]
        row = {"case": _label(p.case), "impl": p.impl,
               "metric": metric, "base": math.nan, "new": math.nan, "ratio": math.nan, "ci_low": math.nan,
               "ci_high": math.nan, "p_value": math.nan, "verdict": p.verdict, "note": p.note,
               "case_key": p.case.key, "base_status": p.status["base"], "new_status": p.status["new"],
               "base_backend": p.backend["base"], "new_backend": p.backend["new"],
               "error": p.error["new"] or p.error["base"], "rounds": sum(len(m.base_ms) for m in timed),
               "measurements": " ".join(m.verdict for m in p.measurements),
               "measurement_rounds": " ".join(str(len(m.base_ms)) for m in timed),
               "inconclusive": p.inconclusive}
        if metric == "time" and timed:
            last = timed[-1]
            row.update(base=float(np.median(last.base_ms)), new=float(np.median(last.new_ms)),
                       ratio=last.stats.ratio, ci_low=last.stats.ci_low, ci_high=last.stats.ci_high,
                       p_value=last.stats.p_value,
                       base_samples=" ".join(f"{t:.6g}" for m in timed for t in m.base_ms),
                       new_samples=" ".join(f"{t:.6g}" for m in timed for t in m.new_ms))
        if metric == "instructions" and p.instructions.get("base") and p.instructions.get("new"):
            r = p.instructions["new"] / p.instructions["base"]
            row.update(base=p.instructions["base"], new=p.instructions["new"], ratio=r, ci_low=r, ci_high=r)
        if p.verdict in ("broken", "fixed") or p.status["new"] in FAILED:
            row["note"] = "; ".join(filter(None, [row["note"], row["error"][:200]]))
        rows.append(row)
    return pd.DataFrame(rows)


def _label(case) -> str:
    from .schema import case_label

    return case_label({"op": case.op, "options": case.options_text().strip(), "dtype": case.dtype,
                       "layout": case.layout, **case.columns()})


def ab_command(args) -> int:
    """Validate everything (nothing is created on bad usage), then measure; the contract's exit codes."""
    from .runner import RunOptions
    from .select import parse_shard, parse_where, select_cases, select_impls

    metrics = list(dict.fromkeys(args.metric or ["time"]))
    if args.threshold is not None and not (0 < args.threshold < 1):
        raise UsageError(f"--threshold must be in (0, 1), got {args.threshold}")
    thresholds = {(m, None): args.threshold if args.threshold is not None else DEFAULT_THRESHOLD[m]
                  for m in ("time", "instructions")}
    for item in args.op_threshold or []:
        op, _, value = item.partition("=")
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"--op-threshold expects OP=VALUE, got {item!r}") from None
        if not (0 < v < 1):
            raise UsageError(f"--op-threshold {op}: the threshold must be in (0, 1), got {v}")
        for m in metrics:
            thresholds[(m, op)] = v
    if args.merge_base:
        if args.base or args.new:
            raise UsageError("--merge-base REF compares HEAD with its merge base: give no BASE/NEW then")
        base_spec, new_spec = merge_base(args.merge_base), "HEAD"
    else:
        if not (args.base and args.new):
            raise UsageError("give BASE and NEW (git revisions or checkout paths), or --merge-base REF")
        base_spec, new_spec = args.base, args.new
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available on this machine")
    if "instructions" in metrics:
        from .callgrind import unavailable_reason

        why = unavailable_reason()
        if why:
            raise UsageError(f"--metric instructions: {why}")
        if args.device != "cpu":
            raise UsageError("--metric instructions counts CPU instructions: use --device cpu")
    sides = {"base": resolve("base", base_spec), "new": resolve("new", new_spec)}
    opts = RunOptions(suite=args.suite, device=args.device, ops=args.op, dtypes=args.dtype, layouts=args.layout,
                      where=parse_where(args.where), shard=parse_shard(args.shard))
    if "device_name" in opts.where:
        raise UsageError("--where device_name picks the machines of a run; ab times both sides on this machine, "
                         "one device, so there is nothing to pick")
    cases = select_cases(opts)
    if not cases:
        raise UsageError("no case matches the selection (--suite/--op/--dtype/--layout/--where/--shard)")
    if args.out and (Path(args.out) / "ab.json").exists():
        raise UsageError(f"--out {args.out} already holds an A/B result; choose another directory")
    from .runner import default_threads
    from .suites import SUITES

    t0 = time.time()
    sides = {k: materialize(s) for k, s in sides.items()}
    threads = args.threads or default_threads()
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    impls = select_impls(args.impl, args.compile_mode) if (args.impl or args.compile_mode) else None
    budget = getattr(args, "budget", None)
    ab_timing = ABTiming() if budget is None else ABTiming(budget=budget)
    run = ABRun(sides, cases, impls, args.device, threads, SUITES[args.suite].timing, ab_timing, thresholds,
                args.seed, args.timeout, not args.no_progress)
    tables, infos = {}, {}
    scratch = None
    try:
        if "instructions" in metrics:
            scratch = out or Path(tempfile.mkdtemp(prefix="convbench-ab-cg-"))
            pairs, infos["instructions"] = run.instructions(scratch)
            tables["instructions"] = table(pairs, "instructions")
        if "time" in metrics:
            pairs, infos["time"] = run.time()
            tables["time"] = table(pairs, "time")
    finally:
        run.close()
        if scratch is not None and out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return report(tables, infos, sides, thresholds, out, args, time.time() - t0)


def _mismatch(infos: dict) -> str | None:
    for metric, info in infos.items():
        a, b = info.get("base", {}), info.get("new", {})
        if a.get("threads") != b.get("threads"):
            return f"{metric}: the sides run with different thread counts ({a.get('threads')} vs {b.get('threads')})"
    return None


def inconclusive_lines(t) -> list[str]:
    """One plain line per pair that stayed ambiguous: which, why, and what each measurement said."""
    rows = [r for r in t.to_dict("records") if r["verdict"] == "ambiguous"]
    return [f"INCONCLUSIVE {r['impl']} {r['case']}: {r.get('inconclusive') or 'undecided'}"
            + (f" [{r['note']}]" if r["note"] else "") for r in rows]


def gate(full, fail_on_ambiguous: bool) -> tuple[int, str]:
    """The exit code of the verdicts (0 or 1) and one line saying why."""
    flagged = full[full["verdict"].isin(["slower", "broken"])]
    undecided = int((full["verdict"] == "ambiguous").sum())
    parts = [f"{n} {v}" for v, n in flagged["verdict"].value_counts().items()]
    if undecided:
        parts.append(f"{undecided} inconclusive (" + ("failing: --fail-on-ambiguous" if fail_on_ambiguous else
                                                      "not gated; --fail-on-ambiguous fails on them") + ")")
    rc = 1 if len(flagged) or (fail_on_ambiguous and undecided) else 0
    what = "regression" if len(flagged) else "inconclusive" if rc else "no confirmed regression"
    return rc, f"ab gate: exit {rc}, {what}" + (": " + ", ".join(parts) if parts else "")


def report(tables: dict, infos: dict, sides: dict, thresholds: dict, out: Path | None, args, seconds: float) -> int:
    import pandas as pd

    from .compare import json_rows, markdown, print_table

    full = pd.concat(list(tables.values()), ignore_index=True)
    desc = {k: f"{s.spec}" + (f" ({s.commit[:12]})" if s.commit else " (checkout as it is)") for k, s in sides.items()}
    fail_on_ambiguous = bool(getattr(args, "fail_on_ambiguous", False))
    rc, verdict_line = gate(full, fail_on_ambiguous)
    parts = []
    for metric, t in tables.items():
        thr = thresholds[(metric, None)]
        title = f"ab {metric}: new {desc['new']} vs base {desc['base']}, threshold ±{thr:.0%}"
        print_table(t, title)
        parts.append(markdown(t, title))
        lines = inconclusive_lines(t)
        if lines:
            head = (f"{len(lines)} pair(s) stayed inconclusive — neither a confirmed change nor cleared; "
                    + ("they fail the gate (--fail-on-ambiguous)" if fail_on_ambiguous
                       else "they do not fail the gate unless --fail-on-ambiguous is given") + ":")
            print(head, *lines, sep="\n", flush=True)
            parts.append(f"#### Inconclusive ({len(lines)})\n\n{head}\n\n"
                         + "".join(f"- {ln}\n" for ln in lines))
    parts.append(f"**{verdict_line}**\n")
    print(verdict_line, flush=True)
    print(f"ab finished in {seconds:.0f} s", flush=True)
    if args.json:
        atomic_write(Path(args.json), json.dumps(json_rows(full), indent=1) + "\n")
    if args.markdown:
        atomic_write(Path(args.markdown), "\n".join(parts))
    if out:
        full.to_csv(out / "ab.csv", index=False)
        atomic_write(out / "ab.json", json.dumps(json_rows(full), indent=1) + "\n")
        atomic_write(out / "ab.md", "\n".join(parts))
        atomic_write(out / "ab-env.json", json.dumps({
            "sides": {k: {"spec": s.spec, "commit": s.commit, "checkout": str(s.checkout)} for k, s in sides.items()},
            "peers": infos, "argv": sys.argv[1:], "seconds": round(seconds, 1),
            "thresholds": {f"{m}:{op or '*'}": v for (m, op), v in thresholds.items()},
            "budget_s": getattr(args, "budget", None), "fail_on_ambiguous": fail_on_ambiguous}, indent=1, default=str))
    mismatch = _mismatch(infos)
    if mismatch:
        print(f"convbench ab: {mismatch}", file=sys.stderr)
        return 3
    return rc
