"""``bench history``: every run in one SQLite file, and the commits where a case's time persistently changed.

Two stored runs on a shared machine are not evidence of a regression; a step that persists over several runs is. So
``add`` keeps every run (all rows, every status, raw samples), ``series`` gives one point per (run, case,
implementation) in commit order, and ``change_points`` finds persistent level shifts in such a series with ruptures'
PELT — the asv / Apache Otava approach, instead of comparing two points against a fixed threshold.

File ``results/history.sqlite``, schema version in ``PRAGMA user_version``:

- ``runs(run_id, commit, commit_time, start, env_key, suite, source, env_json)`` — ``run_id`` is a hash of the run's
  start time, host and git commit, so adding the same run directory twice stores it once; ``env_key`` is
  ``bench.runs.schema.device_key`` (only runs with the same key are one series); times are normalised to UTC.
- ``rows(run_id, case_key, impl, op, status, median_ms, ci_low_ms, ci_high_ms, instructions, backend, times_ms,
  row_json)`` — ``row_json`` is the whole results row.

Torch-free: sqlite3, numpy and pandas; ruptures is imported only where it is needed. The trend charts are
bench/present/history_plots.py; the command is bench/commands/history.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from . import schema
from .schema import env_groups

DEFAULT_DB = Path("results/history.sqlite")
SCHEMA_VERSION = 1
METRICS = {"time": ("median_ms", "ms"), "instructions": ("instructions", "instructions")}
#: pen = PENALTY_FACTOR · log(n) · σ̂². Simulated on 300 seeded series with 2% log-normal noise: with 2 (the BIC
#: choice) 10–20% of pure-noise series showed a false change point; with 6, 4% at n = 10 and ~1% from n = 30, while a
#: 10% step over the last 3 (or more) points is found within ±1 run 80% of the time at n = 10 and 96% from n = 30.
PENALTY_FACTOR = 6.0
#: σ̂ never falls below this (in log units, 0.1%): instruction counts are nearly deterministic, and σ̂ = 0 would make
#: every point a change point.
MIN_SIGMA = 1e-3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, "commit" TEXT, commit_time TEXT, start TEXT, env_key TEXT, suite TEXT, source TEXT,
    env_json TEXT);
CREATE TABLE IF NOT EXISTS rows (
    run_id TEXT NOT NULL REFERENCES runs(run_id), case_key TEXT NOT NULL, impl TEXT NOT NULL, op TEXT, status TEXT,
    median_ms REAL, ci_low_ms REAL, ci_high_ms REAL, instructions REAL, backend TEXT, times_ms TEXT, row_json TEXT,
    PRIMARY KEY (run_id, case_key, impl));
CREATE INDEX IF NOT EXISTS rows_case ON rows (case_key, impl);
CREATE INDEX IF NOT EXISTS runs_env ON runs (env_key);
"""


class HistoryError(ValueError):
    """The history file or a run directory cannot be used; the message says which and why."""


# --- the file -----------------------------------------------------------------------------------------------------

