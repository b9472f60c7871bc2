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
from helpers import bench

from bench.commands import gpu_window as gpu
from bench.commands.gpu_window import Phase, Window, execute, plan

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
    assert names == ["resnet50-bf16-fwd", "pool-large", "train", "resnet50-bf16-bwd", "resnet50-max-autotune",
                     "resnet50-tf32", "zoo"], "what the project exists to show first; the forward is trimmed last"
    zoo = gpu.SUITE_RUNS[-1].cases()
    assert {c.op for c in zoo} == {"conv2d", "conv2d_backward", "max_pool2d"} and {c.dtype for c in zoo} == {"bfloat16"}
    fwd = gpu.SUITE_RUNS[0].cases()
    assert len(fwd) == 23 and {c.dtype for c in fwd} == {"bfloat16"} and {c.layout for c in fwd} == {"channels_last"}
    auto = next(r for r in gpu.SUITE_RUNS if r.name == "resnet50-max-autotune")
    assert "cudnn" in auto.impls, "max-autotune rows need cudnn rows of the same cases for a speedup"
    assert auto.cases() and all(c.problem.R == 3 and c.problem.stride == (1, 1) for c in auto.cases())
    train = next(r for r in gpu.SUITE_RUNS if r.name == "train").cases()
    assert {c.problem.batch for c in train} == {256, 4096} and {c.dtype for c in train} == {"bfloat16"}
    pools = next(r for r in gpu.SUITE_RUNS if r.name == "pool-large").cases()
    assert all(c.problem.N * c.problem.C * c.problem.H * c.problem.W * 2 > 4 * 60e6 for c in pools), \
        "pooling inputs several times the H200's 60 MB L2"


def test_precompile_follows_the_plan_in_order_and_only_what_it_keeps():
    planned = [("configs", 6), ("resnet50-bf16-fwd", 5), ("pool-large", 2), ("resnet50-max-autotune", 4),
               ("train", 1)]
    items = gpu.precompile_items(planned)
    kinds = [(it[0], it[1] if it[0] == "case" else it[2]) for it in items]
    assert kinds[:6] == [("config", part) for _ in range(2) for part in gpu.CONFIG_PARTS]
    assert kinds[6:] == [("case", "resnet50-bf16-fwd")] * 5 + [("case", "pool-large")] * 2 + [("case", "train")], \
        "plan order, each suite's first planned cases, pools too; max-autotune launches no Triton kernel"
    fwd = gpu.SUITE_RUNS[0].cases()
    assert [it[2] for it in items[6:11]] == fwd[:5], "the very cases the suite will run first"
    assert gpu.precompile_items([("resnet50-bf16-fwd", 0)]) == []


def test_costs_measured_by_a_committed_window_replace_the_priors(tmp_path):
    (tmp_path / "nvidia-h200-2026-12-01").mkdir()
    (tmp_path / "nvidia-h200-2026-12-01" / "phases.json").write_text(json.dumps({"phases": [
        {"phase": "resnet50-bf16-fwd", "status": "ok", "per_unit_s": 1.25},
        {"phase": "train", "status": "failed", "per_unit_s": 99}]}))
    costs, source = gpu.measured_costs(tmp_path)
    assert costs["resnet50-bf16-fwd"] == (gpu.PRIORS["resnet50-bf16-fwd"][0], 1.25)
    assert costs["train"] == gpu.PRIORS["train"], "a failed phase's figure is not a cost"
    assert "nvidia-h200-2026-12-01" in source


def test_dry_run_prints_the_plan_a_total_within_the_budget_and_the_command():
    out = bench("gpu", "--dry-run", "--budget", "480")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    total = re.fullmatch(r"estimated total: (\d+) s", lines[-2])
    assert total and int(total.group(1)) <= 480, lines[-2]
    assert "timeout -s INT 560 python3 -m bench gpu --budget 480" in lines[-1] and "--pack" in lines[-1]
    for name in ("env", "checks", "configs", "resnet50-bf16-fwd", "pool-large", "train", "report"):
        assert any(re.match(rf"\s+\d+\. {re.escape(name)}\s", line) for line in lines), name


