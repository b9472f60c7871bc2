"""``python -m bench`` / ``convbench``: run, ab, report, compare, baseline, history, merge, profile,
host-overhead, list.

Exit codes (../shared/CONTRACT.md): run — 0 every case ok/skipped/unsupported, 1 some mismatch/error/timeout,
2 bad usage; compare — 0 no regression, 1 regression, 2 bad usage or unreadable input, 3 environments differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .schema import OPS, SUITE_NAMES, UsageError


def _filters(p, default_suite: str) -> None:
    """The case and implementation filters that run and ab share."""
    p.add_argument("--suite", default=default_suite, choices=sorted(SUITE_NAMES),
                   help=f"which cases (default: {default_suite})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--impl", nargs="+", metavar="NAME",
                   help="implementations to run (default: all registered except opt-in variants such as "
                        "compile-max-autotune)")
    p.add_argument("--compile-mode", nargs="+", metavar="MODE",
                   choices=["default", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile modes to run, each its own implementation (compile, compile-max-autotune, "
                        "compile-max-autotune-no-cudagraphs); replaces the compile variants of the selection")
    p.add_argument("--op", nargs="+", choices=OPS, help="operations to run (default: all in the suite)")
    p.add_argument("--dtype", nargs="+", choices=["float32", "tf32", "float16", "bfloat16", "float64"])
    p.add_argument("--layout", nargs="+", choices=["nchw", "channels_last"])
    p.add_argument("--where", action="append", metavar="AXIS=V[,V]",
                   help="keep cases whose results column AXIS (batch, in_channels, out_channels, height, width, "
                        "kernel, stride, padding, dilation, groups) takes one of the values; repeatable. "
                        "device_name=TEXT[,TEXT] picks machines instead: those whose device name contains a TEXT "
                        "(case-insensitive; with --executor ray, the nodes that take cases)")
    p.add_argument("--shard", metavar="K/N", help="run only the K-th of N deterministic parts of the suite")
    p.add_argument("--threads", type=_count("--threads"),
                   help="intra-op CPU threads (default: all cores but one; recorded, and runs with different counts "
                        "are never compared)")
    p.add_argument("--seed", type=_count("--seed", 0), default=0, help="input data seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-case lines")


def _positive(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects a number, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text!r}")
        return v
    return parse


def _count(name: str, minimum: int = 1):
    """An argparse type: an integer of at least ``minimum``, refused with a one-line reason (exit 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {text!r}")
        return v
    return parse


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="measure a suite (validate against the float64 oracle, then time)",
                       description="Measure every selected case with every selected implementation.")
    _filters(p, "quick")
    p.add_argument("--metric", default="time", choices=["time", "instructions"],
                   help="time (default), or instructions: Callgrind counts per call, the whole suite in one "
                        "valgrind process (CPU; needs valgrind)")
    p.add_argument("--out", type=Path, help="run directory (default: results/runs/<utc-time>-<host>-<device>/)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.md, report.html and plots/ at the end (bench report DIR does)")
    p.add_argument("--warm-cache", action="store_true",
                   help="reuse the machine's Inductor/Triton caches (default: fresh ones per run, so compile_s is a "
                        "cold compile; env.json says which)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in --out (or DIR), skipping finished cases")
    p.add_argument("--timeout", type=_positive("--timeout"), default=300.0, metavar="S",
                   help="seconds one implementation may spend in one phase of a case before it is killed")
    p.add_argument("--max-seconds", type=_positive("--max-seconds"), metavar="S",
                   help="override the suite's timing budget per implementation and case")
    p.add_argument("--profile", action="store_true",
                   help="also profile every timed case per implementation once after its timing (torch.profiler: "
                        "profile.md/csv, breakdown.csv, traces/ in the run directory; the report links them)")
    x = p.add_argument_group("cluster", "run --executor ray: every case a Ray task on one device slot of a cluster "
                                        "(pip install 'convbench[ray]'; README: Running on a cluster)")
    x.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local (default): this machine, one case after another; ray: a Ray cluster")
    x.add_argument("--address", metavar="ADDR|auto",
                   help="the Ray cluster: auto (the one this machine belongs to), host:port of its head, or "
                        "ray://host:10001 (default: a one-node cluster of this machine, started for the run)")
    x.add_argument("--each-device", action="store_true",
                   help="run every case once on each device kind of the cluster (a side-by-side report of them)")
    x.add_argument("--retries", type=_count("--retries", 0), default=0, metavar="N",
                   help="a case whose node or Ray worker dies goes to another node, up to N times (default 0: "
                        "an error row naming the node)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    r = sub.add_parser("report", help="write report.md, report.html and plots/*.png for run directories")
    r.add_argument("dir", type=Path, nargs="+", help="run directories; several also get a side-by-side report")
    r.add_argument("--out", type=Path, help="where the side-by-side report of several runs goes "
                                            "(default results/runs/report-<names>)")
    from .gpu import add_parser as add_gpu

    add_gpu(sub)
    a = sub.add_parser("ab", help="A/B two revisions interleaved in one invocation (the CI regression gate)",
                       description="Time (and/or count instructions of) every selected case on two revisions, "
                                   "interleaved round by round, with confirmation of every suspect.")
    a.add_argument("base", nargs="?", help="git revision (e.g. origin/main) or path to a checkout")
    a.add_argument("new", nargs="?", help="git revision (e.g. HEAD) or path to a checkout")
    a.add_argument("--merge-base", metavar="REF", help="compare HEAD with its merge base against REF")
    _filters(a, "smoke")
    a.add_argument("--metric", nargs="+", choices=["time", "instructions"], default=["time"],
                   help="time (interleaved paired samples) and/or instructions (Callgrind); default time")
    a.add_argument("--threshold", type=float, help="relative change that counts (default 0.05 time, 0.01 "
                                                   "instructions)")
    a.add_argument("--op-threshold", action="append", metavar="OP=X", help="per-op threshold, e.g. "
                                                                           "train_step=0.08; repeatable")
    a.add_argument("--timeout", type=_positive("--timeout"), default=300.0, metavar="S",
                   help="seconds a side may take to answer one request before it is killed")
    a.add_argument("--budget", type=_positive("--budget"), default=900.0, metavar="S",
                   help="wall-clock seconds of timing: the sweep always measures every pair; confirmations and the "
                        "extra rounds of inconclusive ones are taken only within S of its start (default 900); what "
                        "is left undecided is reported inconclusive")
    a.add_argument("--fail-on-ambiguous", action="store_true",
                   help="exit 1 also when a pair stays inconclusive (by default only a confirmed slower or a "
                        "broken case fails)")
    a.add_argument("--json", type=Path, metavar="FILE", help="write the verdict rows as JSON")
    a.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown summary (e.g. for a CI job)")
    a.add_argument("--out", type=Path, metavar="DIR", help="directory for ab.csv/json/md (with raw samples), "
                                                           "ab-env.json and callgrind dumps")
    c = sub.add_parser("compare", help="compare two stored runs case by case and flag regressions")
    c.add_argument("base", type=Path, help="run directory (with one argument: NEW, against its baseline)")
    c.add_argument("new", type=Path, nargs="?")
    c.add_argument("--threshold", type=float, help="relative change that counts (default 0.10 time, 0.01 "
                                                   "instructions)")
    c.add_argument("--alpha", type=float, default=0.01, help="significance level of the whole comparison "
                                                            "(p-values Holm-adjusted over its pairs)")
    c.add_argument("--normalize", default="auto", metavar="IMPL|none",
                   help="compare times relative to this implementation measured in the same rounds (default: "
                        "cudnn when both runs have it) or none")
    c.add_argument("--metric", default="time", choices=["time", "instructions"])
    c.add_argument("--allow-env-mismatch", action="store_true", help="compare runs from different environments")
    c.add_argument("--out", type=Path, help="also write the comparison table as CSV")
    c.add_argument("--json", type=Path, metavar="FILE", help="write the rows as JSON")
    c.add_argument("--markdown", type=Path, metavar="FILE", help="write the table as Markdown")
    b = sub.add_parser("baseline", help="manage the per-environment baselines of bench compare")
    bsub = b.add_subparsers(dest="baseline_command", required=True)
    bp = bsub.add_parser("promote", help="copy a run to results/baselines/<device-key>/")
    bp.add_argument("run_dir", type=Path)
    bp.add_argument("--root", type=Path, default=Path("results/baselines"))
    h = sub.add_parser("history", help="per-case trends across commits, with change points (SQLite)")
    hsub = h.add_subparsers(dest="history_command", required=True)
    for name, text in (("add", "store a run in the history"), ("show", "one line per series, with change points"),
                       ("plot", "trend charts with change points")):
        hp = hsub.add_parser(name, help=text)
        if name == "add":
            hp.add_argument("run_dir", type=Path)
        hp.add_argument("--db", type=Path, default=Path("results/history.sqlite"))
        if name != "add":
            hp.add_argument("--env-key", help="only this environment (default: every one)")
            hp.add_argument("--case", help="only cases whose key contains this text")
            hp.add_argument("--impl", help="only this implementation")
            hp.add_argument("--metric", default="time", choices=["time", "instructions"])
        if name == "plot":
            hp.add_argument("--out", type=Path, default=Path("results/history-plots"))
    m = sub.add_parser("merge", help="join shard run directories into one")
    m.add_argument("out", type=Path)
    m.add_argument("parts", type=Path, nargs="+")
    pr = sub.add_parser("profile", help="where each selected case's time goes, per implementation: operator "
                                        "table, breakdown, Chrome traces (torch.profiler)",
                        description="Validate and warm up each selected case as bench run does, then profile it per "
                                    "implementation. Selection: --shape; else the run filters (--suite/--op/--dtype/"
                                    "--layout/--where); else one training step (--model/--batch/--optimizer).")
    pr.add_argument("--suite", choices=sorted(SUITE_NAMES), help="which cases (as run; default quick when a filter "
                                                                 "is given)")
    pr.add_argument("--op", nargs="+", choices=OPS, help="operations (with --shape: default conv2d)")
    pr.add_argument("--dtype", nargs="+", choices=["float32", "tf32", "float16", "bfloat16", "float64"])
    pr.add_argument("--layout", nargs="+", choices=["nchw", "channels_last"])
    pr.add_argument("--where", action="append", metavar="AXIS=V[,V]", help="as run --where")
    pr.add_argument("--shape", metavar="KEY=V,...",
                    help="one explicit problem instead of a suite: N, C, H, W and optionally K, R, S, stride, "
                         "padding, dilation (int or HxW), groups, bias=0|1; e.g. N=8,C=256,H=14,W=14,K=256,R=3,"
                         "padding=1 (pools: R is the window)")
    pr.add_argument("--model", default="simplecnn", choices=["simplecnn", "basiccnn"])
    pr.add_argument("--batch", type=_count("--batch"), default=64)
    pr.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    pr.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pr.add_argument("--impl", nargs="+", metavar="NAME")
    pr.add_argument("--steps", type=_count("--steps"), help="profiled calls per case and implementation (default: "
                                                            "about 100 ms of calls, 3 to 50)")
    pr.add_argument("--threads", type=_count("--threads"))
    pr.add_argument("--out", type=Path, help="directory for profile.md/csv, breakdown.csv and traces/ (default "
                                             "results/runs/profile-<utc-time>)")
    ho = sub.add_parser("host-overhead", help="Python cost of one triton call with its GPU launches stubbed out "
                                              "(targets: forward <= 15 us, dgrad/wgrad <= 20 us)")
    ho.add_argument("--calls", type=_count("--calls"), default=2000, help="calls per timed block")
    ho.add_argument("--repeats", type=_count("--repeats"), default=7, help="timed blocks per case")
    ho.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    sc = sub.add_parser("selfcheck", help="the harness's timing of cudnn against torch.utils.benchmark.Timer (and "
                                          "triton.testing.do_bench on a GPU) on the same F.* calls; exit 1 when the "
                                          "median ratio is off by more than --tolerance")
    sc.add_argument("--suite", default="smoke", choices=sorted(SUITE_NAMES), help="whose conv and pool cases "
                                                                                  "(default: smoke)")
    sc.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sc.add_argument("--rounds", type=_count("--rounds", 6), default=21, help="paired rounds per case (default 21)")
    sc.add_argument("--tolerance", type=_positive("--tolerance"), default=0.03,
                    help="how far from 1 the median ratio may be (default 0.03)")
    sc.add_argument("--threads", type=_count("--threads"), help="intra-op CPU threads (default: as run)")
    sc.add_argument("--seed", type=_count("--seed", 0), default=0, help="input data seed")
    sc.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    ls = sub.add_parser("list", help="implementations and their availability, suites and their case counts")
    ls.add_argument("--suite", choices=sorted(SUITE_NAMES), help="also list that suite's cases")
    ls.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return parser


def _list(args) -> int:
    import kernels

    from .suites import SUITES

    print("implementations:")
    for name in kernels.names():
        impl = kernels.get(name)
        why = impl.unavailable_reason(args.device) or impl.correctness_only(args.device)
        print(f"  {name:10s} {impl.summary}" + (f"  [{args.device}: {why}]" if why else ""))
    for name, err in kernels.load_errors().items():
        print(f"  ({name}: not registered — {err})")
    print("suites:")
    for suite in SUITES.values():
        print(f"  {suite.name:10s} {len(suite.cases(args.device)):4d} cases on {args.device}: {suite.description}")
    if args.suite:
        for case in SUITES[args.suite].cases(args.device):
            print(f"    {case.key}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        if args.command == "run":
            from .runner import RunOptions, run
            from .select import parse_shard, parse_where

            resume_dir = args.resume if isinstance(args.resume, str) else None
            if args.resume and not (resume_dir or args.out):
                raise UsageError("--resume needs the run directory: --resume DIR or --resume --out DIR")
            opts = RunOptions(suite=args.suite, device=args.device, impls=args.impl, compile_modes=args.compile_mode,
                              ops=args.op, dtypes=args.dtype, layouts=args.layout, where=parse_where(args.where),
                              out=Path(resume_dir) if resume_dir else args.out, resume=bool(args.resume),
                              shard=parse_shard(args.shard), threads=args.threads, timeout=args.timeout,
                              max_seconds=args.max_seconds, seed=args.seed, progress=not args.no_progress,
                              profile=args.profile, metric=args.metric,
                              warm_cache=args.warm_cache, report=not args.no_report, executor=args.executor,
                              address=args.address, each_device=args.each_device, retries=args.retries)
            return run(opts)
        if args.command == "ab":
            from .ab import ab_command

            return ab_command(args)
        if args.command == "gpu":
            from .gpu import gpu_command

            return gpu_command(args)
        if args.command == "report":
            from .report import write_reports

            return write_reports(args.dir, args.out)
        if args.command == "compare":
            from .compare import compare_runs

            return compare_runs(args.base, args.new, threshold=args.threshold, alpha=args.alpha,
                                allow_env_mismatch=args.allow_env_mismatch, out=args.out, normalize=args.normalize,
                                metric=args.metric, json_out=args.json, markdown_out=args.markdown)
        if args.command == "baseline":
            from .baseline import promote

            try:
                print(f"baseline → {promote(args.run_dir, args.root)}")
            except (ValueError, OSError) as exc:
                raise UsageError(str(exc)) from None
            return 0
        if args.command == "history":
            from .history import history_command

            return history_command(args)
        if args.command == "profile":
            from .profile import profile_command

            return profile_command(args)
        if args.command == "host-overhead":
            from .hostcost import host_overhead_command

            return host_overhead_command(args)
        if args.command == "selfcheck":
            from .selfcheck import selfcheck_command

            return selfcheck_command(args)
        if args.command == "merge":
            from .merge import merge_runs

            return merge_runs(args.out, args.parts)
        return _list(args)
    except UsageError as exc:
        print(f"convbench {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
