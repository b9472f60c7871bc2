"""The rows of a run and the files of a run directory — without torch, so that ``compare``, ``report``, ``merge``,
``history`` and ``baseline`` start in well under a second.

- ``results.jsonl``: one JSON row per finished (case, implementation), appended, flushed and fsynced as it finishes
  — the resume source. A line cut short by a kill is dropped (and truncated away) when the run is resumed.
- ``results.csv``: the same rows in contract column order, written at the end by atomic rename.
- ``pytest-benchmark.json``: pytest-benchmark's format (seconds), so its ``compare`` and CI actions read our runs.
- ``env.json``: see bench/measure/env.py; ``fingerprint`` is what must match for two runs to be compared.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

COLUMNS = ("op impl device backend dtype layout batch in_channels out_channels height width kernel_h kernel_w stride "
           "padding dilation groups status error median_ms iqr_ms min_ms samples times_ms flops bytes gflops gbps "
           "images_per_s compile_s max_abs_err max_rel_err timing_mode").split()
EXTRA_COLUMNS = ("case_key", "options", "threads", "loops", "ci_low_ms", "ci_high_ms", "warning", "instructions",
                 "host_us", "pct_peak", "provenance", "node", "device_name", "env_key", "target", "count", "models")
def models_text(counts: dict[str, int]) -> str:
    """A layer row's ``models`` column: how many times each network makes that call, ``resnet18:4;convnext_tiny:1``."""
    return ";".join(f"{m}:{n}" for m, n in counts.items())


def parse_models(text) -> dict[str, int]:
    """The ``models`` column read back (``models_text``): {} for a row that is no network's layer."""
    if not isinstance(text, str) or not text:
        return {}
    out = {}
    for part in text.split(";"):
        name, _, n = part.rpartition(":")
        out[name] = int(n)
    return out


#: what a case measures, the ``op`` column (kernels.OPS, the functions an implementation provides, is another list)
CASE_OPS = ("conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d", "train_step")
STATUSES = ("ok", "mismatch", "error", "timeout", "skipped", "unsupported")
FAILED = ("mismatch", "error", "timeout")
#: the categories of a profile breakdown (bench/measure/profiler.py), each a ``<category> ms`` column of breakdown.csv
CATEGORIES = ("compute", "im2col/col2im", "layout & copies", "allocation & memset", "other ops", "Python & gaps")
#: what must match for two runs to be compared (bench compare exits 3 otherwise)
FINGERPRINT_KEYS = ("device", "device_name", "threads", "torch", "cpu_model")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class UsageError(Exception):
    """Bad command-line usage: exit code 2, and nothing created."""


def fingerprint(env: dict) -> dict:
    return {k: env.get(k) for k in FINGERPRINT_KEYS}


def device_key(env: dict) -> str:
    """A file-name-safe key of the environment fingerprint, e.g. ``cpu-amd-epyc-7b13-t1-torch2.15.0``: runs with the
    same key can be compared; baselines live under ``results/baselines/<key>/``."""
    fp = fingerprint(env)
    name = re.sub(r"[^a-z0-9]+", "-", str(fp["device_name"] or "unknown").lower()).strip("-")
    torch_version = re.sub(r"[^A-Za-z0-9.]+", "-", str(fp["torch"]))
    return f"{fp['device']}-{name}-t{fp['threads']}-torch{torch_version}"


def read_env(run_dir: Path) -> dict:
    path = Path(run_dir) / "env.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    return json.loads(path.read_text())


