"""``bench ab BASE NEW``: is NEW slower than BASE? Both revisions measured interleaved in one invocation.

Why not two stored runs: on a shared VM the machine's speed drifts between runs (identical code: median 17%
apart), and samples from one run say nothing about the next. Here both sides see the same machine state:

1. Each side is materialised (a git worktree of the revision in the cache, or a checkout path as it is) and served
   by its own peer process (bench/peer.py) that runs **this** checkout's harness with **that** revision's
   ``kernels`` and ``reference`` — so BASE can be any older revision.
2. Per case, both peers validate every implementation against the float64 oracle (a case that passes on BASE and
   fails on NEW is ``broken``: a regression whatever the speed) and warm up; both then use one loop count.
3. Rounds: per implementation one sample from each side, back to back, the order alternating from round to
   round. The estimate is the median per-round ratio new/base with a bootstrap interval over rounds
   (bench/stats.py ``paired_ratio``); rounds go on until that interval is tight (or the budget is spent).
4. Verdict per (case, implementation) against ``--threshold`` (default 5%, ``--op-threshold OP=X`` overrides):
   slower / faster / same / ambiguous. **Confirmation**: every case that is not ``same`` is re-measured at the end
   of the sweep in fresh rounds (re-validated, re-warmed); a change is flagged only when both measurements agree.
5. ``--metric instructions``: both sides counted under Callgrind, one valgrind process per side for the whole
   selection (bench/callgrind.py); deterministic, so the verdict is the ratio against 1%.

Exit: 0 no regression · 1 a confirmed slower or a broken case · 2 bad usage (nothing is created) · 3 the two
sides run in different environments.
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
from .stats import classify, confirm, paired_ratio, settle

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_THRESHOLD = {"time": 0.05, "instructions": 0.01}
FAILED = ("mismatch", "error", "timeout")


@dataclass(frozen=True)
class ABTiming:
    """How hard ``ab`` measures each (case, implementation): rounds of paired samples until the 95% interval of the
    median ratio is within ±``rel_precision`` (after ``min_rounds``), or ``max_rounds`` / ``max_seconds``."""

    min_rounds: int = 10
    max_rounds: int = 80
    max_seconds: float = 2.0
    rel_precision: float = 0.015
    confirm_rounds: int = 20  # at least this many fresh rounds in a confirmation


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
    first_rounds: tuple = ((), ())


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
        peers = self._peers()
        try:
            info = {k: p.start() for k, p in peers.items()}
            pairs: list[Pair] = []
            for i, case in enumerate(self.cases, 1):
                got = self._measure_case(peers, info, case, None)
                pairs += got
                self.log(f"[{i}/{len(self.cases)}] {case.key}: " + " ".join(f"{p.impl}={p.first}" for p in got))
            suspects = [p for p in pairs if p.first in ("slower", "faster", "ambiguous")]
            by_case: dict[str, list[Pair]] = {}
            for p in suspects:
                by_case.setdefault(p.case.key, []).append(p)
            if by_case:  # fresh processes: a bias of one process (its memory layout, its core) must not confirm itself
                for p in peers.values():
                    p.close()
                peers = self._peers()
                info = {k: p.start() for k, p in peers.items()}
            for j, (key, group) in enumerate(by_case.items(), 1):
                self._measure_case(peers, info, group[0].case, group)
                self.log(f"[confirm {j}/{len(by_case)}] {key}: " + " ".join(f"{p.impl}={p.verdict}" for p in group))
            return pairs, info
        finally:
            for p in peers.values():
                p.close()

    def _prepare(self, peers, case, names) -> dict[str, dict]:
        out = {}
        for k, peer in peers.items():
            try:
                out[k] = peer.request(("prepare", case, names, self.timing, self.seed), self.timeout,
                                      f"preparing {case.key}")
            except PeerError as exc:
                out[k] = {"failed": [], "ready": {}, "peer_error": (exc.status, str(exc))}
        return out

    def _measure_case(self, peers, info, case, confirming: list[Pair] | None) -> list[Pair]:
        names = [p.impl for p in confirming] if confirming else [
            n for n in (self.impls or info["new"]["impls"]) if n in info["base"]["impls"] or n in info["new"]["impls"]]
        prep = self._prepare(peers, case, names)
        pairs = confirming or [Pair(case, n) for n in names]
        for pair in pairs:
            for k in ("base", "new"):
                ready = prep[k]["ready"].get(pair.impl)
                failed = next((o for o in prep[k]["failed"] if o.impl == pair.impl), None)
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
            self._rounds(peers, prep, timed, fresh=confirming is not None)
        except PeerError as exc:
            for p in timed:
                side = "base" if exc.args[0].startswith("base") else "new"
                p.status[side], p.error[side] = exc.status, str(exc)
        for p in pairs:
            self._judge(p, confirming is not None)
        for peer in peers.values():
            try:
                peer.request(("release",), self.timeout, "releasing")
            except PeerError:
                peer.kill()  # restarted for the next case
        return pairs

    def _rounds(self, peers, prep, pairs: list[Pair], fresh: bool) -> None:
        from .timing import calibrate_loops

        if fresh:  # keep the first measurement's rounds aside; the confirmation is judged on its own rounds
            for p in pairs:
                p.first_rounds = (p.base_ms, p.new_ms)
                p.base_ms, p.new_ms = [], []
        loops = {p.impl: calibrate_loops(min(prep["base"]["ready"][p.impl]["call_ms"],
                                             prep["new"]["ready"][p.impl]["call_ms"]),
                                         self.device, self.timing.target_sample_ms) for p in pairs}
        spent = {p.impl: 0.0 for p in pairs}
        active = list(pairs)
        min_rounds = max(self.ab.min_rounds, self.ab.confirm_rounds if fresh else 0)
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
            done = []
            for p in active:
                n = len(p.base_ms)
                if n >= self.ab.max_rounds or (spent[p.impl] >= self.ab.max_seconds and n >= min_rounds):
                    done.append(p)
                elif n >= min_rounds and n % 5 == 0:
                    r = paired_ratio(np.array(p.base_ms), np.array(p.new_ms), self.rng)
                    if math.log(r.ci_high / r.ci_low) / 2 <= self.ab.rel_precision:
                        done.append(p)
            active = [p for p in active if p not in done]

    def _judge(self, p: Pair, confirming: bool) -> None:
        sb, sn = p.status["base"], p.status["new"]
        if sb == "ok" and sn == "ok" and p.base_ms:
            p.stats = paired_ratio(np.array(p.base_ms), np.array(p.new_ms), self.rng)
            v = classify(p.stats, self.threshold(p.case.op, "time"))
        elif sb == "ok" and sn in FAILED:
            v = "broken"
        elif sn == "ok" and sb in FAILED:
            v = "fixed"
        elif sb == "missing" or sn == "missing":
            v = "new case" if sb == "missing" else "missing"
        else:
            v = sb if sb == sn else f"{sb}→{sn}"
        if not confirming:
            p.first = p.verdict = v
            return
        p.verdict = confirm(p.first, v) if p.first in ("slower", "faster", "ambiguous") else v
        p.note = f"first {p.first}, confirmation {v} ({len(p.base_ms)} fresh rounds)" if p.first != "same" else ""
        if p.stats is not None and "ambiguous" in {p.first, v}:
            verdict, pooled = settle(p.first, v, p.first_rounds, (p.base_ms, p.new_ms),
                                     self.threshold(p.case.op, "time"), self.rng)
            if pooled is not None:
                p.verdict, p.stats = verdict, pooled
                p.base_ms, p.new_ms = [*p.first_rounds[0], *p.base_ms], [*p.first_rounds[1], *p.new_ms]
                p.note += f"; {classify(pooled, self.threshold(p.case.op, 'time'))} over all {pooled.n} rounds of both"

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

        def count_side(k: str) -> None:
            results[k] = count_suite(peers[k], self.cases, self.impls, self.timing, self.seed, self.timeout * 20,
                                     self.log if k == "new" else lambda _: None)

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
                p = Pair(case, n)
                for k in ("base", "new"):
                    got = results[k]["counts"].get((case.key, n), ("missing", "not measured", "", None))
                    p.status[k], p.error[k], p.backend[k], p.instructions[k] = got
                if p.status["base"] == "ok" and p.status["new"] == "ok":
                    r = p.instructions["new"] / p.instructions["base"]
                    thr = self.threshold(case.op, "instructions")
                    p.verdict = p.first = "slower" if r > 1 + thr else "faster" if r < 1 - thr else "same"
                else:
                    self._judge(p, False)
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


def count_cases(peer: Peer, cases, impls, timing, seed, timeout):
    """Instruction counts in one peer process (under valgrind), case by case: validate and warm up as for timing,
    then one window of a few calls per implementation. Yields (case, {impl: (status, error, backend, count)})."""
    info = peer.info or peer.start()
    for case in cases:
        names = [n for n in (impls or info["impls"]) if n in info["impls"]]
        counts = {}
        try:
            prep = peer.request(("prepare", case, names, timing, seed), timeout, f"preparing {case.key}")
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


def count_suite(peer: Peer, cases, impls, timing, seed, timeout, log) -> dict:
    """Every count of ``count_cases``, collected: {"info", "impls", "counts": {(case key, impl): …}}."""
    try:
        info = peer.start()
    except PeerError as exc:
        return {"info": {"error": str(exc)}, "impls": [], "counts": {}}
    counts: dict = {}
    try:
        for i, (case, got) in enumerate(count_cases(peer, cases, impls, timing, seed, timeout), 1):
            counts.update({(case.key, n): v for n, v in got.items()})
            log(f"[instructions {i}/{len(cases)}] {case.key}")
    finally:
        peer.close()
    return {"info": info, "impls": info["impls"], "counts": counts}


# ---- the command --------------------------------------------------------------------------------------------------
def table(pairs: list[Pair], metric: str):
    import pandas as pd

    rows = []
    for p in pairs:
        row = {"case": _label(p.case), "impl": p.impl,
               "metric": metric, "base": math.nan, "new": math.nan, "ratio": math.nan, "ci_low": math.nan,
               "ci_high": math.nan, "p_value": math.nan, "verdict": p.verdict, "note": p.note,
               "case_key": p.case.key, "base_status": p.status["base"], "new_status": p.status["new"],
               "base_backend": p.backend["base"], "new_backend": p.backend["new"],
               "error": p.error["new"] or p.error["base"], "rounds": len(p.base_ms)}
        if metric == "time" and p.stats is not None:
            row.update(base=float(np.median(p.base_ms)), new=float(np.median(p.new_ms)), ratio=p.stats.ratio,
                       ci_low=p.stats.ci_low, ci_high=p.stats.ci_high, p_value=p.stats.p_value,
                       base_samples=" ".join(f"{t:.6g}" for t in p.base_ms),
                       new_samples=" ".join(f"{t:.6g}" for t in p.new_ms))
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
    run = ABRun(sides, cases, impls, args.device, threads, SUITES[args.suite].timing, ABTiming(), thresholds,
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


def report(tables: dict, infos: dict, sides: dict, thresholds: dict, out: Path | None, args, seconds: float) -> int:
    import pandas as pd

    from .compare import json_rows, markdown, print_table

    full = pd.concat(list(tables.values()), ignore_index=True)
    desc = {k: f"{s.spec}" + (f" ({s.commit[:12]})" if s.commit else " (checkout as it is)") for k, s in sides.items()}
    parts = []
    for metric, t in tables.items():
        thr = thresholds[(metric, None)]
        title = f"ab {metric}: new {desc['new']} vs base {desc['base']}, threshold ±{thr:.0%}"
        print_table(t, title)
        parts.append(markdown(t, title))
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
            "thresholds": {f"{m}:{op or '*'}": v for (m, op), v in thresholds.items()}}, indent=1, default=str))
    mismatch = _mismatch(infos)
    if mismatch:
        print(f"convbench ab: {mismatch}", file=sys.stderr)
        return 3
    return 1 if full["verdict"].isin(["slower", "broken"]).any() else 0
