"""A run of several devices (``run --executor ray`` on a mixed cluster): compare, report, history and baseline group
its rows by environment and never put two devices in one comparison; and the cluster options' usage errors.
Synthetic runs, no Ray, no timing: these run in the default tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.present.report import write_report
from bench.runs import history
from bench.runs.baseline import promote
from bench.runs.compare import compare_runs
from bench.runs.schema import COLUMNS, JsonlWriter, env_groups, finalize, read_rows, row_id

CASES = ("conv2d|N8 C32 H28 W28|K32 R3 S3|s1 p1 d1 g1 bias|float32|nchw|cuda",
         "max_pool2d|N8 C32 H28 W28|k2|s2 p0 d1 ceil=0 indices=0|float32|nchw|cuda")
DEVICES = {"cuda-nvidia-h100-t15-torch2.11.0": "NVIDIA H100", "cuda-nvidia-l4-t7-torch2.11.0": "NVIDIA L4"}


def _row(case_key: str, impl: str, ms: float, env_key: str, target: str = "") -> dict:
    row = {c: "" for c in COLUMNS}
    op = case_key.split("|")[0]
    times = [ms * f for f in (0.97, 0.99, 1.0, 1.01, 1.03, 0.98, 1.02, 1.0, 0.99, 1.01)]
    row.update(op=op, impl=impl, device="cuda", backend="cudnn" if impl == "cudnn" else "triton", dtype="float32",
               layout="nchw", batch=8, in_channels=32, out_channels=32, height=28, width=28, kernel_h=3, kernel_w=3,
               stride="1", padding="1", dilation="1", groups="1", status="ok", median_ms=ms, iqr_ms=0.02 * ms,
               min_ms=min(times), samples=len(times), times_ms=" ".join(f"{t:.6g}" for t in times),
               flops=1e9 if op == "conv2d" else 1e6, bytes=1e6, gflops=1.0 / ms, gbps=1e-3 / ms,
               timing_mode="cuda-events,l2-flush", case_key=case_key, options="", threads=1, loops=1,
               node=f"10.0.0.{len(env_key) % 7} (gpu-{DEVICES[env_key][-4:].strip().lower()})",
               device_name=DEVICES[env_key], env_key=env_key, target=target)
    return row


def _node(env_key: str) -> dict:
    name = DEVICES[env_key]
    return {"device": "cuda", "device_name": name, "threads": int(env_key.split("-t")[1].split("-")[0]),
            "torch": "2.11.0", "cpu_model": "Xeon", "env_key": env_key, "label": f"node of {name}",
            "peaks": {"gemm_flops": {"float32": 5e13}, "copy_bytes_per_s": 3e12, "read_bytes_per_s": 3.5e12}}


def _run(d: Path, scale: dict[str, float], keys=tuple(DEVICES), start="2026-12-01T00:00:00+00:00") -> Path:
    """A Ray run over the devices ``keys``: cudnn and triton on both cases; triton × scale[key]."""
    rows = [_row(c, impl, (1.0 if impl == "cudnn" else 1.2 * scale.get(k, 1.0)) * (1 + i), k)
            for k in keys for i, c in enumerate(CASES) for impl in ("cudnn", "triton")]
    nodes = {f"id-{k}": _node(k) for k in keys}
    env = {"device": "cuda", "device_name": "mixed: " + " | ".join(DEVICES[k] for k in keys), "threads": "mixed",
           "torch": "2.11.0", "cpu_model": "Xeon", "start": start, "end": start, "host": "driver", "complete": True,
           "executor": "ray", "nodes": nodes, "suite": "smoke", "git": {"commit": "ab" * 20}}
    if len(keys) == 1:
        env.update(device_name=DEVICES[keys[0]], threads=_node(keys[0])["threads"])
    d.mkdir(parents=True)
    writer = JsonlWriter(d / "results.jsonl")
    for r in rows:
        writer.write(r)
    writer.close()
    finalize(d, rows, env)
    return d


def test_rows_are_grouped_by_the_environment_that_measured_them(tmp_path):
    d = _run(tmp_path / "run", {})
    groups = env_groups(json.loads((d / "env.json").read_text()), read_rows(d))
    assert list(groups) == list(DEVICES)
    for key, (env, rows) in groups.items():
        assert env["device_name"] == DEVICES[key] and set(rows["env_key"]) == {key} and len(rows) == 4


def test_compare_pairs_devices_and_never_mixes_them(tmp_path, capsys):
    base = _run(tmp_path / "base", {})
    slow_l4 = _run(tmp_path / "new", {"cuda-nvidia-l4-t7-torch2.11.0": 1.5})
    assert compare_runs(base, slow_l4, json_out=tmp_path / "c.json") == 1
    rows = json.loads((tmp_path / "c.json").read_text())
    slower = {(r["env_key"], r["impl"]) for r in rows if r["verdict"] == "slower"}
    assert slower == {("cuda-nvidia-l4-t7-torch2.11.0", "triton")}  # the H100 rows are compared with the H100's
    assert len(rows) == 8 and {r["env_key"] for r in rows} == set(DEVICES)
    out = capsys.readouterr().out
    assert out.count(" vs ") == 2 and "on cuda-nvidia-h100" in out
    # one device on each side, different devices: refused, with or without --allow-env-mismatch for mixed runs
    h100 = _run(tmp_path / "h100", {}, keys=("cuda-nvidia-h100-t15-torch2.11.0",))
    l4 = _run(tmp_path / "l4", {}, keys=("cuda-nvidia-l4-t7-torch2.11.0",))
    assert compare_runs(h100, l4) == 3
    # a mixed run against a one-device run: only the shared device is compared
    assert compare_runs(base, h100, json_out=tmp_path / "h.json") == 0
    assert {r["env_key"] for r in json.loads((tmp_path / "h.json").read_text())} == {"cuda-nvidia-h100-t15-torch2.11.0"}
    assert "only BASE has rows of cuda-nvidia-l4" in capsys.readouterr().err


def test_the_report_of_a_mixed_run_is_one_report_per_device_and_one_side_by_side(tmp_path):
    d = _run(tmp_path / "run", {})
    assert write_report(d) == 0
    parts = sorted(p.name for p in (d / "by-device").iterdir())
    assert parts == sorted(DEVICES)
    for key in parts:
        sub = d / "by-device" / key
        env = json.loads((sub / "env.json").read_text())
        assert env["device_name"] == DEVICES[key] and env["peaks"]["gemm_flops"]  # that node's, not the run's
        assert set(read_rows(sub)["env_key"]) == {key} and (sub / "report.html").exists()
    a, b = (d / "by-device" / k for k in parts[:2])
    assert compare_runs(a, b) == 3, "each part is an ordinary run of its own environment: two devices never compare"
    md = (d / "report.md").read_text()
    assert all(k in md for k in DEVICES) and "Median time per case (ms), per run" in md
    page = (d / "report.html").read_text()
    assert "<script" not in page and "NVIDIA L4" in page


def test_history_stores_a_mixed_run_as_one_series_per_device_and_baseline_refuses_it(tmp_path):
    d = _run(tmp_path / "run", {})
    db = tmp_path / "h.sqlite"
    _, stored, new = history.add(d, db)
    assert new and stored == 8
    frame = history.series(db)
    assert set(frame["env_key"]) == set(DEVICES) and len(frame) == 8
    with pytest.raises(ValueError, match="holds rows of 2 environments"):
        promote(d, tmp_path / "baselines")
    assert not (tmp_path / "baselines").exists()


def test_each_device_rows_are_distinct_by_target():
    a = _row(CASES[0], "cudnn", 1.0, "cuda-nvidia-h100-t15-torch2.11.0", target="NVIDIA H100")
    b = _row(CASES[0], "cudnn", 1.0, "cuda-nvidia-l4-t7-torch2.11.0", target="NVIDIA L4")
    assert row_id(a) != row_id(b) and row_id({"case_key": "k", "impl": "i"}) == ("k", "i", "")


def _main(argv: list[str], capsys) -> tuple[int, str]:
    """bench's CLI in this process (no interpreter start per case): exit code and stderr."""
    from bench.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses before main's body runs
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--each-device"], "--each-device, --retries and --address need --executor ray"),
    (["--retries", "1"], "need --executor ray"),
    (["--address", "auto"], "need --executor ray"),
    (["--retries", "-1"], "--retries must be at least 0"),
    (["--where", "device_name=no-such-device"], "--where device_name=no-such-device: this machine's device is"),
    (["--executor", "ray", "--profile"], "--profile runs on this machine"),
])
def test_cluster_options_without_a_cluster_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    code, err = _main(["run", "--suite", "smoke", "--out", tmp_path / "run", "--no-progress", *args], capsys)
    assert code == 2 and message in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1 or "usage:" in err
    assert not (tmp_path / "run").exists()


def test_ab_refuses_to_pick_machines(capsys):
    code, err = _main(["ab", "HEAD", "HEAD", "--where", "device_name=x"], capsys)
    assert code == 2 and "ab times both sides on this machine" in err