@contextmanager
def connect(db_path: Path, create: bool = True) -> Iterator[sqlite3.Connection]:
    """An open history at the current schema version: created (or migrated) when ``create``, else it must exist.
    A file written by a newer convbench is refused rather than misread."""
    db_path = Path(db_path)
    if not create and not db_path.exists():
        raise HistoryError(f"no history at {db_path} (bench history add RUN_DIR creates it)")
    if create:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(db_path)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open {db_path}: {exc}") from exc
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"{db_path} is not a readable SQLite history: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{db_path} has history schema version {version}, newer than this convbench's "
                               f"{SCHEMA_VERSION}: upgrade convbench to read it")
        if version < SCHEMA_VERSION:
            if not create:
                raise HistoryError(f"{db_path} has history schema version {version}; "
                                   f"bench history add migrates it to {SCHEMA_VERSION}")
            _migrate(conn, version)
        yield conn
    finally:
        conn.close()


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a file from ``version`` to SCHEMA_VERSION in one transaction (0: absent or empty → create)."""
    if version == 0:
        conn.executescript("BEGIN;" + _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")


def _utc(text) -> str | None:
    """An ISO time in UTC, so that text order is time order; None stays None, unparsable text is kept."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return str(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def run_id(env: dict) -> str:
    """Stable id of a run: the same run directory (start, host, commit) always gets the same id."""
    key = json.dumps([env.get("start"), env.get("host"), (env.get("git") or {}).get("commit")])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _clean(v):
    """A value SQLite and JSON can hold: NaN → None, numpy scalars → Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _number(v) -> float | None:
    v = _clean(v)
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_run(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    """env.json and the rows of a run directory (``schema.load_run``), or HistoryError naming what is missing."""
    try:
        return schema.load_run(run_dir)
    except ValueError as exc:
        raise HistoryError(str(exc)) from None


def add(run_dir: Path, db_path: Path = DEFAULT_DB) -> tuple[str, int, bool]:
    """Store a run directory: (run_id, rows stored for it, whether the run was new). Adding it again changes nothing
    (a resumed run that has since finished more cases gets those rows added)."""
    env, rows = load_run(run_dir)
    groups = env_groups(env, rows)
    stored, new = 0, False
    for key, (_, group_rows) in groups.items():
        # a run of several environments (run --executor ray) is one history run per environment
        rid = run_id(env) if len(groups) == 1 else run_id(env) + "-" + hashlib.sha256(key.encode()).hexdigest()[:6]
        n, fresh = _add_rows(run_dir, env, key, rid, group_rows, db_path)
        stored, new = stored + n, new or fresh
    return (run_id(env) if len(groups) == 1 else rid), stored, new


def _add_rows(run_dir: Path, env: dict, key: str, rid: str, rows, db_path: Path) -> tuple[int, bool]:
    git = env.get("git") or {}
    records = []
    for r in rows.to_dict("records"):
        r = {k: _clean(v) for k, v in r.items()}
        records.append((rid, str(r["case_key"]), str(r["impl"]), r.get("op"), r.get("status"),
                        _number(r.get("median_ms")), _number(r.get("ci_low_ms")), _number(r.get("ci_high_ms")),
                        _number(r.get("instructions")), r.get("backend"),
                        None if r.get("times_ms") is None else str(r["times_ms"]), json.dumps(r, default=str)))
    with connect(db_path) as conn, conn:
        new = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (rid,)).fetchone() is None
        if new:
            conn.execute('INSERT INTO runs (run_id, "commit", commit_time, start, env_key, suite, source, env_json) '
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (rid, git.get("commit"), _utc(git.get("time")), _utc(env.get("start")), key,
                          env.get("suite"), str(run_dir), json.dumps(env, default=str)))
        conn.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
        stored = conn.execute("SELECT COUNT(*) FROM rows WHERE run_id = ?", (rid,)).fetchone()[0]
    return int(stored), new


# --- series and change points -------------------------------------------------------------------------------------

def series(db_path: Path = DEFAULT_DB, env_key: str | None = None, case_filter: str | None = None,
           impl: str | None = None, metric: str = "time") -> pd.DataFrame:
    """One point per (run, case, implementation) that has the metric (ok rows; for instructions, measured ones):
    columns run_id, commit, commit_time, start, env_key, case_key, impl, op, value — ordered by commit time, then
    start (a run without git time sorts by its start)."""
    if not isinstance(metric, str) or metric not in METRICS:
        raise HistoryError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    column = METRICS[metric][0]
    where, params = [f"r.{column} IS NOT NULL"], []
    if metric == "time":
        where.append("r.status = 'ok'")
    if env_key:
        where.append("u.env_key = ?")
        params.append(env_key)
    if case_filter:
        where.append("instr(r.case_key, ?) > 0")
        params.append(case_filter)
    if impl:
        where.append("r.impl = ?")
        params.append(impl)
    sql = (f'SELECT u.run_id, u."commit" AS "commit", u.commit_time, u.start, u.env_key, r.case_key, r.impl, r.op, '
           f"r.{column} AS value FROM rows r JOIN runs u ON u.run_id = r.run_id WHERE {' AND '.join(where)} "
           "ORDER BY COALESCE(u.commit_time, u.start), u.start, r.case_key, r.impl")
    with connect(db_path, create=False) as conn:
        try:
            return pd.read_sql_query(sql, conn, params=params)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            raise HistoryError(f"{db_path} is not a readable history: {exc}") from exc


def _median_filter(x: np.ndarray, half: int) -> np.ndarray:
    """Running median over 2·half+1 points (edges repeated): removes bursts shorter than half+1 points, keeps every
    level shift that lasts longer, with its edge in place."""
    if half < 1:
        return x
    padded = np.pad(x, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.median(windows, axis=1)


def noise_sigma(x: np.ndarray) -> float:
    """Robust noise level of a series: MAD of successive differences / √2 (a level shift moves one difference only),
    scaled to a normal standard deviation."""
    d = np.diff(x)
    if len(d) == 0:
        return MIN_SIGMA
    return max(1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2), MIN_SIGMA)


def change_points(values: np.ndarray, min_size: int = 3, penalty_factor: float = PENALTY_FACTOR) -> list[int]:
    """Indices where a new level starts, for persistent shifts only (each level lasts ≥ ``min_size`` points).

    Works on log values (a 10% step is the same size at 1 ms and 1 s). A running median over 2·(min_size−1)+1
    points first removes outliers and bursts shorter than ``min_size``; then ruptures' PELT with an l2 cost and
    pen = penalty_factor · log(n) · σ̂², σ̂ from the raw series' successive differences (``noise_sigma``).
    """
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 2 * min_size or not np.all(np.isfinite(v)):
        return []
    x = np.log(v) if np.all(v > 0) else v
    sigma = noise_sigma(x)
    import ruptures  # slow to import, and only change points need it

    y = _median_filter(x, min_size - 1).reshape(-1, 1)
    pen = penalty_factor * math.log(n) * sigma**2
    ends = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(y).predict(pen=pen)
    return [int(e) for e in ends[:-1]]


def relative_steps(values: np.ndarray, points: list[int]) -> list[float]:
    """Per change point: median of the level it starts / median of the level before − 1 (raw values)."""
    v = np.asarray(values, dtype=float)
    bounds = [0, *points, len(v)]
    return [float(np.median(v[bounds[i + 1]:bounds[i + 2]]) / np.median(v[bounds[i]:bounds[i + 1]]) - 1)
            for i in range(len(points))]


def _groups(frame: pd.DataFrame):
    """(env_key, case_key, impl) → that series' points in run order."""
    return frame.groupby(["env_key", "case_key", "impl"], sort=True)


