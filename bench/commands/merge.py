"""``bench merge OUT PART...``: shard run directories joined into one (bench/runs/merge.py)."""

from __future__ import annotations

from pathlib import Path

from ..runs.merge import merge_runs
from ..runs.schema import UsageError
from .options import out_dir


def add_parser(sub) -> None:
    m = sub.add_parser("merge", help="join shard run directories into one")
    m.add_argument("out", type=out_dir("OUT"))
    m.add_argument("parts", type=Path, nargs="+")


def main(args) -> int:
    seen: set[Path] = set()
    for part in args.parts:  # a part given twice is a slip (every row of it a duplicate): say so, merge nothing
        if part.resolve() in seen:
            raise UsageError(f"PART {part} is given twice")
        seen.add(part.resolve())
    return merge_runs(args.out, args.parts)
