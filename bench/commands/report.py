"""``bench report DIR [DIR ...]``: report.md, report.html and plots/ of run directories (bench/present/report.py)."""

from __future__ import annotations

from pathlib import Path

from .options import out_dir


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write report.md, report.html and plots/*.png for run directories")
    r.add_argument("dir", type=Path, nargs="+", help="run directories; several also get a side-by-side report")
    r.add_argument("--out", type=out_dir(), help="where the side-by-side report of several runs goes "
                                                 "(default results/runs/report-<names>)")


def main(args) -> int:
    from ..present.report import write_reports  # matplotlib: loaded when a report is written, never to parse

    return write_reports(args.dir, args.out)
