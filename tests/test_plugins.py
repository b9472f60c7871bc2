"""Implementations from other packages: the ``convbench.implementations`` entry-point group, as ``pip install``
registers it (a distribution's ``entry_points.txt`` on the path: written by the tests, and once by pip itself), and
the example plugin examples/my_conv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
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


def _pip_install(source, target) -> tuple[bool, str]:
    """``pip install --no-deps --target TARGET SOURCE`` into a folder of its own — never into the test environment,
    where the plugin would join every parametrized test. Offline with this environment's setuptools first (it needs
    one that builds wheels by itself, >= 70.1, or `wheel`), else in pip's isolated build environment, which fetches
    setuptools from the package index. (installed?, what failed)."""
    failures = []
    for isolation in (["--no-build-isolation"], []):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
                               "--disable-pip-version-check", *isolation, "--target", str(target), str(source)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            return True, ""
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        failures.append(f"pip install {isolation[0] if isolation else 'with build isolation'}: {last}")
    return False, "; ".join(failures)


def test_the_example_plugin_installed_by_pip_runs_and_reaches_the_report(tmp_path):
    """The whole path a user takes: pip builds and installs examples/my_conv (so the entry point is pip's own
    entry_points.txt, not one this file writes), and a run with its report measures it beside cudnn."""
    source, site, out = tmp_path / "my_conv", tmp_path / "site", tmp_path / "run"
    # the build writes build/ and *.egg-info beside its sources: into this copy, never into the repository
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    installed, why = _pip_install(source, site)
    if not installed:
        if os.environ.get("CI"):  # CI reaches the package index: a build that fails there is a failure
            pytest.fail(f"pip could not install examples/my_conv: {why}")
        pytest.skip(f"pip could not build examples/my_conv here (no network and no setuptools that builds wheels?): "
                    f"{why}")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    assert list(site.glob("convbench_my_conv-0.1.0.dist-info/entry_points.txt")), sorted(p.name for p in site.iterdir())
    proc = bench("run", "--suite", "smoke", "--impl", "my_conv", "cudnn", "--op", "conv2d", "--max-seconds", "0.05",
                 "--out", out, "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    mine, library = rows[rows["impl"] == "my_conv"], rows[rows["impl"] == "cudnn"]
    assert len(mine) == len(library) > 0 and set(mine["status"]) == {"ok"}, mine[["case_key", "status", "error"]]
    assert "my_conv" in (out / "report.md").read_text()


def test_a_plugin_that_fails_to_import_is_named_by_the_run_that_goes_on_without_it(tmp_path):
    out = tmp_path / "run"
    proc = bench("run", "--suite", "smoke", "--op", "max_pool2d", "--where", "kernel=2", "--impl", "naive", "cudnn",
                 "--max-seconds", "0.05", "--out", out, "--no-report",
                 env=_installed(tmp_path, "broken = no_such_module_here"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: implementation broken = no_such_module_here was not loaded" in proc.stderr
    env = json.loads((out / "env.json").read_text())
    assert any("no_such_module_here" in w for w in env["warnings"])
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"ok"}