# --- show and plot ------------------------------------------------------------------------------------------------

def _fmt(value: float, metric: str) -> str:
    return f"{value:.4g} ms" if metric == "time" else f"{value:.4g} instr"


def show(db_path: Path = DEFAULT_DB, env_key: str | None = None, case_filter: str | None = None,
         impl: str | None = None, metric: str = "time", min_size: int = 3, out=sys.stdout) -> int:
    """One plain line per series — for a CI log, no table that folds cells:
    ``CASE_KEY  IMPL  n=12  latest 4.503 ms  changes: 1a2b3c4d5e +12.3%, ...`` under a ``== ENV_KEY`` header."""
    frame = series(db_path, env_key, case_filter, impl, metric)
    if frame.empty:
        print(f"no {metric} points in {db_path} match", file=out)
        return 0
    current_env = None
    for (env, case, name), grp in _groups(frame):
        if env != current_env:
            runs = frame.loc[frame["env_key"] == env, "run_id"].nunique()
            print(f"== {env} ({runs} runs, metric {metric})", file=out)
            current_env = env
        values = grp["value"].to_numpy(dtype=float)
        points = change_points(values, min_size)
        steps = relative_steps(values, points)
        commits = grp["commit"].fillna("no-commit").astype(str).to_list()
        changes = ", ".join(f"{commits[i][:10]} {s:+.1%}" for i, s in zip(points, steps)) or "none"
        print(f"{case}  {name}  n={len(values)}  latest {_fmt(values[-1], metric)}  changes: {changes}", file=out)
    return 0
