"""``bench ab BASE NEW``: is NEW slower than BASE? Both revisions measured interleaved in one invocation.

Why not two stored runs: on a shared VM the machine's speed drifts between runs (identical code: median 17%
apart), and samples from one run say nothing about the next. Here both sides see the same machine state:

1. Each side is materialised (a git worktree of the revision in the cache, or a checkout path as it is) and served
   by its own peer process (bench/measure/peer.py) that runs **this** checkout's harness with **that** revision's
   ``kernels`` and ``reference`` — so BASE can be any older revision.
2. Per case, both peers validate every implementation against the float64 oracle (a case that passes on BASE and
   fails on NEW is ``broken``: a regression whatever the speed) and warm up; both then use one loop count.
3. Rounds: per implementation one sample from each side, back to back, the order alternating from round to
   round. The estimate is the median per-round ratio new/base with its distribution-free 95% interval
   (bench/runs/stats.py ``paired_ratio``); rounds go on until that interval is tight (``Schedule``), or the pair's
   round/time limit.
4. Verdict per (case, implementation) against ``--threshold`` (default 5%, ``--op-threshold OP=X`` overrides):
   slower / faster / same / ambiguous. **Confirmation**: every pair that is not ``same`` is measured again after
   the sweep, in fresh peer processes (re-validated, re-warmed) and fresh rounds, judged on those rounds alone; a
   confirmation still ambiguous at its regular end takes extra rounds (up to ``extra_rounds``/``extra_seconds``).
   A change is flagged only when three measurements, each in its own pair of processes, agree on it (the sweep
   and two confirmations, or three confirmations of an ambiguous sweep), none contradicting; a confirmation that
   finds no change clears it; NEW failing in any measurement is ``broken``; at most three confirmation passes
   (bench/runs/stats.py ``settle``). Confirmations and extra rounds are taken only within ``--budget`` seconds of the
   start of the timing; what stays undecided is reported inconclusive, one line per pair.
5. ``--metric instructions``: both sides counted under Callgrind, one valgrind process per side for the whole
   selection (bench/measure/callgrind.py); deterministic, so the verdict is the ratio against 1%.

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
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..measure.select import Selection, parse_shard, parse_where, select_cases
from ..measure.suites import SUITES
from ..runs import runlog
from ..runs.compare import json_rows, markdown, print_table
from ..runs.schema import CASE_OPS, FAILED, UsageError, atomic_write, case_label
from .options import filters, out_dir, out_file, positive, suite

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_THRESHOLD = {"time": 0.05, "instructions": 0.01}


@dataclass(frozen=True)
class Side:
    label: str  # base | new
    spec: str  # what the user typed
    checkout: Path
    commit: str | None  # None: a checkout path measured as it is
    worktree: bool = False


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


# ---- the report ---------------------------------------------------------------------------------------------------
def table(pairs: list, metric: str) -> pd.DataFrame:
    """One row per pair. Time: ratio, interval, p and the base/new medians are those of the pair's last timed
    measurement; ``base_samples``/``new_samples`` hold every round of every measurement in order (``rounds`` in all,
    ``measurement_rounds`` per measurement), ``measurements`` each measurement's own verdict, ``inconclusive`` why
    an ``ambiguous`` verdict stayed undecided."""
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
    return case_label({"op": case.op, "options": case.options_text().strip(), "dtype": case.dtype,
                       "layout": case.layout, **case.columns()})


def main(args) -> int:
    """Validate everything (nothing is created on bad usage), then measure; the contract's exit codes."""
    # torch: loaded when the command runs (the CLI imports this module to build its parser)
    from ..measure.env import default_threads, require_counts, require_device, require_threads
    from ..measure.impls import select_impls
    from ..measure.paired import ABRun, ABTiming

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
        if op not in CASE_OPS:  # a misspelt op would leave its threshold at the default without a word
            raise UsageError(f"--op-threshold {item}: {op!r} is not one of {', '.join(CASE_OPS)}")
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
    require_device(args.device)
    require_threads(args.threads)
    if "instructions" in metrics:
        require_counts(args.device)
    sides = {"base": resolve("base", base_spec), "new": resolve("new", new_spec)}
    opts = Selection(suite=suite(args), device=args.device, ops=args.op, dtypes=args.dtype, layouts=args.layout,
                     where=parse_where(args.where), shard=parse_shard(args.shard), models=args.model or (),
                     image_size=args.image_size, batch=args.batch)
    if "device_name" in opts.where:
        raise UsageError("--where device_name picks the machines of a run; ab times both sides on this machine, "
                         "one device, so there is nothing to pick")
    cases = select_cases(opts)
    if not cases:
        raise UsageError("no case matches the selection (--suite/--op/--dtype/--layout/--where/--shard)")
    if args.out and (Path(args.out) / "ab.json").exists():
        raise UsageError(f"--out {args.out} already holds an A/B result; choose another directory")
    # before materialize: an unknown --impl must not leave a git worktree behind
    impls = select_impls(args.impl, args.compile_mode) if (args.impl or args.compile_mode) else None
    t0 = time.time()
    sides = {k: materialize(s) for k, s in sides.items()}
    threads = args.threads or default_threads()
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    budget = getattr(args, "budget", None)
    ab_timing = ABTiming() if budget is None else ABTiming(budget=budget)
    timing = SUITES["zoo" if args.model else opts.suite].timing
    log = (out or cache_dir()) / ("run.log" if out else "last-run.log")  # the peers' torch and compiler messages
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    run = ABRun(sides, cases, impls, args.device, threads, timing, ab_timing, thresholds, args.seed, args.timeout,
                not args.no_progress, log)
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
    rc = report(tables, infos, sides, thresholds, out, args, time.time() - t0)
    said = runlog.mention(log, "torch and compiler messages from the peers")
    if said:
        print(said, flush=True)
    return rc


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


