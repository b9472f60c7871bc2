"""The options of ``bench gpu``; the window itself is bench/commands/gpu_window.py."""

from __future__ import annotations

from pathlib import Path

from ..runs.schema import UsageError
from .options import out_dir, positive

#: the first line of the window's description (bench/commands/gpu_window.py)
DESCRIPTION = ("``bench gpu``: the whole GPU window in one prepared command, bounded, trimmed to a budget, returned as "
               "one archive.")


def add_parser(sub) -> None:
    g = sub.add_parser("gpu", help="the whole GPU window in one command: env and peaks, the window's GPU checks with "
                                   "what the plan launches precompiled, config checks, suites, report — within "
                                   "--budget, returned as one archive",
                       description=DESCRIPTION)
    g.add_argument("--out", type=out_dir(), help="output directory (default results/gpu/<device>-<date>)")
    g.add_argument("--budget", type=positive("--budget"), default=480.0, metavar="S",
                   help="wall-clock seconds the whole window may take (default 480)")
    g.add_argument("--pack", type=Path, metavar="FILE.tar.gz",
                   help="rewrite this one archive after every phase (what a lent machine returns: put it in $OUT)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and its estimated total, run nothing")
    g.add_argument("--rehearse", action="store_true",
                   help="run the window's orchestration on the CPU with CPU stand-ins for the GPU work (faults: "
                        "CONVBENCH_FAULT=hang:checks, crash:worker, …; see bench/measure/faults.py)")
    g.add_argument("--unpack", type=Path, metavar="FILE", help="restore a window archive as results/gpu/<name>/ and "
                                                              "merge its tuned configs; runs nothing")
    g.add_argument("--into", type=out_dir("--into"), metavar="DIR",
                   help="with --unpack: the folder to restore into (default results/gpu)")


def main(args) -> int:
    # options that would be ignored without a word: refused before torch is loaded
    if args.into and not args.unpack:
        raise UsageError(f"--into {args.into} goes with --unpack FILE")
    if args.unpack and (args.dry_run or args.rehearse or args.pack or args.out):
        raise UsageError("--unpack restores an archive and runs nothing: drop --dry-run, --rehearse, --pack and --out")
    from .gpu_window import gpu_command  # torch and kernels: loaded when the command runs, never to parse

    return gpu_command(args)
