"""The import rule of the built-in implementations (issue 22, item 10): only a missing optional package may make an
implementation unavailable — for triton, ``ModuleNotFoundError`` naming ``triton`` itself; any other import error
inside ``kernels/triton`` (a name or submodule that this triton lacks, a bug of ours) fails loudly: it is a load
error, the implementation is not registered, and the test suite fails (conftest ``implementation``) or fails to
collect (tests/test_triton.py) instead of skipping every Triton test while CI stays green.

The broken and missing cases are simulated in subprocesses by an import hook (``sys.meta_path``), so the test
process keeps its real triton; one interpreter runs every simulated case in turn (each start with torch costs
5–10 s here), and one more collects tests/test_triton.py with a broken module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAS_CUDA

import kernels

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

#: An import hook: BREAK (an environment variable) says what to break. 'missing': no triton package at all (what
#: Python raises for ``import triton`` when it is not installed); 'name': kernels.triton.pool runs
#: ``from triton.language import <a name no triton has>`` first — the ImportError a name that triton 3.9 has and
#: 3.6 lacks gives; 'submodule': kernels.triton.gemm imports a triton submodule that does not exist (a
#: ModuleNotFoundError that names a submodule, not the package).
HOOK = r'''
import importlib.abc, importlib.machinery, os, sys

class _Break(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    PREFIX = {"name": "from triton.language import _convbench_no_such_name\n",
              "submodule": "import triton._convbench_no_such_module\n"}
    TARGET = {"name": "kernels.triton.pool", "submodule": "kernels.triton.gemm"}

    def find_spec(self, fullname, path=None, target=None):
        mode = os.environ.get("BREAK")
        if mode == "missing" and fullname.split(".")[0] == "triton":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name="triton")
        if mode in self.TARGET and fullname == self.TARGET[mode]:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            self.real = spec.loader
            spec.loader = self
            return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.PREFIX[os.environ["BREAK"]], module.__dict__)
        self.real.exec_module(module)

sys.meta_path.insert(0, _Break())
'''

#: Every simulated case in one interpreter: 'missing' first (triton never imported), then the broken ones, each
#: on a fresh import of the kernels package. Prints one JSON object per case.
PROBE = HOOK + r'''
import json, pytest, torch
sys.path[:0] = [os.path.join(os.getcwd(), "tests"), os.getcwd()]
for mode in sys.argv[1:]:
    os.environ["BREAK"] = mode
    for m in [m for m in sys.modules if m == "kernels" or m.startswith("kernels.") or m == "conftest"]:
        del sys.modules[m]
    import kernels, conftest
    out = {"mode": mode, "names": list(kernels.names()), "load_errors": kernels.load_errors()}
    try:
        impl = kernels.get("triton")
        out["get"] = "ok"
        out["reason"] = impl.unavailable_reason("cpu")
    except ValueError as exc:
        out["get"] = str(exc)
    try:
        conftest.implementation("triton", "cpu")
        out["implementation"] = "returned"
    except BaseException as exc:  # pytest's Skipped / Failed outcomes are BaseExceptions
        out["implementation"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out), flush=True)
'''


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code args`` in the repository with the interpreter on (as conftest sets it without CUDA)."""
    base = {k: v for k, v in os.environ.items() if k not in ("BREAK", "CONVBENCH_PLUGINS")}
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**base, "TRITON_INTERPRET": "1", "PYTHONPATH": path, **env})


@pytest.fixture(scope="module")
def probed() -> dict:
    modes = ("missing", "name", "submodule") if HAS_TRITON else ("missing",)
    out = _python(PROBE, *modes)
    assert out.returncode == 0, out.stderr[-3000:]
    return {r["mode"]: r for r in map(json.loads, out.stdout.splitlines())}


def test_missing_triton_package_leaves_it_registered_and_unavailable(probed):
    r = probed["missing"]
    assert "triton" in r["names"] and r["load_errors"] == {}, r
    assert r["get"] == "ok" and r["reason"].startswith("triton cannot be imported"), r
    assert "pip install triton" in r["reason"], r
    assert r["implementation"].startswith("Skipped: triton unavailable on cpu: triton cannot be imported"), r


@needs_triton
@pytest.mark.parametrize("mode,error", [
    ("name", "ImportError: cannot import name '_convbench_no_such_name' from 'triton.language'"),
    ("submodule", "ModuleNotFoundError: No module named 'triton._convbench_no_such_module'"),
], ids=["missing-name", "missing-submodule"])
def test_any_other_import_error_in_kernels_triton_fails_loudly(probed, mode, error):
    """Not 'unavailable' (which would turn every row `unsupported` and skip every test): a load error, no
    registered implementation, a lookup that names the error, and a test failure — not a skip — in conftest."""
    r = probed[mode]
    assert "triton" not in r["names"], r
    assert list(r["load_errors"]) == ["triton"] and r["load_errors"]["triton"].startswith(error), r
    assert r["get"].startswith("kernels.get: unknown implementation 'name'='triton' (triton failed to import: "
                               + error), r
    assert r["implementation"].startswith("Failed: triton is not registered, and built-in implementation modules "
                                          "failed to import: kernels.triton: " + error), r


@needs_triton
def test_test_triton_does_not_skip_a_broken_module():
    """tests/test_triton.py skips only when the triton package is absent; a broken kernels.triton is a collection
    error, which fails the run."""
    code = HOOK + "import pytest\nsys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', " \
                  "'tests/test_triton.py']))\n"
    out = _python(code, BREAK="name")
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]  # 2: interrupted by collection errors
    assert "ERROR tests/test_triton.py" in out.stdout, out.stdout[-3000:]
    assert "_convbench_no_such_name" in out.stdout, out.stdout[-3000:]


def test_every_builtin_module_imports():
    """A built-in module that fails to import fails the run here, whichever implementation it is."""
    assert kernels.builtin_load_errors() == {}


@needs_triton
def test_triton_is_registered_and_available_here():
    """What CI checks of the real install: with triton installed, triton is registered and available — under the
    interpreter on a machine without CUDA (conftest sets TRITON_INTERPRET=1 there before triton is imported), on
    the GPU with one."""
    assert "triton" in kernels.names() and "triton" not in kernels.load_errors()
    impl = kernels.get("triton")
    if HAS_CUDA:
        assert impl.unavailable_reason("cuda") is None or "compute capability" in impl.unavailable_reason("cuda")
    else:
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert impl.unavailable_reason("cpu") is None
        assert impl.correctness_only("cpu")
