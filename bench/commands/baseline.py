"""``bench baseline promote RUN_DIR``: a run becomes its environment's baseline (bench/runs/baseline.py)."""

from __future__ import annotations

from pathlib import Path

from ..runs.baseline import promote
from ..runs.schema import UsageError
from .options import out_dir


def add_parser(sub) -> None:
    b = sub.add_parser("baseline", help="manage the per-environment baselines of bench compare")
    bsub = b.add_subparsers(dest="baseline_command", required=True)
    bp = bsub.add_parser("promote", help="copy a run to results/baselines/<device-key>/")
    bp.add_argument("run_dir", type=Path)
    bp.add_argument("--root", type=out_dir("--root"), default=Path("results/baselines"))


def main(args) -> int:
    try:
        print(f"baseline → {promote(args.run_dir, args.root)}")
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    return 0
