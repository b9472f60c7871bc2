"""Implementations from other packages: the ``convbench.implementations`` entry-point group, as ``pip install``
registers it (a distribution's ``entry_points.txt`` on the path, here written by the test instead of pip), and the
example plugin examples/my_conv."""

from __future__ import annotations

import os

import pandas as pd
from helpers import ROOT, bench

EXAMPLE = ROOT / "examples" / "my_conv"


def _installed(tmp_path, entry: str) -> dict:
    """An environment in which a distribution declares ``entry`` in the group, as an installed package would."""
    dist = tmp_path / "site" / "convbench_plugin_test-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: convbench-plugin-test\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[convbench.implementations]\n{entry}\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(EXAMPLE), str(ROOT)])}


def test_an_installed_plugin_is_listed_beside_the_built_ins(tmp_path):
    proc = bench("list", env=_installed(tmp_path, "my_conv = my_conv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "my_conv    example plugin" in proc.stdout and "cudnn" in proc.stdout


def test_a_plugin_that_fails_to_import_is_listed_with_its_error(tmp_path):
    proc = bench("list", env=_installed(tmp_path, "broken = no_such_module_here"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(broken = no_such_module_here: not registered — ModuleNotFoundError" in proc.stdout
    assert "cudnn" in proc.stdout


def test_the_example_plugin_runs_its_conv_and_says_why_not_its_pools(tmp_path):
    out = tmp_path / "run"
    proc = bench("run", "--suite", "smoke", "--impl", "my_conv", "cudnn", "--op", "conv2d", "conv2d_backward",
                 "max_pool2d", "--max-seconds", "0.05", "--out", out, "--no-progress", "--no-report",
                 env=_installed(tmp_path, "my_conv = my_conv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    mine = rows[rows["impl"] == "my_conv"]
    assert set(mine[mine["op"] != "max_pool2d"]["status"]) == {"ok"}  # forward and autograd backward agree
    pools = mine[mine["op"] == "max_pool2d"]
    assert set(pools["status"]) == {"unsupported"} and set(pools["error"]) == {"my_conv does not implement max_pool2d"}
