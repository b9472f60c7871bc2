"""``bench compare BASE [NEW]``: two stored runs case by case (bench/runs/compare.py)."""

from __future__ import annotations

from pathlib import Path

from ..runs.compare import compare_runs
from .options import out_file


def add_parser(sub) -> None:
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
    c.add_argument("--out", type=out_file("--out"), help="also write the comparison table as CSV")
    c.add_argument("--json", type=out_file("--json"), metavar="FILE", help="write the rows as JSON")
    c.add_argument("--markdown", type=out_file("--markdown"), metavar="FILE", help="write the table as Markdown")


def main(args) -> int:
    return compare_runs(args.base, args.new, threshold=args.threshold, alpha=args.alpha,
                        allow_env_mismatch=args.allow_env_mismatch, out=args.out, normalize=args.normalize,
                        metric=args.metric, json_out=args.json, markdown_out=args.markdown)
