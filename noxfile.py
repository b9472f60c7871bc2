"""convbench's nox sessions.

Every session runs in one shared virtualenv, ``.nox/convbench``: PyTorch with its CUDA libraries is ~5.5 GB, so it
is downloaded and installed once, and the environment is refreshed only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import sys

import nox

ROOT = pathlib.Path(__file__).resolve().parent
ENV = ROOT / ".nox" / "convbench"
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter, created or refreshed (``pip install -e .[dev]``) when needed."""
    py = ENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    stamp = ENV / ".installed-from"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not py.exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    if not stamp.exists() or stamp.read_text() != want:
        session.run(str(py), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev,ray]", external=True)
        stamp.write_text(want)
    return str(py)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite: every implementation against the float64 oracle (Triton under its CPU interpreter when
    there is no GPU; GPU-only tests skip with a reason). Extra arguments go to pytest."""
    py = _python(session)
    session.run(py, "-m", "pytest", *session.posargs, external=True)


@nox.session
def cluster(session: nox.Session) -> None:
    """Run the tests of ``run --executor ray`` on Ray clusters started in the tests (marked ``ray``, ~4 min on
    2 cores; the default tests leave them out). .ci/run calls it after ``tests``. Extra arguments go to pytest."""
    py = _python(session)
    session.run(py, "-m", "pytest", "-m", "ray", "tests/test_cluster.py", *session.posargs, external=True)


#: the triton of the GPU machine the project's GPU windows run on (torch 2.11 there)
GPU_TRITON = "3.6.0"


@nox.session
def sm90(session: nox.Session) -> None:
    """The ahead-of-time sm_90 (H100/H200) check of every Triton kernel and config (kernels/triton/sm90.py: wgmma,
    no spills in loops, shared memory; no GPU needed) compiled with another triton than the one installed — by
    default the GPU machine's, 3.6.0: ``nox -s sm90 -- [VERSION] [sm90 options]``. That triton wheel is installed
    (no dependencies) into .nox/triton-VERSION and put first on PYTHONPATH for this one command, so the project's
    environment keeps its own. Runs ``--quick`` unless options are given (2.5–4 min on 2 cores). .ci/run calls it
    after ``tests``, whose tests/test_sm90.py checks the installed triton."""
    py = _python(session)
    args = list(session.posargs)
    version = args.pop(0) if args and not args[0].startswith("-") else GPU_TRITON
    target = ROOT / ".nox" / f"triton-{version}"
    if not (target / f"triton-{version}.dist-info").is_dir():  # absent, or an interrupted install: start over
        shutil.rmtree(target, ignore_errors=True)
        session.run(py, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), f"triton=={version}",
                    external=True)
    session.run(py, "-m", "kernels.triton.sm90", "--triton", version, *(args or ["--quick"]), external=True,
                env={"PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])})


@nox.session
def bench(session: nox.Session) -> None:
    """Run a benchmark sweep: the quick CPU suite by default (under 5 minutes on 2 cores), written to
    results/runs/<time>-<host>-<device>/. Arguments after -- are passed to ``python -m bench run`` and win, e.g.
    ``nox -s bench -- --device cuda --suite full``."""
    py = _python(session)
    session.run(py, "-m", "bench", "run", "--suite", "quick", "--device", "cpu", *session.posargs, external=True)


@nox.session
def gpu(session: nox.Session) -> None:
    """The whole GPU window in one command (``bench gpu``): env and measured peaks, the window's GPU checks with what
    the plan launches precompiled alongside, every config checked, the suites, the report — each phase killed at its
    deadline, planned and trimmed to --budget seconds (default 480). Arguments after -- go to ``bench gpu``, e.g.
    ``nox -s gpu -- --dry-run``, ``-- --rehearse --budget 120`` (the same orchestration on the CPU) or
    ``-- --pack OUT/window.tar.gz`` (one archive, rewritten after every phase)."""
    py = _python(session)
    session.run(py, "-m", "bench", "gpu", *session.posargs, external=True)


@nox.session
def plot(session: nox.Session) -> None:
    """Write report.md, report.html and plots/*.png for a run directory: ``nox -s plot -- DIR``."""
    if not session.posargs:
        session.error("usage: nox -s plot -- RUN_DIR")
    py = _python(session)
    session.run(py, "-m", "bench", "report", *session.posargs, external=True)


@nox.session
def compare(session: nox.Session) -> None:
    """Compare two stored runs case by case, normalised by the library measured in the same rounds, and flag
    regressions: ``nox -s compare -- BASE NEW [--threshold 0.10] [--json FILE]`` (one run: against its baseline)."""
    if not session.posargs:
        session.error("usage: nox -s compare -- [BASE_DIR] NEW_DIR [--threshold 0.10]")
    py = _python(session)
    session.run(py, "-m", "bench", "compare", *session.posargs, external=True)


@nox.session
def ab(session: nox.Session) -> None:
    """The CI regression gate: two revisions timed interleaved in one invocation, suspects confirmed, e.g.
    ``nox -s ab -- origin/main HEAD`` or ``nox -s ab -- --merge-base origin/main --metric time instructions``
    (smoke suite by default; exit 1 on a confirmed regression)."""
    if not session.posargs:
        session.error("usage: nox -s ab -- BASE NEW [bench ab options] | --merge-base REF [options]")
    py = _python(session)
    session.run(py, "-m", "bench", "ab", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: ruff over the whole tree, then the import contracts of pyproject.toml (lint-imports: the layers
    of bench/, ARCHITECTURE.md). .ci/run calls it after ``tests``."""
    py = _python(session)
    session.run(py, "-m", "ruff", "check", ".", *session.posargs, external=True)
    session.run(str(pathlib.Path(py).parent / "lint-imports"), "--no-cache", external=True)
