"""Build and load the C++ helpers in kernels/im2col/csrc/ with the machine's own compiler, on first use.

The sources include no torch headers (they declare the few ATen symbols they call), so a build takes about a
second; the shared object is cached under ``$CONVBENCH_CACHE_DIR`` (default ``~/.cache/convbench``) keyed by the
source, the flags, the compiler and the torch build, and loaded with ctypes. ``-march=native`` is safe because the
object is built on the machine that runs it; tests also build a portable variant (``arch``) to check the code
paths a machine without AVX-512 takes. When there is no compiler, or the torch build lacks a symbol, ``load``
returns None and ``reason`` says why: callers fall back to their pure-torch path and report which one ran.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import torch

CSRC = pathlib.Path(__file__).resolve().parent / "csrc"
FLAGS = ("-O3", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
         "-fno-tree-loop-distribute-patterns")  # keep short copy loops inline, not memcpy calls
#: set to 0 to disable the native helpers (the pure-torch paths then run)
ENV_SWITCH = "CONVBENCH_NATIVE"
#: the default -march target (instruction counts under valgrind, which has no AVX-512, use x86-64-v3)
ENV_ARCH = "CONVBENCH_NATIVE_ARCH"

_lock = threading.Lock()
_loaded: dict[tuple[str, str], ctypes.CDLL | None] = {}
_reasons: dict[tuple[str, str], str] = {}


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CONVBENCH_CACHE_DIR") or pathlib.Path.home() / ".cache" / "convbench")


def _compiler() -> str | None:
    for cxx in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


def _build(name: str, arch: str) -> ctypes.CDLL:
    src = CSRC / f"{name}.cpp"
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    torch_lib = pathlib.Path(torch.__file__).resolve().parent / "lib"
    link = (f"-L{torch_lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_lib}")
    flags = (*FLAGS, f"-march={arch}")
    key = hashlib.sha256("\0".join((src.read_text(), *flags, *link, cxx, torch.__version__)).encode()).hexdigest()
    so = _cache_dir() / f"{name}-{key[:16]}.so"
    if not so.exists():
        so.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=so.parent) as tmp:  # build aside, then rename: concurrent workers are safe
            out = pathlib.Path(tmp) / so.name
            proc = subprocess.run([cxx, *flags, str(src), "-o", str(out), *link], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{cxx} failed to build {src.name}: {proc.stderr.strip()[-2000:]}")
            os.replace(out, so)
    return ctypes.CDLL(str(so))


def load(name: str, arch: str | None = None) -> ctypes.CDLL | None:
    """The compiled ``csrc/<name>.cpp`` (built once per machine, torch build and ``-march`` target, by default
    ``$CONVBENCH_NATIVE_ARCH`` or ``native``), or None when it cannot be used."""
    arch = arch or os.environ.get(ENV_ARCH, "native")
    key = (name, arch)
    with _lock:
        if key not in _loaded:
            lib = None
            if os.environ.get(ENV_SWITCH, "1") == "0":
                _reasons[key] = f"disabled by {ENV_SWITCH}=0"
            else:
                try:
                    lib = _build(name, arch)
                except (OSError, RuntimeError) as e:  # no compiler, a failed build, or an unresolved torch symbol
                    _reasons[key] = str(e)
            _loaded[key] = lib
        return _loaded[key]


def reason(name: str, arch: str | None = None) -> str | None:
    """Why ``load(name, arch)`` returned None (None when it loaded)."""
    arch = arch or os.environ.get(ENV_ARCH, "native")
    load(name, arch)
    return _reasons.get((name, arch))


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)
