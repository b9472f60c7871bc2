"""``run --executor ray`` on a Ray cluster started in the test: the same rows as a local run, faults, retries,
resume after the driver is killed, Ctrl-C.

Marked ``ray``: the default ``nox -s tests`` leaves them out (a cluster start, a probe and the cases take ~1 min a
test on 2 cores); ``nox -s cluster`` runs them, and ``.ci/run`` calls it after the tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import start_bench

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'convbench[ray]')")

from bench.commands.cluster import FAULT_ENV, SLOT  # noqa: E402
from bench.runs.schema import read_jsonl, read_rows, row_id  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
# a small selection: three convs and two pools, two implementations, short timing
SELECTION = ["--suite", "smoke", "--op", "conv2d", "max_pool2d", "--impl", "naive", "cudnn", "--max-seconds", "0.05",
             "--threads", "1", "--no-report", "--no-progress"]


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, one CPU slot each (as two machines that each run one case at a time)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {SLOT: 1},
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, resources={SLOT: 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _ids(rows) -> list[tuple]:
    return sorted(row_id(r) for r in rows)


def test_a_run_through_ray_gives_the_rows_of_a_local_run(tmp_path):
    rc, out = _finish(start_bench("run", *SELECTION, "--out", str(tmp_path / "local")))
    assert rc == 0, out
    # no --address: a one-node cluster of this machine, started for the run
    rc, out = _finish(start_bench("run", *SELECTION, "--executor", "ray", "--out", str(tmp_path / "ray")))
    assert rc == 0, out
    local, remote = read_jsonl(tmp_path / "local" / "results.jsonl"), read_jsonl(tmp_path / "ray" / "results.jsonl")
    assert _ids(local) == _ids(remote) and len(remote) == 10
    assert len(read_rows(tmp_path / "ray")) == len(remote)  # results.csv holds the same rows
    env = json.loads((tmp_path / "ray" / "env.json").read_text())
    assert env["executor"] == "ray" and len(env["nodes"]) == 1 and env["complete"]
    node = next(iter(env["nodes"].values()))
    assert node["peaks"]["gemm_flops"] and node["threads"] == 1
    for r in remote:
        assert r["node"] == node["label"] and r["env_key"] == node["env_key"] and r["device_name"]
        assert r["status"] == "ok" and r["pct_peak"] != ""  # against that node's measured peaks
    assert {r["env_key"] for r in local} == {node["env_key"]}  # the same machine: the same environment


def test_a_task_that_dies_is_an_error_row_naming_its_node(tmp_path, cluster):
    marker = tmp_path / "died"
    rc, out = _finish(start_bench("run", *SELECTION, "--executor", "ray", "--address", cluster.address,
                             "--out", str(tmp_path / "run"), env={FAULT_ENV: f"k3|s2 p1@{marker}"}))
    assert rc == 1, out
    node = marker.read_text().strip()
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    dead = [r for r in rows if r["status"] == "error"]
    assert len(dead) == 2 and {r["impl"] for r in dead} == {"naive", "cudnn"}
    assert all(f"died on node {node}" in r["error"] and "k3|s2 p1" in r["case_key"] for r in dead)
    assert len(rows) == 10 and len(set(_ids(rows))) == 10


def test_with_retries_a_dead_case_runs_again_on_another_node(tmp_path, cluster):
    marker = tmp_path / "died"
    rc, out = _finish(start_bench("run", *SELECTION, "--executor", "ray", "--address", cluster.address, "--retries",
                                  "1", "--out", str(tmp_path / "run"), env={FAULT_ENV: f"k3|s2 p1@{marker}"}))
    assert rc == 0, out
    assert "retrying on another node" in out
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    retried = [r for r in rows if "k3|s2 p1" in r["case_key"]]
    assert retried and all(r["node"] != marker.read_text().strip() for r in retried)
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert len(env["nodes"]) == 2 and len({r["node"] for r in rows}) == 2


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_a_stopped_driver_leaves_a_run_that_resumes_without_duplicates(tmp_path, cluster, how):
    run_dir = tmp_path / "run"
    args = ["run", *SELECTION, "--max-seconds", "0.5", "--executor", "ray", "--address", cluster.address,
            "--out", str(run_dir)]
    proc = start_bench(*args, start_new_session=True)
    jsonl = run_dir / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(read_jsonl(jsonl)) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    rc, out = _finish(proc)
    before = read_jsonl(jsonl)
    assert 2 <= len(before) < 10
    if how == "ctrl-c":  # a clean stop: everything written, and the run says how to go on
        assert rc == 1 and "continue with --resume" in out, out
        env = json.loads((run_dir / "env.json").read_text())
        assert env["complete"] is False and len(read_rows(run_dir)) == len(before)
    rc, out = _finish(start_bench(*args, "--resume"))
    assert rc == 0, out
    after = read_jsonl(jsonl)
    assert len(after) == 10 and len(set(_ids(after))) == 10
    assert [row_id(r) for r in after[:len(before)]] == [row_id(r) for r in before]  # nothing re-run or lost
    assert json.loads((run_dir / "env.json").read_text())["complete"]


def test_each_device_runs_every_case_on_every_device_kind(tmp_path, cluster):
    rc, out = _finish(start_bench("run", *SELECTION, "--op", "max_pool2d", "--executor", "ray", "--address",
                             cluster.address, "--each-device", "--out", str(tmp_path / "run")))
    assert rc == 0, out
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    # both nodes are this machine: one device kind, so each case once, its target naming the device
    assert len(rows) == 4 and {r["target"] for r in rows} == {rows[0]["device_name"]}


@pytest.mark.parametrize("args, message", [
    (["--where", "device_name=no-such-gpu"], "--where device_name=no-such-gpu: no node of the cluster"),
    (["--device", "cuda"], "no node of the cluster offers a GPU"),
    (["--metric", "instructions"], "--metric instructions counts on this machine"),
])
def test_bad_cluster_usage_exits_2_and_writes_nothing(tmp_path, cluster, args, message):
    rc, out = _finish(start_bench("run", *SELECTION, "--executor", "ray", "--address", cluster.address, *args,
                             "--out", str(tmp_path / "run")))
    assert rc == 2 and message in out, out
    assert not (tmp_path / "run").exists()
