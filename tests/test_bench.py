"""The harness: suites, statistics, rows, and the CLI end to end — failures recorded and the sweep going on, resume
after SIGKILL, shards and merge, report and compare. No test here asserts a speed: timings on this machine are
noise; the bench CLI holds the performance targets."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import bench

from bench.measure.cases import Case
from bench.measure.measure import Outcome
from bench.measure.results import make_row
from bench.measure.suites import SUITES, suite_hash
from bench.measure.timing import converged
from bench.runs.compare import compare_frames
from bench.runs.schema import COLUMNS, read_jsonl
from bench.runs.stats import Ratio, classify, median_ci, summarize
from reference import ConvProblem, PoolProblem

ROOT = Path(__file__).resolve().parent.parent
AXES = ("batch", "in_channels", "out_channels", "height", "kernel_h", "stride", "padding", "dilation")


# ---- suites ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite", ["smoke", "quick", "full"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_suites_vary_every_axis_and_generate_only_valid_cases(suite, device):
    cases = SUITES[suite].cases(device)
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys)), "duplicate cases"
    conv = [c.columns() | {"dtype": c.dtype, "layout": c.layout} for c in cases if c.op == "conv2d"]
    for axis in AXES + ("layout",):
        assert len({str(r[axis]) for r in conv}) >= 2, f"{suite}/{device}: {axis} takes one value"
    if device == "cuda":
        assert {"float32", "tf32", "float16", "bfloat16"} <= {r["dtype"] for r in conv}
    for c in cases:  # every generated problem is one torch accepts: rebuilding it re-runs every check
        c.problem.replace()
    assert {c.op for c in cases} >= {"conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d"}


def test_resnet50_suite_reads_the_real_layers():
    from bench.measure.sweeps import resnet50_layers

    layers = resnet50_layers(1)
    assert len(layers) == 23 and sum(n for _, n in layers) == 53  # 53 convs, 23 distinct
    stem = layers[0][0]
    assert (stem.C, stem.K, stem.R, stem.stride, stem.padding, stem.H) == (3, 64, 7, (2, 2), (3, 3), 224)


def test_suite_hash_is_stable_across_processes_and_sensitive():
    s = SUITES["smoke"]
    here = suite_hash(s.cases("cpu"), s.timing)
    # another interpreter with another string-hash seed: the hash is of the cases' content, not of Python's hash()
    code = ("from bench.measure.suites import SUITES, suite_hash; s = SUITES['smoke']; "
            "print(suite_hash(s.cases('cpu'), s.timing))")
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert here == there
    assert here != suite_hash(s.cases("cpu")[1:], s.timing)
    assert here != suite_hash(s.cases("cpu"), dataclasses.replace(s.timing, max_samples=s.timing.max_samples + 1))


# ---- statistics -----------------------------------------------------------------------------------------------------
def test_median_interval_and_stopping_rule():
    rng = np.random.default_rng(0)
    tight = list(10 + rng.normal(0, 0.01, 30))
    lo, hi = median_ci(tight)
    assert lo <= np.median(tight) <= hi and hi - lo < 0.05
    assert median_ci([1.0, 2.0]) == (-np.inf, np.inf)
    timing = SUITES["quick"].timing
    assert converged(tight, timing)
    assert not converged(list(10 + rng.exponential(5, 30)), timing)
    assert not converged(tight[: timing.min_samples - 1], timing)
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.median_ms, s.min_ms, s.samples) == (3.0, 1.0, 5) and s.iqr_ms == 2.0


def test_verdicts():
    assert classify(Ratio(1.5, 1.4, 1.6, 1e-6, 20), 0.1) == "slower"
    assert classify(Ratio(0.5, 0.45, 0.55, 1e-6, 20), 0.1) == "faster"
    assert classify(Ratio(1.01, 0.98, 1.04, 0.5, 20), 0.1) == "same"
    assert classify(Ratio(1.3, 0.8, 1.9, 0.2, 20), 0.1) == "ambiguous"
    # a change smaller than the drift the control rows show between two runs is never a regression
    assert classify(Ratio(1.15, 1.12, 1.18, 1e-6, 20), 0.1, drift=0.2) == "ambiguous"


def test_compare_flags_a_real_slowdown_and_not_noise():
    rng = np.random.default_rng(1)

    def frame(scale):
        rows = []
        for impl, s in scale.items():
            t = 10 * s * (1 + rng.normal(0, 0.02, 20))
            rows.append(dict(case_key="conv2d|x", impl=impl, op="conv2d", status="ok", batch=1, in_channels=1,
                             out_channels=1, height=1, width=1, kernel_h=1, kernel_w=1, stride=1, padding=0,
                             dilation=1, groups=1, options="", layout="nchw", dtype="float32",
                             times_ms=" ".join(map(str, t))))
        return pd.DataFrame(rows)

    out = compare_frames(frame({"a": 1, "b": 1, "c": 1}), frame({"a": 1.0, "b": 1.5, "c": 0.6}))
    got = dict(zip(out["impl"], out["verdict"]))
    assert got == {"a": "same", "b": "slower", "c": "faster"}


def test_row_has_contract_columns_and_honest_statistics():
    case = Case("conv2d", ConvProblem(N=2, C=4, H=8, W=8, K=4, R=3, S=3, padding=(1, 2), stride=(2, 1)))
    row = make_row(case, Outcome("naive", "ok", backend="torch-ops", times_ms=(2.0, 1.0, 3.0), loops=4,
                                 max_abs_err=1e-6, max_rel_err=1e-5), "perf_counter,threads=2", 2)
    assert list(row)[: len(COLUMNS)] == list(COLUMNS)
    assert (row["median_ms"], row["min_ms"], row["samples"], row["times_ms"]) == (2.0, 1.0, 3, "2 1 3")
    assert (row["stride"], row["padding"], row["dilation"]) == ("2x1", "1x2", "1")
    assert row["gflops"] == pytest.approx(case.flops() / 2e-3 / 1e9, rel=1e-4)
    assert row["gbps"] == pytest.approx(case.bytes_moved() / 2e-3 / 1e9, rel=1e-4)
    pool = Case("max_pool2d", PoolProblem("max_pool2d", 1, 3, 8, 8, kernel=(2, 2)))
    failed = make_row(pool, Outcome("im2col", "error", "RuntimeError: x"), "perf_counter", 2)
    assert failed["median_ms"] == "" and failed["status"] == "error" and failed["groups"] == ""


# ---- the CLI end to end ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    proc = bench("run", "--suite", "smoke", "--impl", "naive", "im2col", "cudnn", "--max-seconds", "0.05",
                 "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_run_writes_every_file_and_column(smoke_run):
    csv = pd.read_csv(smoke_run / "results.csv", keep_default_na=False)
    assert list(csv.columns[: len(COLUMNS)]) == list(COLUMNS)
    jsonl = read_jsonl(smoke_run / "results.jsonl")
    assert len(jsonl) == len(csv) == 3 * len(SUITES["smoke"].cases("cpu"))
    assert set(csv["status"]) == {"ok"}
    for _, r in csv.iterrows():
        t = [float(v) for v in r["times_ms"].split()]
        assert len(t) == r["samples"] and abs(np.median(t) - r["median_ms"]) <= 1e-3 * r["median_ms"]
        assert r["max_abs_err"] != "" and r["timing_mode"].startswith("perf_counter,threads=")
    env = json.loads((smoke_run / "env.json").read_text())
    for key in ("versions", "threads", "cpu", "git", "suite_hash", "start", "end", "warnings"):
        assert key in env, key
    assert env["versions"]["torch"] and env["complete"]
    pb = json.loads((smoke_run / "pytest-benchmark.json").read_text())
    assert len(pb["benchmarks"]) == len(csv) and {"median", "iqr", "rounds"} <= set(pb["benchmarks"][0]["stats"])



def test_a_run_passes_the_contracts_checker(smoke_run):
    tool = ROOT.parent / "shared/tools/check_run.py"
    if not tool.exists():
        pytest.skip(f"the contract's checker is not beside this checkout ({tool})")
    check = subprocess.run([sys.executable, str(tool), str(smoke_run), "--impls", "naive,im2col,cudnn", "--axes"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_report_writes_markdown_html_and_plots(smoke_run):
    proc = bench("report", smoke_run)
    assert proc.returncode == 0, proc.stderr
    md = (smoke_run / "report.md").read_text()
    assert "Speed relative to the library" in md and "GFLOP/s" in md and "GB/s" in md
    assert "<img" in (smoke_run / "report.html").read_text()
    assert {p.name for p in (smoke_run / "plots").glob("*.png")} >= {"speedup_heatmap.png", "roofline.png"}


def _rescaled(run: Path, out: Path, factor) -> Path:
    """A copy of ``run`` whose samples are multiplied by ``factor(row)`` (a float per sample, or one per row)."""
    out.mkdir()
    df = pd.read_csv(run / "results.csv")
    for i, row in df.iterrows():
        if isinstance(row["times_ms"], str):
            t = np.array([float(v) for v in row["times_ms"].split()]) * factor(row)
            df.loc[i, "times_ms"] = " ".join(f"{v:.6g}" for v in t)
            df.loc[i, "median_ms"] = float(np.median(t))
    df.to_csv(out / "results.csv", index=False)
    (out / "env.json").write_text((run / "env.json").read_text())
    return out


def test_compare_flags_a_slowed_implementation_and_passes_a_jittered_copy(smoke_run, tmp_path):
    rng = np.random.default_rng(0)
    jitter = _rescaled(smoke_run, tmp_path / "jitter", lambda row: rng.lognormal(0, 0.01, row["samples"]))
    proc = bench("compare", smoke_run, jitter)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    slow = _rescaled(smoke_run, tmp_path / "slow", lambda row: 1.5 if row["impl"] == "im2col" else 1.0)
    proc = bench("compare", smoke_run, slow)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert any("im2col" in line and "slower" in line for line in proc.stdout.splitlines())


def test_compare_refuses_other_environments(smoke_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text((smoke_run / "results.csv").read_text())
    env = json.loads((smoke_run / "env.json").read_text())
    (other / "env.json").write_text(json.dumps({**env, "threads": env["threads"] + 1}))
    assert bench("compare", smoke_run, other).returncode == 3
    assert bench("compare", smoke_run, other, "--allow-env-mismatch").returncode == 0
    assert bench("compare", smoke_run, tmp_path / "missing").returncode == 2


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
    env = {"CONVBENCH_PLUGINS": "faulty_impls",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "plugins"), str(ROOT)])}
    out = tmp_path / "faulty"
    t0 = time.monotonic()
    proc = bench("run", "--suite", "smoke", "--op", "conv2d", "max_pool2d", "--where", "stride=2", "--impl",
                 "test-hang", "test-crash", "test-wrong", "test-raise", "cudnn", "--timeout", "10", "--max-seconds",
                 "0.05", "--out", out, "--no-progress", env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    conv = rows[rows["op"] == "conv2d"].groupby("impl")["status"].agg(set).to_dict()
    assert conv == {"test-hang": {"timeout"}, "test-crash": {"error"}, "test-wrong": {"mismatch"},
                    "test-raise": {"error"}, "cudnn": {"ok"}}
    assert set(rows[rows["op"] == "max_pool2d"]["status"]) == {"ok"}  # pooling is fine in every one of them
    crash = rows[(rows["impl"] == "test-crash") & (rows["op"] == "conv2d")]["error"].iloc[0]
    assert "SIGSEGV" in crash and "validate" in crash
    assert "deliberate failure" in rows[rows["impl"] == "test-raise"]["error"].iloc[0]
    wrong = rows[(rows["impl"] == "test-wrong") & (rows["op"] == "conv2d")]
    assert wrong["max_abs_err"].astype(float).min() > 0.5 and "outside rtol" in wrong["error"].iloc[0]
    assert time.monotonic() - t0 < 90


def test_killed_run_resumes_without_duplicates(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "bench", "run", "--suite", "smoke", "--impl", "naive", "cudnn", "--max-seconds",
            "0.2", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(read_jsonl(out / "results.jsonl")) < 4:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, as an OOM killer or a CI timeout would
    proc.wait()
    before = read_jsonl(out / "results.jsonl")
    total = 2 * len(SUITES["smoke"].cases("cpu"))
    assert 4 <= len(before) < total, "the kill should land mid-run"
    resumed = bench("run", "--suite", "smoke", "--impl", "naive", "cudnn", "--max-seconds", "0.2", "--resume",
                    out, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = read_jsonl(out / "results.jsonl")
    ids = [(r["case_key"], r["impl"]) for r in rows]
    assert len(ids) == len(set(ids)) == total
    assert rows[: len(before)] == before  # finished rows were kept, not redone
    assert json.loads((out / "env.json").read_text())["resumed"]


def test_shards_partition_the_suite_and_merge_back(tmp_path):
    parts = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}"
        proc = bench("run", "--suite", "smoke", "--op", "max_pool2d", "avg_pool2d", "--impl", "cudnn",
                     "--max-seconds", "0.05", "--shard", f"{k}/2", "--out", out, "--no-progress")
        assert proc.returncode == 0, proc.stderr[-2000:]
        parts.append(out)
    keys = [set(pd.read_csv(p / "results.csv")["case_key"]) for p in parts]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    merged = tmp_path / "merged"
    assert bench("merge", merged, *parts).returncode == 0
    expected = {c.key for c in SUITES["smoke"].cases("cpu") if c.op in ("max_pool2d", "avg_pool2d")}
    assert set(pd.read_csv(merged / "results.csv")["case_key"]) == expected == keys[0] | keys[1]


@pytest.mark.parametrize("args,message", [
    (["run", "--impl", "nope"], "not registered"),
    (["run", "--shard", "3/2"], "--shard"),
    (["run", "--where", "colour=red"], "--where"),
    (["run", "--where", "batch=12345"], "no case"),
    (["run", "--suite", "nope"], "invalid choice"),
    (["compare", "a"], "cannot read a"),
    (["run", "--timeout", "-5"], "--timeout must be positive"),
    (["run", "--timeout", "0"], "--timeout must be positive"),
    (["run", "--max-seconds", "-1"], "--max-seconds must be positive"),
    (["run", "--threads", "0"], "--threads must be at least 1"),
    (["run", "--threads", "two"], "--threads expects an integer"),
    (["run", "--seed", "-1"], "--seed must be at least 0"),
])
def test_bad_usage_exits_2_with_a_message(args, message, tmp_path):
    proc = bench(*args, "--out", tmp_path / "x") if args[0] == "run" and "--suite" not in args else bench(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists(), "a refused command must create nothing"


def test_cuda_without_a_gpu_is_bad_usage(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = bench("run", "--device", "cuda", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_train_step_rows_and_profile(tmp_path):
    """train_step cases: checked step by step against the float64 reference (whole-step torch.compile included),
    timed as images/s, and (run --profile) profiled after timing into forward / backward / optimizer with a Chrome
    trace per implementation."""
    out = tmp_path / "train"
    proc = bench("run", "--suite", "quick", "--op", "train_step", "--where", "batch=16", "--impl", "cudnn", "compile",
                 "--max-seconds", "0.3", "--profile", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(rows["status"]) == ["ok", "ok"] and set(rows["batch"]) == {16}
    for _, r in rows.iterrows():
        assert r["images_per_s"] == pytest.approx(16 / (r["median_ms"] / 1e3), rel=1e-3)
        assert float(r["max_abs_err"]) < 1e-4 and r["options"] == "model=simplecnn optimizer=sgd"
    assert float(rows[rows["impl"] == "compile"]["compile_s"].iloc[0]) > 0
    profile = pd.read_csv(out / "breakdown.csv", keep_default_na=False)
    ok = profile[profile["status"] == "ok"].set_index("impl")
    assert set(ok.index) == {"cudnn", "compile"} and set(ok["op"]) == {"train_step"}
    for impl in ok.index:
        assert ok.loc[impl, "forward ms"] > 0 and ok.loc[impl, "backward ms"] > 0 and ok.loc[impl, "optimizer ms"] > 0
        trace = out / ok.loc[impl, "trace"]
        assert trace.exists() and trace.name.startswith("trace-train_step-") and f"-{impl}.json" in trace.name
    assert "top operators" in (out / "profile.md").read_text()


def test_the_warm_up_cache_is_left_out_where_it_cannot_be_written(tmp_path, monkeypatch):
    from bench.measure.worker import warm_up_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert warm_up_cache() == tmp_path / "cache" / "convbench" / warm_up_cache().name
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a home whose cache folder cannot be made
    assert warm_up_cache() is None
