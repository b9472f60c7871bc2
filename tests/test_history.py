"""bench.runs.history (SQLite history, change points, show, plot) and bench.runs.baseline (promote, find) on small
synthetic run directories — no torch, no timing."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.commands import history as history_command
from bench.present import history_plots
from bench.runs import baseline, history
from bench.runs.schema import COLUMNS, device_key, write_csv

ROOT = Path(__file__).resolve().parent.parent
CASES = ("conv2d|N8 C32 H28 W28|K32 R3 S3|s1 p1 d1 g1 bias|float32|nchw|cpu",
         "max_pool2d|N8 C32 H28 W28|R2 S2|s2 p0 d1|float32|nchw|cpu")


def _env(i: int, commit: str | None = None, complete: bool = True, threads: int = 1) -> dict:
    """Run i: started i hours after the first, at a commit made i hours after the first (git time in Z form)."""
    day, hour = 1 + i // 24, i % 24
    return {"device": "cpu", "device_name": "AMD EPYC", "threads": threads, "torch": "2.15.0+cu132",
            "cpu_model": "AMD EPYC", "start": f"2026-11-{day:02d}T{hour:02d}:00:00+00:00", "host": "vm",
            "git": {"commit": commit or f"{i:04x}" + "ab" * 18, "time": f"2026-10-{day:02d}T{hour:02d}:30:00Z"},
            "complete": complete, "suite": "smoke"}


def _row(case_key: str, impl: str, median: float, status: str = "ok", instructions: float | None = None) -> dict:
    row = {c: "" for c in COLUMNS}
    op = case_key.split("|")[0]
    times = " ".join(f"{median * f:.6g}" for f in (0.98, 1.0, 1.02)) if status == "ok" else ""
    row.update(op=op, impl=impl, device="cpu", backend="torch-ops", dtype="float32", layout="nchw", batch=8,
               in_channels=32, out_channels=32, height=28, width=28, kernel_h=3, kernel_w=3, stride="1", padding="1",
               dilation="1", groups="1", status=status, median_ms=median if status == "ok" else "",
               samples=3 if status == "ok" else 0, times_ms=times, timing_mode="perf_counter",
               case_key=case_key, options="bias=1", threads=1, loops=1)
    if instructions is not None:
        row["instructions"] = instructions
    return row


def _run(tmp: Path, name: str, env: dict, rows: list[dict]) -> Path:
    d = tmp / "runs" / name
    d.mkdir(parents=True)
    (d / "env.json").write_text(json.dumps(env))
    write_csv(d / "results.csv", rows)
    (d / "pytest-benchmark.json").write_text("{}")
    (d / "plots").mkdir()
    (d / "plots" / "x.png").write_bytes(b"png")
    return d


def _rows(scale: float = 1.0, instructions: bool = False) -> list[dict]:
    ins = 1e8 * scale if instructions else None
    return [_row(CASES[0], "naive", 4.5 * scale, instructions=ins), _row(CASES[0], "im2col", 1.2 * scale),
            _row(CASES[0], "triton", 0, status="unsupported"), _row(CASES[1], "naive", 0.3 * scale)]


# --- history -----------------------------------------------------------------------------------------------------

def test_add_is_idempotent_and_versioned(tmp_path):
    db = tmp_path / "h.sqlite"
    run = _run(tmp_path, "a", _env(0), _rows(instructions=True))
    rid, stored, new = history.add(run, db)
    assert (stored, new) == (4, True)  # every status is stored
    assert history.add(run, db) == (rid, 4, False)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION == 1
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 4
        # a run without the instructions column, and NaN instructions, store NULL
        assert conn.execute("SELECT COUNT(*) FROM rows WHERE instructions IS NULL").fetchone()[0] == 3
        env_key, commit = conn.execute('SELECT env_key, "commit" FROM runs').fetchone()
    assert env_key == device_key(_env(0)) and commit == _env(0)["git"]["commit"]
    out = io.StringIO()
    args = SimpleNamespace(history_command="add", run_dir=run, db=db, env_key=None, case=None, impl=None,
                           metric="time", out=None)
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        assert history_command.main(args) == 0
    finally:
        sys.stdout = sys_stdout
    assert "already in history" in out.getvalue()


def test_newer_schema_is_refused_and_bad_input_writes_nothing(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    run = _run(tmp_path, "a", _env(0), _rows())
    with pytest.raises(history.HistoryError, match="newer"):
        history.add(run, db)
    with pytest.raises(history.HistoryError, match="newer"):
        history.series(db)

    fresh = tmp_path / "fresh.sqlite"
    base = dict(db=fresh, env_key=None, case=None, impl=None, metric="time", out=tmp_path / "plots")
    for args in (SimpleNamespace(history_command="add", run_dir=tmp_path / "missing", **base),
                 SimpleNamespace(history_command="add", run_dir=tmp_path, **base),  # no env.json
                 SimpleNamespace(history_command="show", run_dir=None, **base),  # no history yet
                 SimpleNamespace(history_command="add", run_dir=run, **{**base, "db": db})):  # newer version
        assert history_command.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("convbench history:") and err.count("\n") == 1
    assert not fresh.exists() and not (tmp_path / "plots").exists()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not sqlite at all" * 100)
    assert history_command.main(SimpleNamespace(history_command="show", run_dir=None,
                                                   **{**base, "db": garbage})) == 2


def test_series_is_in_commit_order_with_filters(tmp_path):
    db = tmp_path / "h.sqlite"
    for i in (2, 0, 1):  # added out of order
        history.add(_run(tmp_path, f"r{i}", _env(i), _rows(1 + i / 10, instructions=True)), db)
    frame = history.series(db, case_filter="conv2d|", impl="naive")
    assert list(frame["commit"]) == [_env(i)["git"]["commit"] for i in range(3)]
    assert np.allclose(frame["value"], [4.5, 4.95, 5.4])
    assert set(history.series(db)["impl"]) == {"naive", "im2col"}  # the unsupported row has no time
    assert len(history.series(db, env_key="nope")) == 0
    ins = history.series(db, metric="instructions")
    assert list(ins["impl"]) == ["naive"] * 3 and np.allclose(ins["value"], [1e8, 1.1e8, 1.2e8])
    with pytest.raises(history.HistoryError):
        history.series(db, metric="energy")


def test_change_points_find_a_persistent_step_and_ignore_noise_and_outliers():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        noise = np.exp(rng.normal(0, 0.02, 24))
        step = noise * np.where(np.arange(24) >= 14, 1.10, 1.0)
        # one change point, at the step or one run beside it (noise can make a neighbour look like the edge)
        points = history.change_points(step)
        assert len(points) == 1 and abs(points[0] - 14) <= 1, (seed, points)
        assert 0.06 < history.relative_steps(step, points)[0] < 0.14
        late = noise * np.where(np.arange(24) >= 21, 1.10, 1.0)  # only the last 3 runs are slower
        points = history.change_points(late)
        assert len(points) == 1 and abs(points[0] - 21) <= 1, (seed, points)
        assert history.change_points(np.exp(rng.normal(0, 0.02, 30))) == [], seed
        outlier = noise.copy()
        outlier[rng.integers(3, 21)] *= 1.6
        assert history.change_points(outlier) == [], seed
    assert history.change_points(np.full(12, 7.0)) == []  # deterministic counts: no noise, no change
    counts = np.r_[np.full(6, 1e8), np.full(6, 1.01e8)]
    assert history.change_points(counts) == [6]  # a 1% step in an instruction count is real
    assert history.change_points(np.ones(5)) == []  # too short for two levels


def _history_with_step(tmp_path) -> Path:
    db = tmp_path / "h.sqlite"
    rng = np.random.default_rng(3)
    for i in range(12):
        scale = (1.12 if i >= 7 else 1.0) * float(np.exp(rng.normal(0, 0.01)))
        history.add(_run(tmp_path, f"r{i}", _env(i), _rows(scale)), db)
    return db


def test_show_prints_one_plain_line_per_series(tmp_path):
    db = _history_with_step(tmp_path)
    out = io.StringIO()
    assert history.show(db, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"== {device_key(_env(0))} (12 runs")
    series_lines = lines[1:]
    assert len(series_lines) == 3  # (conv2d, naive), (conv2d, im2col), (max_pool2d, naive)
    assert all("n=12" in line and "latest" in line for line in series_lines)
    commit7 = _env(7)["git"]["commit"][:10]
    assert all(f"changes: {commit7} +1" in line for line in series_lines), series_lines
    out = io.StringIO()
    history.show(db, case_filter="max_pool2d", out=out)
    assert len(out.getvalue().splitlines()) == 2
    out = io.StringIO()
    history.show(db, metric="instructions", out=out)
    assert "no instructions points" in out.getvalue()


def test_plot_writes_png_per_op(tmp_path):
    db = _history_with_step(tmp_path)
    paths = history_plots.plot(db, tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(f"history-{device_key(_env(0))}-{op}-time.png"
                                                   for op in ("conv2d", "max_pool2d"))
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


# --- baseline ----------------------------------------------------------------------------------------------------

def test_promote_copies_to_the_device_key_and_find_locates_it(tmp_path):
    root = tmp_path / "baselines"
    first = _run(tmp_path, "a", _env(0), _rows())
    (first / "report.md").write_text("# report\n")
    dest = baseline.promote(first, root)
    assert dest == root / device_key(_env(0))
    assert sorted(p.name for p in dest.iterdir()) == ["BASELINE.json", "env.json", "pytest-benchmark.json",
                                                      "report.md", "results.csv"]  # no plots
    info = json.loads((dest / "BASELINE.json").read_text())
    assert info["commit"] == _env(0)["git"]["commit"] and info["source"] == str(first) and info["promoted_at"]
    assert baseline.find(_env(5), root) == dest
    assert baseline.find(_env(0, threads=2), root) is None

    second = _run(tmp_path, "b", _env(1), _rows(2.0))
    assert baseline.promote(second, root) == dest
    assert json.loads((dest / "BASELINE.json").read_text())["commit"] == _env(1)["git"]["commit"]
    assert not (dest / "report.md").exists()  # replaced as a whole, not merged
    assert [p.name for p in root.iterdir()] == [dest.name]  # no temporary directories left


def test_promote_refuses_incomplete_or_empty_runs(tmp_path):
    root = tmp_path / "baselines"
    with pytest.raises(ValueError, match="run_dir .*incomplete"):
        baseline.promote(_run(tmp_path, "a", _env(0, complete=False), _rows()), root)
    with pytest.raises(ValueError, match="run_dir .*env.json"):
        baseline.promote(tmp_path, root)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "env.json").write_text(json.dumps(_env(0)))
    with pytest.raises(ValueError, match="run_dir .*no rows"):
        baseline.promote(empty, root)
    assert not root.exists() or not any(root.iterdir())


def test_history_baseline_and_schema_do_not_import_torch():
    code = ("import bench.runs.history, bench.runs.baseline, bench.runs.schema; import sys; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