@pytest.mark.parametrize("args, reason", [
    (["--budget", "30"], "--budget must be more than"),
    (["--budget", "60"], "required phases need"),
    ([], "needs a CUDA GPU"),
    (["--pack", "w.zip"], "--pack must name a .tar.gz"),
    (["--pack", "/nonexistent/dir/w.tar.gz"], "does not exist"),
    (["--rehearse", "--budget", "120"], "CONVBENCH_FAULT"),
])
def test_bad_usage_exits_2_and_writes_nothing(tmp_path, args, reason):
    import torch

    if not args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench gpu would run")
    env = {"CONVBENCH_FAULT": "hang:nowhere"} if reason == "CONVBENCH_FAULT" else None
    out = bench("gpu", "--out", str(tmp_path / "w"), *args, env=env)
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


def test_a_shared_process_start_is_charged_once_and_not_when_it_runs_already():
    run = lambda *a: {}  # noqa: E731
    phases = [Phase("a", "", 5, 1, 10, run, group="suites", cold_s=30),
              Phase("b", "", 5, 1, 10, run, group="suites", cold_s=30)]
    cold = plan(phases, 1000)
    assert [s.seconds for s in cold] == [45, 15], "the first of the group pays the start, the next does not"
    assert [s.seconds for s in plan(phases, 1000, frozenset({"suites"}))] == [15, 15]
    assert plan(phases, 40)[0].units == 5, "the start is paid out of the same time: 40 − 30 − 5 → 5 units"


def test_an_interrupt_records_the_phase_in_flight_and_the_rest_as_not_run(tmp_path):
    clock, after = Clock(), []

    def interrupted(window, n, deadline):
        clock.now += 3
        raise gpu.Interrupted("SIGINT")
    phases = [fake("env", 1, 0, 1, required=True, clock=clock), Phase("suite", "", 1, 1, 5, interrupted),
              fake("report", 1, 0, 1, required=True, clock=clock)]
    with pytest.raises(gpu.Interrupted):
        execute(Window(tmp_path, 100, clock=clock), phases, log=lambda *_: None,
                after=lambda w: after.append([r["status"] for r in w.records]))
    assert after[-1] == ["ok", "interrupted", "not run"], "the summary and the archive are written after it too"
    assert [r["status"] for r in json.loads((tmp_path / "phases.json").read_text())["phases"]] == after[-1]


# ---- the archive --------------------------------------------------------------------------------------------------
def _window_dir(root: Path) -> Path:
    d = root / "nvidia-h100-80gb-hbm3-2026-12-06"
    (d / "resnet50-bf16-fwd" / "plots").mkdir(parents=True)
    (d / "logs").mkdir()
    (d / "resnet50-bf16-fwd" / "results.jsonl").write_text('{"status": "ok"}\n')
    (d / "resnet50-bf16-fwd" / "plots" / "big.png").write_bytes(os.urandom(3 << 20))  # incompressible
    (d / "logs" / "suites.log").write_bytes(b"x" * (1 << 20) + b"the end\n")
    (d / "env.json").write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3",
                                            "versions": {"triton": "3.6.0"}}))
    (d / "tuned.jsonl").write_text(json.dumps({"key": "_k|bfloat16|1|X=1", "config": {
        "kwargs": {"BLOCK_M": 64}, "num_warps": 4, "num_stages": 3}}) + "\n")
    return d


def test_the_archive_is_one_file_under_the_limit_leaving_out_plots_first_and_unpacks_for_one_git_add(tmp_path,
                                                                                                      monkeypatch):
    import tarfile

    from bench.runs import pack
    from kernels.triton import tuning

    d = _window_dir(tmp_path / "w")
    archive = tmp_path / "out" / "window.tar.gz"
    manifest = pack.pack(d, archive, d.name, limit=2 << 20)
    assert archive.stat().st_size <= 2 << 20 and list(archive.parent.iterdir()) == [archive]
    assert manifest["left_out"] and manifest["left_out"][0].startswith("resnet50-bf16-fwd/plots/big.png")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        log = tar.extractfile(f"{d.name}/logs/suites.log").read()
    assert all(n.startswith(d.name + "/") for n in names) and f"{d.name}/resnet50-bf16-fwd/results.jsonl" in names
    assert log.endswith(b"the end\n") and len(log) < (1 << 20), "a long log keeps its end"
    monkeypatch.setattr(tuning, "STORE_DIR", tmp_path / "tuned")
    assert gpu.unpack_command(archive, tmp_path / "results") == 0
    assert (tmp_path / "results" / d.name / "resnet50-bf16-fwd" / "results.jsonl").exists()
    stored = json.loads((tmp_path / "tuned" / "nvidia-h100-80gb-hbm3-triton3.6.0.json").read_text())
    assert "_k|bfloat16|1|X=1" in stored["configs"], "the window's tuned configs are merged under ITS triton"
    with pytest.raises(gpu.UsageError, match="exists already"):
        gpu.unpack_command(archive, tmp_path / "results")


