"""``bench merge OUT PART...``: shard run directories joined into one (bench/runs/merge.py)."""

from __future__ import annotations

from pathlib import Path

from ..runs.merge import merge_runs
from .options import out_dir


def add_parser(sub) -> None:
    m = sub.add_parser("merge", help="join shard run directories into one")
    m.add_argument("out", type=out_dir("OUT"))
    m.add_argument("parts", type=Path, nargs="+")


def main(args) -> int:
    return merge_runs(args.out, args.parts)
