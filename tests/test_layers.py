"""bench's layers (ARCHITECTURE.md): the import contracts hold, the torch-free commands load no torch, and the lists
that a torch-free layer has to write out agree with their home."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "results" / "cpu" / "epyc-2vcpu-2026-11-23-quick"

#: each command's argv, then whether torch is in sys.modules after it, one JSON line per command
PROBE = r'''
import json, sys
from bench.cli import main
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    print(json.dumps({"argv": argv, "rc": rc, "torch": "torch" in sys.modules}), flush=True)
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two copies of a committed CPU run (rows and env.json only: no profile)."""
    root = tmp_path_factory.mktemp("layers")
    for name in ("a", "b"):
        (root / name).mkdir()
        for f in ("results.csv", "results.jsonl", "env.json"):
            shutil.copy2(RUN / f, root / name / f)
    return root


def test_the_torch_free_commands_import_no_torch(runs):
    argv = [["compare", str(runs / "a"), str(runs / "b"), "--allow-env-mismatch"],
            ["history", "add", str(runs / "a"), "--db", str(runs / "h.sqlite")],
            ["history", "show", "--db", str(runs / "h.sqlite")],
            ["baseline", "promote", str(runs / "a"), "--root", str(runs / "baselines")],
            ["merge", str(runs / "merged"), str(runs / "a"), str(runs / "b")],
            ["report", str(runs / "b")]]
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    got = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(got) == len(argv), out.stderr[-3000:]
    for g in got:
        assert g["rc"] in (0, 1), g
        assert not g["torch"], f"{' '.join(g['argv'][:2])} imported torch"
    assert (runs / "b" / "report.html").exists() and (runs / "merged" / "results.csv").exists()


def test_the_cli_parses_every_command_without_torch():
    code = ("import sys; from bench.cli import build_parser; build_parser().parse_args(['run', '--suite', 'smoke']); "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_the_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e .[dev])")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:]


def test_the_lists_a_torch_free_layer_writes_out_are_those_of_their_home():
    import kernels
    from bench.measure.suites import SUITE_NAMES, SUITES
    from bench.present.charts import IMPL_ORDER

    assert IMPL_ORDER == kernels.ORDER  # charts cannot import kernels (torch); its colours follow kernels.ORDER
    assert SUITE_NAMES == tuple(SUITES)