def add_parser(sub) -> None:
    a = sub.add_parser("ab", help="A/B two revisions interleaved in one invocation (the CI regression gate)",
                       description="Time (and/or count instructions of) every selected case on two revisions, "
                                   "interleaved round by round, with confirmation of every suspect.")
    a.add_argument("base", nargs="?", help="git revision (e.g. origin/main) or path to a checkout")
    a.add_argument("new", nargs="?", help="git revision (e.g. HEAD) or path to a checkout")
    a.add_argument("--merge-base", metavar="REF", help="compare HEAD with its merge base against REF")
    filters(a, "smoke")
    a.add_argument("--metric", nargs="+", choices=["time", "instructions"], default=["time"],
                   help="time (interleaved paired samples) and/or instructions (Callgrind); default time")
    a.add_argument("--threshold", type=float, help="relative change that counts (default 0.05 time, 0.01 "
                                                   "instructions)")
    a.add_argument("--op-threshold", action="append", metavar="OP=X", help="per-op threshold, e.g. "
                                                                           "train_step=0.08; repeatable")
    a.add_argument("--timeout", type=positive("--timeout"), default=300.0, metavar="S",
                   help="seconds a side may take to answer one request before it is killed")
    a.add_argument("--budget", type=positive("--budget"), default=900.0, metavar="S",
                   help="wall-clock seconds of timing: the sweep always measures every pair; confirmations and the "
                        "extra rounds of inconclusive ones are taken only within S of its start (default 900); what "
                        "is left undecided is reported inconclusive")
    a.add_argument("--fail-on-ambiguous", action="store_true",
                   help="exit 1 also when a pair stays inconclusive (by default only a confirmed slower or a "
                        "broken case fails)")
    a.add_argument("--json", type=out_file("--json"), metavar="FILE", help="write the verdict rows as JSON")
    a.add_argument("--markdown", type=out_file("--markdown"), metavar="FILE",
                   help="write a Markdown summary (e.g. for a CI job)")
    a.add_argument("--out", type=out_dir(), metavar="DIR", help="directory for ab.csv/json/md (with raw samples), "
                                                           "ab-env.json and callgrind dumps")
