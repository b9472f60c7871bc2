"""``bench gpu`` on the CPU: the plan fits the budget, the window re-plans after each phase with the time really
left, a failing phase does not lose the window, phases.json is written as it goes, and bad usage writes nothing.
The GPU parts are replaced by fake phases and a fake clock; what the suites select is the real selection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu
from bench.gpu import Phase, Window, execute, plan

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A clock the fake phases advance: phase costs are whatever the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake(name, fixed, per, units, spend=None, required=False, min_units=1, fail=False, clock=None, seen=None):
    """A phase that takes ``spend(units)`` seconds of the fake clock (default: exactly its cost model)."""
    def run(window, n, deadline):
        if seen is not None:
            seen.append((name, n, deadline))
            if (window.out / "phases.json").exists():  # what earlier phases recorded is on disk already
                seen.append(("on-disk", [r["phase"] for r in json.loads((window.out / "phases.json").read_text())
                                         ["phases"]]))
        clock.now += spend(n) if spend else fixed + per * n
        if fail:
            raise RuntimeError("device fell over")
        return {"did": n}
    return Phase(name, name, fixed, per, units, run, min_units=min_units, required=required)


def test_plan_keeps_phases_whole_while_they_fit_then_trims_then_skips():
    run = lambda *a: {}  # noqa: E731
    phases = [Phase("a", "", 10, 1, 20, run, required=True), Phase("b", "", 5, 2, 50, run, min_units=5),
              Phase("c", "", 5, 1, 10, run, min_units=5), Phase("z", "", 10, 0, 1, run, required=True)]
    steps = plan(phases, 100)  # a: 30, z reserved 10 → b gets 60 of its 105: (60-5)/2 = 27 units
    assert [(s.phase.name, s.units) for s in steps] == [("a", 20), ("b", 27), ("c", 0), ("z", 1)]
    assert steps[1].state == "trimmed 27/50" and steps[2].state == "skipped" and steps[0].state == "full"
    assert sum(s.seconds for s in steps) <= 100
    roomy = plan(phases, 1000)
    assert all(s.state == "full" for s in roomy)


def test_window_replans_with_the_time_really_left(tmp_path):
    clock, seen = Clock(), []
    phases = [fake("env", 10, 0, 1, required=True, clock=clock, seen=seen),
              # planned 10 + 10×1 = 20 s, but it takes 65 s: the phases after it must shrink
              fake("slow", 10, 1, 10, spend=lambda n: 65, clock=clock, seen=seen),
              fake("suite", 5, 1, 40, min_units=2, clock=clock, seen=seen),
              fake("broken", 5, 1, 5, fail=True, clock=clock, seen=seen),
              fake("report", 5, 0, 1, required=True, clock=clock, seen=seen)]
    window = Window(tmp_path, budget=140, clock=clock)
    records = execute(window, phases, log=lambda *_: None)
    by = {r["phase"]: r for r in records}
    # left before "suite": 140 − 20 (reserve) − 10 − 65 = 45, the report needs 5 → 5 s fixed + 35 units
    assert by["suite"]["units"] == 35 and by["suite"]["state"] == "trimmed 35/40"
    assert by["broken"]["status"] == "skipped", "nothing left for it but the report's share"
    assert by["report"]["status"] == "ok", "a required phase runs whatever is left"
    assert by["slow"]["seconds"] == 65 and by["slow"]["per_unit_s"] == 5.5
    assert clock.now <= 140 - gpu.RESERVE_S
    on_disk = [s for s in seen if s[0] == "on-disk"]
    assert on_disk[-1][1] == ["env", "slow", "suite", "broken"], "phases.json is rewritten after every phase"
    assert by["broken"]["reason"].startswith("5 s left")
    final = json.loads((tmp_path / "phases.json").read_text())
    assert [r["phase"] for r in final["phases"]] == ["env", "slow", "suite", "broken", "report"]
    deadlines = {name: d for name, _, d in (s for s in seen if s[0] != "on-disk")}
    assert all(d <= 140 - gpu.RESERVE_S for d in deadlines.values()), "no phase may run into the reserve"


def test_a_phase_that_raises_is_recorded_and_the_window_goes_on(tmp_path):
    clock = Clock()
    phases = [fake("env", 1, 0, 1, required=True, clock=clock), fake("boom", 1, 1, 3, fail=True, clock=clock),
              fake("after", 1, 1, 3, clock=clock), fake("report", 1, 0, 1, required=True, clock=clock)]
    records = execute(Window(tmp_path, 1000, clock=clock), phases, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "ok"]
    assert "device fell over" in records[1]["error"]


def test_the_selected_suites_are_the_gpu_cases_in_priority_order():
    names = [r.name for r in gpu.SUITE_RUNS]
    assert names[0] == "resnet50-bf16-fwd", "the forward comparison is trimmed last"
    fwd = gpu.SUITE_RUNS[0].cases()
    assert len(fwd) == 23 and {c.dtype for c in fwd} == {"bfloat16"} and {c.layout for c in fwd} == {"channels_last"}
    auto = next(r for r in gpu.SUITE_RUNS if r.name == "resnet50-max-autotune").cases()
    assert auto and all(c.problem.R == 3 and c.problem.stride == (1, 1) for c in auto)
    train = next(r for r in gpu.SUITE_RUNS if r.name == "train").cases()
    assert {c.problem.batch for c in train} == {256, 4096} and {c.dtype for c in train} == {"bfloat16"}
    pools = next(r for r in gpu.SUITE_RUNS if r.name == "pool-large").cases()
    assert all(c.problem.N * c.problem.C * c.problem.H * c.problem.W * 2 > 4 * 60e6 for c in pools), \
        "pooling inputs several times the H200's 60 MB L2"


def test_precompile_items_cover_every_triton_launch_of_the_window():
    items = gpu.precompile_items()
    parts = {}
    for p, relu, which in items:
        parts.setdefault(which, []).append((p, relu))
    assert len(parts[("forward",)]) == 23 + 23  # bf16 channels_last and TF32 NCHW forward layers
    assert len(parts[("dgrad", "wgrad")]) == 23
    fused = parts[("forward", "dgrad", "wgrad")]
    assert all(relu for _, relu in fused) and {p.N for p, _ in fused} == {256, 4096}, "the train step's conv+ReLU"


def test_costs_measured_by_a_committed_window_replace_the_priors(tmp_path):
    (tmp_path / "nvidia-h200-2026-12-01").mkdir()
    (tmp_path / "nvidia-h200-2026-12-01" / "phases.json").write_text(json.dumps({"phases": [
        {"phase": "resnet50-bf16-fwd", "status": "ok", "per_unit_s": 1.25},
        {"phase": "train", "status": "failed", "per_unit_s": 99}]}))
    costs, source = gpu.measured_costs(tmp_path)
    assert costs["resnet50-bf16-fwd"] == (gpu.PRIORS["resnet50-bf16-fwd"][0], 1.25)
    assert costs["train"] == gpu.PRIORS["train"], "a failed phase's figure is not a cost"
    assert "nvidia-h200-2026-12-01" in source


def _bench(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_dry_run_prints_the_plan_and_a_total_within_the_budget():
    out = _bench("gpu", "--dry-run", "--budget", "480")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    total = re.fullmatch(r"estimated total: (\d+) s", lines[-1])
    assert total and int(total.group(1)) <= 480, lines[-1]
    for name in ("env", "checks", "configs", "resnet50-bf16-fwd", "pool-large", "train", "report"):
        assert any(re.match(rf"\s+\d+\. {re.escape(name)}\s", line) for line in lines), name


@pytest.mark.parametrize("args, reason", [
    (["--budget", "30"], "--budget must be more than"),
    (["--budget", "60"], "required phases need"),
    ([], "needs a CUDA GPU"),
])
def test_bad_usage_exits_2_and_writes_nothing(tmp_path, args, reason):
    import torch

    if not args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench gpu would run")
    out = _bench("gpu", "--out", str(tmp_path / "w"), *args)
    assert out.returncode == 2 and reason in out.stderr, (out.returncode, out.stderr)
    assert not (tmp_path / "w").exists()


def test_summary_reads_the_rows_the_window_wrote(tmp_path):
    rows = []
    for case, t_cudnn, t_triton in [("c1", 1.0, 1.25), ("c2", 2.0, 2.0)]:
        row = {"op": "conv2d", "case_key": case, "status": "ok", "gflops": 1.0}
        rows += [dict(row, impl="cudnn", median_ms=t_cudnn, pct_peak=50.0),
                 dict(row, impl="triton", median_ms=t_triton, pct_peak=40.0)]
    (tmp_path / "resnet50-bf16-fwd").mkdir()
    (tmp_path / "resnet50-bf16-fwd" / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lines = gpu.summary(tmp_path, [{"phase": "env", "status": "ok", "seconds": 12, "units": 4, "of_units": 4}])
    assert lines[2].startswith("| env | ok | 12 | 4/4 |")
    head = next(line for line in lines if line.startswith("- resnet50-bf16-fwd"))
    assert "triton 0.89× (2 cases)" in head and "triton 40%" in head  # geomean of 0.8 and 1.0


def test_every_config_is_checked_on_a_gather_layer_and_a_1x1_layer():
    from kernels.triton import conv

    paths = {conv.conv_path(p) for p in gpu.config_layers()}
    assert paths == {"gemm", "gemm-1x1"}, "both GEMM kernels' configs are checked"
    assert all(p.dtype == "bfloat16" and p.layout == "channels_last" for p in gpu.config_layers())