def test_the_archive_is_replaced_whole_never_half_written(tmp_path):
    from bench.runs import pack

    d = _window_dir(tmp_path / "w")
    archive = tmp_path / "window.tar.gz"
    pack.pack(d, archive)
    first = archive.read_bytes()
    (d / "summary.md").write_text("| env | ok |\n")
    pack.pack(d, archive)
    assert archive.read_bytes() != first and not list(tmp_path.glob("*.tmp"))
    assert pack.read_name(archive) == d.name


# ---- deadlines that hold ------------------------------------------------------------------------------------------
def _sleeper(item, rehearse):
    """A pool job for the tests: 'hang' never returns, 'crash' dies with SIGSEGV, anything else is quick."""
    import signal
    import time

    if item == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
    if item == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    return {"status": "ok"}


def test_a_pool_is_killed_at_its_deadline_and_records_what_crashed(tmp_path):
    import multiprocessing as mp
    import time

    from bench.commands.gpu_phases import run_pool

    t0 = time.monotonic()
    got = run_pool(_sleeper, ["a", "crash", "hang", "b", "c"], 2, time.monotonic() + 12, tmp_path / "s.jsonl",
                   True)
    assert time.monotonic() - t0 < 18, "killed at the deadline, not joined"
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert {x["item"]: x["status"] for x in lines} == {"a": "ok", "crash": "crashed", "b": "ok", "c": "ok"}
    assert got["cut_at_deadline"] and got["in_flight_when_cut"] == ["hang"]
    assert not mp.active_children(), "no worker left behind"


def test_reap_kills_what_a_phase_started_in_another_session():
    import time

    token = "test-" + os.urandom(4).hex()
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); time.sleep(120)"], env={**os.environ, gpu.TOKEN_VAR: token},
                             start_new_session=True)
    time.sleep(0.5)
    assert gpu.processes_with_token(token) == [child.pid]
    assert gpu.reap(token, grace=0.5) == 1
    assert child.wait(5) < 0 and gpu.processes_with_token(token) == []


def test_a_hung_phase_process_is_killed_at_its_deadline(tmp_path):
    import time

    (tmp_path / "phases").mkdir()
    env = {**os.environ, "CONVBENCH_FAULT": "hang:env", "PYTHONPATH": str(ROOT)}
    host = gpu.Host(tmp_path, True, env, tmp_path / "env.log")
    t0 = time.monotonic()
    got = host.call("env", 1, time.monotonic() + 15, [])
    assert got["status"] == "timeout" and time.monotonic() - t0 < 15 + 3 * gpu.KILL_GRACE_S + 2
    assert not host.alive() and gpu.processes_with_token(host.token) == []


def test_the_worker_is_cut_at_the_runs_deadline_inside_a_case(tmp_path):
    import time

    from bench.measure.suites import SUITES
    from bench.measure.worker import Supervisor, WorkerConfig

    case = next(c for c in SUITES["smoke"].cases("cpu") if c.op == "max_pool2d")
    sup = Supervisor(WorkerConfig("cpu", 1, (("CONVBENCH_FAULT", "hang:worker"),)), timeout_s=300)
    try:
        t0 = time.monotonic()
        got = list(sup.measure(case, ["cudnn", "naive"], SUITES["smoke"].timing, 0, deadline=t0 + 20))
        spent = time.monotonic() - t0
    finally:
        sup.close()
    assert spent < 25, "the deadline, not the 300 s per-phase timeout"
    assert got == [] and sup.cut.startswith(case.key), "hung before any implementation ran: no row, left for resume"
    assert sup.proc is None, "the hung worker is gone"


def test_suites_share_one_worker_and_take_the_windows_peaks(tmp_path):
    from bench.commands.runner import RunOptions, run
    from bench.measure.worker import Supervisor, WorkerConfig

    peaks = {"gemm_flops": {"float32": 1e11}, "copy_bytes_per_s": 1e10, "read_bytes_per_s": 1e10, "how": "given"}
    sup = Supervisor(WorkerConfig("cpu", 1), timeout_s=120)
    try:
        for name, op in (("a", "max_pool2d"), ("b", "avg_pool2d")):
            rc = run(RunOptions(suite="smoke", device="cpu", impls=["cudnn"], ops=[op], out=tmp_path / name,
                                limit=1, report=False, progress=False, peaks=peaks, warm_cache=True), sup)
            assert rc == 0
            assert json.loads((tmp_path / name / "env.json").read_text())["peaks"] == peaks
        assert len(sup.warmups) == 1 and sup.restarts == 0, "one worker process served both runs"
    finally:
        sup.close()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [False, True], ids=["conv", "conv+relu"])
