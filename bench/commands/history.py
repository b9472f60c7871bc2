"""``bench history add|show|plot``: the runs of every commit in one SQLite file, with change points
(bench/runs/history.py; the charts: bench/present/history_plots.py)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from ..runs.history import DEFAULT_DB, HistoryError, add, show
from .options import out_dir, out_file


def add_parser(sub) -> None:
    h = sub.add_parser("history", help="per-case trends across commits, with change points (SQLite)")
    hsub = h.add_subparsers(dest="history_command", required=True)
    for name, text in (("add", "store a run in the history"), ("show", "one line per series, with change points"),
                       ("plot", "trend charts with change points")):
        hp = hsub.add_parser(name, help=text)
        if name == "add":
            hp.add_argument("run_dir", type=Path)
        # add writes the database (creating its folder); show and plot only read it
        hp.add_argument("--db", type=out_file("--db", parents=True) if name == "add" else Path,
                        default=Path("results/history.sqlite"))
        if name != "add":
            hp.add_argument("--env-key", help="only this environment (default: every one)")
            hp.add_argument("--case", help="only cases whose key contains this text")
            hp.add_argument("--impl", help="only this implementation")
            hp.add_argument("--metric", default="time", choices=["time", "instructions"])
        if name == "plot":
            hp.add_argument("--out", type=out_dir(), default=Path("results/history-plots"))


def main(args) -> int:
    """``bench history add|show|plot``: 0 on success, 2 with one line on stderr (and nothing written) for bad input."""
    command = getattr(args, "history_command", None)
    db = Path(getattr(args, "db", None) or DEFAULT_DB)
    metric = getattr(args, "metric", None) or "time"
    filters = {"env_key": getattr(args, "env_key", None), "case_filter": getattr(args, "case", None),
               "impl": getattr(args, "impl", None), "metric": metric}
    try:
        if command == "add":
            if getattr(args, "run_dir", None) is None:
                raise HistoryError("add needs a run directory")
            rid, stored, new = add(Path(args.run_dir), db)
            state = "added to" if new else "already in history"
            print(f"run {rid} ({args.run_dir}, {stored} rows) {state}{' ' + str(db) if new else ''}")
            return 0
        if command == "show":
            return show(db, **filters)
        if command == "plot":
            from ..present.history_plots import plot  # matplotlib: loaded to draw, never to add or show

            paths = plot(db, Path(getattr(args, "out", None) or "results/history-plots"), **filters)
            for p in paths:
                print(p)
            if not paths:
                print(f"no {metric} points in {db} match: nothing plotted")
            return 0
        raise HistoryError(f"unknown history command {command!r} (add, show, plot)")
    except (HistoryError, sqlite3.Error) as exc:
        print(f"convbench history: {exc}", file=sys.stderr)
        return 2
