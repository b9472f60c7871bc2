"""``python -m bench`` / ``convbench``: run, report, compare, merge, list.

Exit codes (../shared/CONTRACT.md): run — 0 every case ok/skipped/unsupported, 1 some mismatch/error/timeout,
2 bad usage; compare — 0 no regression, 1 regression, 2 bad usage or unreadable input, 3 environments differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cases import OPS
from .suites import SUITES


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="measure a suite (validate against the float64 oracle, then time)",
                       description="Measure every selected case with every selected implementation.")
    p.add_argument("--suite", default="quick", choices=sorted(SUITES), help="which cases (default: quick)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--impl", nargs="+", metavar="NAME", help="implementations to run (default: all registered)")
    p.add_argument("--op", nargs="+", choices=OPS, help="operations to run (default: all in the suite)")
    p.add_argument("--dtype", nargs="+", choices=["float32", "tf32", "float16", "bfloat16", "float64"])
    p.add_argument("--layout", nargs="+", choices=["nchw", "channels_last"])
    p.add_argument("--where", action="append", metavar="AXIS=V[,V]",
                   help="keep cases whose results column AXIS (batch, in_channels, out_channels, height, width, "
                        "kernel, stride, padding, dilation, groups) takes one of the values; repeatable")
    p.add_argument("--out", type=Path, help="run directory (default: results/runs/<utc-time>-<host>-<device>/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in --out (or DIR), skipping finished cases")
    p.add_argument("--shard", metavar="K/N", help="run only the K-th of N deterministic parts of the suite")
    p.add_argument("--threads", type=int,
                   help="intra-op CPU threads (default: all cores but one; recorded, and runs with different counts "
                        "are never compared)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="seconds one implementation may spend in one phase of a case before it is killed")
    p.add_argument("--max-seconds", type=float, metavar="S", help="override the suite's timing budget per "
                                                                   "implementation and case")
    p.add_argument("--seed", type=int, default=0, help="input data seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-case lines")
    p.add_argument("--profile", action="store_true",
                   help="also profile a training step per implementation (torch.profiler) into the run directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    r = sub.add_parser("report", help="write report.md, report.html and plots/*.png for a run directory")
    r.add_argument("dir", type=Path)
    c = sub.add_parser("compare", help="compare two runs case by case and flag regressions")
    c.add_argument("base", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--threshold", type=float, default=0.10, help="relative change that counts (default 0.10)")
    c.add_argument("--alpha", type=float, default=0.01, help="significance level of the per-case test")
    c.add_argument("--allow-env-mismatch", action="store_true", help="compare runs from different environments")
    c.add_argument("--out", type=Path, help="also write the comparison table as CSV")
    m = sub.add_parser("merge", help="join shard run directories into one")
    m.add_argument("out", type=Path)
    m.add_argument("parts", type=Path, nargs="+")
    pr = sub.add_parser("profile", help="profile a training step per implementation: phase split, top kernels, "
                                        "Chrome traces")
    pr.add_argument("--model", default="simplecnn", choices=["simplecnn", "basiccnn"])
    pr.add_argument("--batch", type=int, default=64)
    pr.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    pr.add_argument("--dtype", default="float32", choices=["float32", "tf32", "float64"])
    pr.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pr.add_argument("--impl", nargs="+", metavar="NAME")
    pr.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 warm-up steps)")
    pr.add_argument("--threads", type=int)
    pr.add_argument("--out", type=Path, help="directory for profile.md/csv and traces (default results/runs/profile)")
    ls = sub.add_parser("list", help="implementations and their availability, suites and their case counts")
    ls.add_argument("--suite", choices=sorted(SUITES), help="also list that suite's cases")
    ls.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return parser


def _list(args) -> int:
    import kernels

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
    from .runner import UsageError

    try:
        if args.command == "run":
            from .runner import RunOptions, parse_shard, parse_where, run

            resume_dir = args.resume if isinstance(args.resume, str) else None
            if args.resume and not (resume_dir or args.out):
                raise UsageError("--resume needs the run directory: --resume DIR or --resume --out DIR")
            opts = RunOptions(suite=args.suite, device=args.device, impls=args.impl, ops=args.op, dtypes=args.dtype,
                              layouts=args.layout, where=parse_where(args.where),
                              out=Path(resume_dir) if resume_dir else args.out, resume=bool(args.resume),
                              shard=parse_shard(args.shard), threads=args.threads, timeout=args.timeout,
                              max_seconds=args.max_seconds, seed=args.seed, progress=not args.no_progress,
                              profile=args.profile)
            return run(opts)
        if args.command == "report":
            from .report import write_report

            return write_report(args.dir)
        if args.command == "compare":
            from .compare import compare_runs

            return compare_runs(args.base, args.new, threshold=args.threshold, alpha=args.alpha,
                                allow_env_mismatch=args.allow_env_mismatch, out=args.out)
        if args.command == "profile":
            from .profile import profile_command

            if args.batch < 1 or args.steps < 1:
                raise UsageError("--batch and --steps must be positive")
            return profile_command(args)
        if args.command == "merge":
            from .merge import merge_runs

            return merge_runs(args.out, args.parts)
        return _list(args)
    except UsageError as exc:
        print(f"convbench {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
