"""What ``bench run`` prints: one line per finished case with its numbers, a closing summary that fits one screen
and never folds a cell, torch's own messages in run.log instead of the console (bench/present/console.py,
bench/runs/runlog.py)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings

import pytest
from helpers import ROOT, bench

from bench.present.console import case_line, closing_summary, duration, label
from bench.runs import runlog

IMPLS = ["naive", "im2col", "cudnn", "compile", "triton"]
OPS = ["conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d", "train_step"]


def _row(impl: str, op: str = "conv2d", status: str = "ok", ms: float | None = 1.0, key: str = "k", **kw) -> dict:
    row = {"op": op, "impl": impl, "status": status, "error": "", "median_ms": ms if status == "ok" else "",
           "case_key": key, "batch": 8, "in_channels": 64, "out_channels": 32, "height": 28, "width": 28,
           "kernel_h": 3, "kernel_w": 3, "stride": "1", "padding": "1", "dilation": "1", "groups": 1,
           "options": "", "layout": "nchw", "dtype": "float32", "pct_peak": 10.0 if status == "ok" else ""}
    return {**row, **kw}


def test_a_case_line_has_each_median_its_speed_against_cudnn_and_the_winner():
    rows = [_row("naive", ms=4.0), _row("im2col", ms=0.5), _row("cudnn", ms=1.0),
            _row("compile", status="mismatch", error="max abs error 3e-2 > atol 1e-4\nmore detail"),
            _row("triton", status="unsupported", error="Triton compiles for GPUs")]
    line = case_line(rows, hidden=frozenset({"triton"}))
    assert line.startswith("conv2d 8×64×28×28 k3 s1 p1 →32 nchw fp32 · ")
    assert "naive 4 ms 0.25×" in line and "im2col 500 µs 2.00×" in line and "cudnn 1 ms ·" in line
    assert "compile MISMATCH (max abs error 3e-2 > atol 1e-4)" in line and "more detail" not in line
    assert line.endswith("best im2col") and "triton" not in line
    assert "triton n/a" in case_line(rows), "an implementation unsupported on this one case only is shown as such"
    assert "\n" not in line


def test_a_case_line_without_cudnn_gives_times_only():
    line = case_line([_row("naive", ms=2.0), _row("im2col", ms=0.002)])
    assert "naive 2 ms ·" in line and "im2col 2 µs ·" in line and "×" not in line.split("fp32")[1]


@pytest.mark.parametrize(("ms", "text"), [(0.00083, "830 ns"), (0.0439, "43.9 µs"), (1.27, "1.27 ms"),
                                          (2400.0, "2.4 s")])
def test_durations_keep_three_digits_with_their_unit(ms, text):
    assert duration(ms) == text


def test_labels_name_pools_and_training_steps_briefly():
    pool = _row("cudnn", op="max_pool2d", options="ceil=0 indices=1", kernel_h=3, kernel_w=3, stride="2")
    assert label(pool) == "max_pool2d 8×64×28×28 k3 s2 p1 indices=1 nchw fp32"
    step = _row("cudnn", op="train_step", options="sgd", batch=64, dtype="bfloat16")
    assert label(step) == "train_step batch 64 sgd bf16"


def _big_run(failures: int) -> list[dict]:
    """Five ops × 40 cases × five implementations, the first ``failures`` compile rows failed."""
    rows, failed = [], 0
    for op in OPS:
        for i in range(40):
            for j, impl in enumerate(IMPLS):
                status = "ok"
                if impl == "triton":
                    status = "unsupported"
                elif impl == "compile" and failed < failures:
                    status, failed = "error", failed + 1
                ms = (1 + i % 7) * (j + 1) / 4 * (1 + (i * j) % 3 / 10)
                rows.append(_row(impl, op=op, status=status, ms=ms, key=f"{op}{i}", pct_peak=i + j,
                                 error="RuntimeError: boom" if status == "error" else ""))
    return rows


@pytest.mark.parametrize("failures", [0, 3, 30])
def test_the_closing_summary_fits_one_screen_one_line_per_row(tmp_path, failures):
    log = tmp_path / "run.log"
    log.write_text("a\nb\nc\n")
    lines = closing_summary(_big_run(failures), {"suite": "quick", "device": "cpu", "device_name": "EPYC",
                                                 "threads": 2, "cases_s": 310.2}, tmp_path, IMPLS,
                            {"triton": "Triton compiles for GPUs"}, tmp_path / "report.html",
                            runlog.mention(log))
    assert len(lines) <= 40, "\n".join(lines)
    assert lines[0] == "== convbench quick: 200 cases × 5 implementations on EPYC, 2 threads in 310 s =="
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("op "))):][:6]
    assert [ln.split()[0] for ln in table] == ["op"] + OPS, "one line per op, none folded"
    assert len({ln.index("best % of peak") if "best" in ln else None for ln in table[:1]}) == 1
    assert "not timed on cpu: triton — Triton compiles for GPUs" in lines
    assert sum(ln.startswith("ERROR compile ") for ln in lines) == min(failures, 8)
    assert (f"… {failures - 8} more failed rows" in "\n".join(lines)) == (failures > 8)
    assert lines[-2] == f"report: {tmp_path / 'report.html'}"
    assert lines[-1] == f"3 lines of torch and compiler messages in {tmp_path / 'run.log'}"
    conv = next(ln for ln in table if ln.startswith("conv2d "))
    assert re.search(r"\d\.\d\d× \(\d", conv), conv  # a geometric mean with its min–max range


def test_torch_messages_and_python_warnings_go_to_run_log_once(tmp_path, capsys):
    import torch  # noqa: F401 — its loggers must exist

    path = tmp_path / runlog.NAME
    handler = runlog.library_logs_to(path)
    try:
        for _ in range(3):
            logging.getLogger("torch._dynamo").warning("Profiler record function %s will be ignored", "f")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's UserWarning", stacklevel=1)
    finally:
        runlog.restore(handler)
    err = capsys.readouterr().err
    assert "will be ignored" not in err and "UserWarning" not in err
    text = path.read_text()
    assert text.count("Profiler record function f will be ignored") == 1 and "a library's UserWarning" in text
    assert runlog.lines(path) == len([ln for ln in text.splitlines() if ln.strip()]) >= 2
    assert logging.getLogger("torch._dynamo").handlers, "torch's own handler is back after the run"


def test_a_smoke_run_through_a_pipe_prints_numbers_per_case_and_a_short_summary(tmp_path):
    out = tmp_path / "run"
    proc = bench("run", "--suite", "smoke", "--max-seconds", "0.02", "--out", out, "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = (proc.stderr + proc.stdout).splitlines()
    cases = [ln for ln in console if re.match(r"\[ ?\d+/10\] ", ln)]
    assert len(cases) == 10, "\n".join(console)
    for ln in cases:
        assert re.search(r"cudnn \d[\d.]* [nµm]?s", ln) and "×" in ln and " best " in ln, ln
        assert "triton" not in ln, "named once at the start, not on every case"
    assert sum("not timed on cpu: triton" in ln for ln in proc.stderr.splitlines()) == 1
    summary = proc.stdout.splitlines()
    start = next(i for i, ln in enumerate(summary) if ln.startswith("== convbench smoke"))
    assert len(summary) - start <= 40
    for noise in ("W1206", "No CUDA runtime", "will be ignored", "Warning:", "UserWarning"):
        assert not any(noise in ln for ln in console), f"{noise!r} reached the console"
    if sys.platform == "linux":  # the worker's own messages were kept, not lost
        assert (out / "run.log").exists()


def test_stderr_to_sends_descriptor_2_to_the_log_and_keeps_a_console_stream(tmp_path):
    path = tmp_path / runlog.NAME
    code = f"""if True:
        import os, sys
        from bench.runs import runlog
        with runlog.stderr_to({str(path)!r}) as console:
            os.write(2, b"USDT: profiler_start\\n")  # what a C++ library writes, below Python
            print("a child's line", file=sys.stderr, flush=True)
            print("the command's own line", file=console, flush=True)
        os.write(2, b"after the block\\n")
    """
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stderr == "the command's own line\nafter the block\n"
    assert path.read_text() == "USDT: profiler_start\na child's line\n"


def test_a_share_above_the_measured_peak_is_explained_once():
    import pandas as pd

    from bench.present.console import speed_table

    rows = [_row("cudnn", pct_peak=150.0), _row("naive", ms=2.0, pct_peak=75.0)]
    lines = speed_table(pd.DataFrame(rows), ["naive", "cudnn"])
    assert lines[-1].startswith("above 100% of peak: ") and "150% cudnn" in lines[-2]
    assert not speed_table(pd.DataFrame([_row("cudnn"), _row("naive", ms=2.0)]), ["naive", "cudnn"])[-1].startswith(
        "above")



def test_a_case_measured_on_two_machines_is_two_pairs_not_a_cross_product():
    import pandas as pd

    from bench.present.console import speed_table

    rows = [_row("cudnn", ms=1.0, env_key="a"), _row("naive", ms=2.0, env_key="a"),
            _row("cudnn", ms=1.0, env_key="b"), _row("naive", ms=4.0, env_key="b")]
    conv = speed_table(pd.DataFrame(rows), ["naive", "cudnn"])[2]
    assert conv.split()[:4] == ["conv2d", "2", "0.35×", "(0.25–0.5)"], conv