def load_run(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    """env.json and the rows of a run directory, or ValueError saying what is missing (``run_dir …``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run_dir {run_dir} is not a directory")
    try:
        env = read_env(run_dir)
    except FileNotFoundError:
        raise ValueError(f"run_dir {run_dir} has no env.json: not a run directory") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"run_dir {run_dir}: env.json is unreadable ({exc})") from None
    try:
        rows = read_rows(run_dir)
    except (OSError, ValueError) as exc:
        raise ValueError(f"run_dir {run_dir} has no rows: {exc}") from None
    if rows.empty:
        raise ValueError(f"run_dir {run_dir} has no rows")
    missing = {"case_key", "impl", "status"} - set(rows.columns)
    if missing:
        raise ValueError(f"run_dir {run_dir}: its rows lack {', '.join(sorted(missing))}")
    return env, rows


def row_id(row: dict) -> tuple[str, str, str]:
    """What makes a row unique in a run: its case, implementation and ``target`` — empty for a row any device of
    the run could have given, the device name for ``run --executor ray --each-device``, which runs every case once
    per device kind."""
    return row["case_key"], row["impl"], row.get("target") or ""


def env_groups(env: dict, rows: pd.DataFrame) -> dict[str, tuple[dict, pd.DataFrame]]:
    """A run's rows split by the environment that measured them: ``device_key`` → (that environment, its rows).

    A local run has one group (its env.json). A Ray run (``env["nodes"]``) has one per distinct node environment:
    each row names it in ``env_key``; its environment is the first node's with that key. Rows from before the
    column existed belong to env.json's own key."""
    own = device_key(env)
    keys = rows["env_key"].fillna("").astype(str).replace("", own) if "env_key" in rows else \
        pd.Series(own, index=rows.index)
    by_key = {}
    for node in (env.get("nodes") or {}).values():
        by_key.setdefault(node.get("env_key") or device_key(node), node)
    return {k: (by_key.get(k, env), rows[keys == k]) for k in dict.fromkeys(keys)}


class JsonlWriter:
    """Append-only rows file; every row is on disk (flushed and fsynced) before the next case starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, sort_keys=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a results.jsonl; a final line cut short by a kill is ignored (and cut off when ``repair``)."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
                good_bytes += len(line)
            except json.JSONDecodeError:
                break
    if repair and good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    frame = pd.DataFrame(list(rows))
    cols = list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]
    frame = frame.reindex(columns=cols) if len(frame) else pd.DataFrame(columns=cols)
    atomic_write(path, frame.to_csv(index=False))


def read_rows(run_dir: Path) -> pd.DataFrame:
    """A run's rows as a DataFrame: results.csv when complete, else what results.jsonl holds."""
    csv = run_dir / "results.csv"
    if csv.exists():
        with open(csv, "rb") as f:  # written whole by atomic rename, so it ends with a newline; a cut file rarely does
            f.seek(max(0, csv.stat().st_size - 1))
            if csv.stat().st_size and f.read(1) != b"\n":
                raise ValueError(f"{csv} is corrupted (truncated): it does not end with a whole row")
        try:
            frame = pd.read_csv(csv, keep_default_na=False, na_values=[""],
                                dtype={"stride": str, "padding": str, "dilation": str, "groups": str})
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ValueError(f"{csv} is not a readable results table: {str(exc).splitlines()[0]}") from None
    else:
        rows = read_jsonl(run_dir / "results.jsonl")
        if not rows:
            raise FileNotFoundError(f"{run_dir} has neither results.csv nor rows in results.jsonl")
        frame = pd.DataFrame(rows).astype({"stride": str, "padding": str, "dilation": str, "groups": str})
    _check_rows(frame, csv if csv.exists() else run_dir / "results.jsonl")
    return frame


def _check_rows(frame: pd.DataFrame, source: Path) -> None:
    """Refuse a results file that is not whole: missing contract columns, or a row whose op or status is not one
    of the contract's (a truncated last line reads as a row of blanks)."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks the columns {', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}")
    always = [c for c in ("impl", "device", "case_key", "threads") if c in frame.columns]  # set on every row
    bad = frame[~frame["op"].isin(CASE_OPS) | ~frame["status"].isin(STATUSES) | frame[always].isna().any(axis=1)]
    if len(bad):
        raise ValueError(f"{source} is corrupted (truncated or edited): its row {int(bad.index[0]) + 1} is "
                         f"incomplete")


def pytest_benchmark_json(rows: Iterable[dict], env: dict) -> dict:
    """The run in pytest-benchmark's JSON format: one benchmark per timed ok row, stats in seconds (rows of an
    instruction-count run carry no times and are left out: the format has no field for a count)."""
    # pytest-benchmark: only a run's end writes this file, reading a run never needs it
    from pytest_benchmark import __version__
    from pytest_benchmark.stats import Stats

    benchmarks = []
    for r in rows:
        if r["status"] != "ok" or not str(r.get("times_ms") or "").split():
            continue
        stats = Stats()
        for t in str(r["times_ms"]).split():
            stats.update(float(t) / 1e3)
        name = f"{r['op']}[{r['impl']}-{r['case_key']}]"
        benchmarks.append({
            "group": f"{r['op']} {r['case_key'].split('|', 1)[1]}", "name": name, "fullname": f"convbench::{name}",
            "params": {"impl": r["impl"], "case": r["case_key"]}, "param": f"{r['impl']}-{r['case_key']}",
            "extra_info": {k: r[k] for k in ("gflops", "gbps", "images_per_s", "backend", "timing_mode", "compile_s",
                                             "max_abs_err", "max_rel_err") if r.get(k) not in ("", None)},
            "options": {"timer": env.get("timer", "perf_counter"), "min_rounds": None, "max_time": None,
                        "disable_gc": True, "warmup": True},
            "stats": {**stats.as_dict(), "iterations": int(r.get("loops") or 1), "data": stats.data},
        })
    machine = {"node": env.get("host"), "processor": env.get("cpu", {}).get("model"), "machine": env.get("machine"),
               "python_implementation": "CPython", "python_version": env.get("versions", {}).get("python"),
               "system": env.get("system"), "cpu": env.get("cpu", {}), "gpu": env.get("gpu")}
    git = env.get("git", {})
    return {"machine_info": machine,
            "commit_info": {"id": git.get("commit"), "dirty": git.get("dirty"), "branch": git.get("branch"),
                            "project": "convbench", "time": git.get("time")},
            "benchmarks": benchmarks, "datetime": env.get("end") or env.get("start"), "version": __version__}


def case_label(r) -> str:
    """A short human label of a row's case: 'conv2d_backward 8×32×28² k3 s1 p1 → 32 nchw float32'."""
    if r["op"] == "train_step":
        return f"train_step batch {r['batch']} {r['options']} {r['dtype']}"
    r = {k: (int(v) if isinstance(v, float) and v == v and v.is_integer() else v) for k, v in dict(r).items()}
    shape = f"{r['batch']}×{r['in_channels']}×{r['height']}×{r['width']}"
    geo = f"k{r['kernel_h']}{'' if str(r['kernel_h']) == str(r['kernel_w']) else 'x' + str(r['kernel_w'])}"
    geo += f" s{r['stride']} p{r['padding']}" + (f" d{r['dilation']}" if str(r["dilation"]) != "1" else "")
    if r["op"].startswith("conv"):
        geo += f" →{r['out_channels']}" + (f" g{r['groups']}" if str(r["groups"]) != "1" else "")
    else:
        opts = " ".join(o for o in str(r["options"]).split() if not o.endswith("=0"))
        geo += f" {opts}" if opts else ""
    return f"{r['op']} {shape} {geo} {r['layout']} {r['dtype']}"


def finalize(out: Path, rows: list[dict], env: dict) -> None:
    """results.csv, pytest-benchmark.json and env.json, each by atomic rename."""
    write_csv(out / "results.csv", rows)
    atomic_write(out / "pytest-benchmark.json", json.dumps(pytest_benchmark_json(rows, env), indent=1))
    atomic_write(out / "env.json", json.dumps(env, indent=2))
