"""What several test modules share: running ``python -m bench`` as a user would, and skipping where the native
im2col library cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, env: dict | None = None, cwd: Path = ROOT, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in ``cwd`` with ``env`` over this environment; the finished process, output captured."""
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def start_bench(*args, env: dict | None = None, **kw) -> subprocess.Popen:
    """``python -m bench ARGS`` started, not awaited (stdout and stderr in one text pipe)."""
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def native_or_skip() -> None:
    """Skip the test when the native im2col library is not available here (no C++ compiler), saying why."""
    from kernels.im2col import native

    if native.load("im2col_cpu") is None:
        pytest.skip(f"native im2col unavailable: {native.reason('im2col_cpu')}")