def test_config_checks_give_the_kernels_the_operands_of_the_timed_path(monkeypatch, layout, relu):
    """Triton specialises a binary on unit strides: the operands the config check and the precompile compile with
    must be the timed path's (channels_last on a GPU; dy in the output's format, or y's strides under the ReLU)."""
    import torch

    import kernels
    import kernels.triton as kt
    from bench.measure.cases import Case
    from bench.measure.measure import make_grad_out
    from kernels.triton import conv, tuning
    from reference import ConvProblem

    seen: dict[str, set] = {}

    def spy(part, fn, *names):
        def wrapped(*args, **kw):
            seen.setdefault(part, set()).add(tuple(a.stride() for a in args[:len(names)]))
            return fn(*args, **kw)
        return wrapped
    # what a GPU does (under the interpreter _operand leaves the strides as they are)
    monkeypatch.setattr(kt, "_operand", lambda t: t.contiguous(memory_format=torch.channels_last))
    for mod in (kt, conv):
        monkeypatch.setattr(mod, "conv2d_forward", spy("forward", conv.conv2d_forward, "x", "w"))
        monkeypatch.setattr(mod, "conv2d_dgrad", spy("dgrad", conv.conv2d_dgrad, "dy", "w"))
        monkeypatch.setattr(mod, "conv2d_wgrad", spy("wgrad", conv.conv2d_wgrad, "dy", "x"))
    p = ConvProblem(N=2, C=16, H=6, W=6, K=16, R=3, S=3, padding=(1, 1), layout=layout)
    # the timed path: the implementation's autograd, dy as the benchmark (or the next layer, for the ReLU) makes it
    impl, case = kernels.get("triton"), Case("conv2d_backward", p, "cpu")
    t = p.make_inputs("cpu", 0, requires_grad=True)
    fn = impl.conv2d_relu if relu else impl.conv2d
    y = fn(t["input"], t["weight"], t["bias"], **p.kwargs())
    torch.autograd.grad(y, [t["input"], t["weight"], t["bias"]], make_grad_out(case, t))
    timed, seen = seen, {}
    calls, _ = tuning.conv_parts(p, "cpu", relu=relu)
    for part in ("forward", "dgrad", "wgrad"):
        calls[part]()
    assert set(timed) == {"forward", "dgrad", "wgrad"} and seen == timed


def test_the_rehearsal_ends_in_its_budget_despite_a_hung_phase_and_returns_one_archive(tmp_path):
    """The whole orchestration on the CPU (bench gpu --rehearse), with the checks phase hung after it started
    pytest in a session of its own: the phase is killed at its deadline with what it started, the phases after it
    run in the time left, and the one archive holds everything that finished."""
    import tarfile
    import time

    out, archive = tmp_path / "w", tmp_path / "OUT" / "window.tar.gz"
    archive.parent.mkdir()
    t0 = time.monotonic()
    got = bench("gpu", "--rehearse", "--budget", "120", "--out", str(out), "--pack", str(archive),
                 env={"CONVBENCH_FAULT": "hang:checks"})
    spent = time.monotonic() - t0
    assert spent < 130, f"{spent:.0f} s"
    by = {r["phase"]: r for r in json.loads((out / "phases.json").read_text())["phases"]}
    assert by["checks"]["status"] == "timeout" and got.returncode == 1, got.stdout[-2000:]
    assert by["configs"]["status"] == "ok" and by["report"]["status"] == "ok", by
    ran = [r for r in gpu.REHEARSAL_RUNS if by[r.name]["status"] == "ok"]
    assert ran and ran[0].name == "smoke-fwd", "the suites ran in what was left"
    assert list(archive.parent.iterdir()) == [archive] and archive.stat().st_size <= 15 << 20
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    top = next(iter(names)).split("/")[0]
    for f in ("phases.json", "summary.md", "env.json", "configs.csv", "smoke-fwd/results.jsonl", "report.md",
              "logs/checks.log"):
        assert f"{top}/{f}" in names, f
    leftover = [p for p in Path("/proc").glob("[0-9]*/environ")
                if f"CONVBENCH_FAULT_STATE={out / 'logs'}".encode() in _read(p)]
    assert not leftover, "every process the window started is gone"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
