"""``bench run``: measure a suite — the options; the run itself is bench/commands/runner.py."""

from __future__ import annotations

from pathlib import Path

from ..measure.select import parse_shard, parse_where
from ..runs.schema import UsageError
from .options import count, filters, out_dir, positive, suite


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="measure a suite (validate against the float64 oracle, then time)",
                       description="Measure every selected case with every selected implementation.")
    filters(p, "quick")
    p.add_argument("--metric", default="time", choices=["time", "instructions"],
                   help="time (default), or instructions: Callgrind counts per call, the whole suite in one "
                        "valgrind process (CPU; needs valgrind)")
    p.add_argument("--out", type=out_dir(), help="run directory (default: results/runs/<utc-time>-<host>-<device>/)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.md, report.html and plots/ at the end (bench report DIR does)")
    p.add_argument("--warm-cache", action="store_true",
                   help="reuse the machine's Inductor/Triton caches (default: fresh ones per run, so compile_s is a "
                        "cold compile; env.json says which)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in --out (or DIR), skipping finished cases")
    p.add_argument("--timeout", type=positive("--timeout"), default=300.0, metavar="S",
                   help="seconds one implementation may spend in one phase of a case before it is killed")
    p.add_argument("--max-seconds", type=positive("--max-seconds"), metavar="S",
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
    x.add_argument("--retries", type=count("--retries", 0), default=0, metavar="N",
                   help="a case whose node or Ray worker dies goes to another node, up to N times (default 0: "
                        "an error row naming the node)")


def main(args) -> int:
    from .runner import RunOptions, run  # torch: loaded when the command runs, never to parse the options

    resume_dir = args.resume if isinstance(args.resume, str) else None
    if args.resume and not (resume_dir or args.out):
        raise UsageError("--resume needs the run directory: --resume DIR or --resume --out DIR")
    if resume_dir and args.out and Path(resume_dir).resolve() != args.out.resolve():
        raise UsageError(f"--resume {resume_dir} and --out {args.out} name different run directories: give one")
    opts = RunOptions(suite=suite(args), device=args.device, impls=args.impl, compile_modes=args.compile_mode,
                      ops=args.op, dtypes=args.dtype, layouts=args.layout, where=parse_where(args.where),
                      out=Path(resume_dir) if resume_dir else args.out, resume=bool(args.resume),
                      shard=parse_shard(args.shard), threads=args.threads, timeout=args.timeout,
                      max_seconds=args.max_seconds, seed=args.seed, progress=not args.no_progress,
                      profile=args.profile, metric=args.metric,
                      warm_cache=args.warm_cache, report=not args.no_report, executor=args.executor,
                      address=args.address, each_device=args.each_device, retries=args.retries,
                      models=args.model or (), image_size=args.image_size, batch=args.batch)
    return run(opts)
