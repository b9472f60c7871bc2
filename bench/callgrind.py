"""Instruction counts under Callgrind: the deterministic metric for regression tracking on a shared runner.

A whole suite runs in **one** valgrind process (a fresh start with torch costs 60–190 s here), started with
``--instr-atstart=no --collect-atstart=no``: the process runs uninstrumented (≈5× slower than native, not ≈50×)
until a measurement window, which turns instrumentation and collection on, makes ``calls`` calls, dumps the
counters to ``callgrind.out.<pid>.<part>`` and turns both off again. The window's ``totals`` divided by ``calls``
is the row's ``instructions`` (per call, like ``median_ms``).

The client requests come from a five-line C file built with the machine's compiler against valgrind's own
``callgrind.h`` (Debian's valgrind package ships it); without the header, torch's ``_valgrind_toggle`` (collection
only, instrumentation on from the start: slower) is used, and without valgrind the metric is unavailable.

What a count means: valgrind presents a CPU without AVX-512, so torch, oneDNN and our native code take their AVX2
paths under it — counts track work done by the code, they are not a profile of the native run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

HEADER = Path("/usr/include/valgrind/callgrind.h")
SOURCE = """#include <valgrind/callgrind.h>
void cg_begin(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
void cg_end(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
int cg_running(void) { return RUNNING_ON_VALGRIND; }
"""
#: the valgrind binary's options for a suite process (instrumentation off until a window opens)
OPTIONS = ("--tool=callgrind", "--collect-atstart=no", "--instr-atstart=no", "--dump-instr=no", "--cache-sim=no",
           "--branch-sim=no")
#: environment of the process under valgrind: the same hash seed and the AVX2 build of our native code (valgrind
#: cannot run AVX-512), so two runs of the same code execute the same instructions
ENV = {"PYTHONHASHSEED": "0", "CONVBENCH_NATIVE_ARCH": "x86-64-v3", "OMP_NUM_THREADS": "1"}


def unavailable_reason() -> str | None:
    """None when instruction counts can be measured here, else why not."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (Debian: apt-get install valgrind)"
    return None


def command(out_dir: Path) -> list[str]:
    """The valgrind prefix of a suite process whose dumps go to ``out_dir``."""
    uses_helper = HEADER.exists()
    opts = OPTIONS if uses_helper else tuple(o for o in OPTIONS if o != "--instr-atstart=no")
    return ["valgrind", *opts, f"--callgrind-out-file={out_dir}/callgrind.out.%p", "--log-file=" +
            f"{out_dir}/valgrind.%p.log"]


def _cache_dir() -> Path:
    return Path(os.environ.get("CONVBENCH_CACHE_DIR") or Path.home() / ".cache" / "convbench")


class Counter:
    """Inside the process under valgrind: open a window, run the calls, read the dump back."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.lib = self._build() if HEADER.exists() and shutil.which("cc") else None
        if self.lib is None:
            import torch

            if not torch._C._valgrind_supported_platform():
                raise RuntimeError("torch was built without valgrind support and callgrind.h is missing")

    @staticmethod
    def _build() -> ctypes.CDLL:
        key = hashlib.sha256((SOURCE + HEADER.read_text(errors="replace")).encode()).hexdigest()[:16]
        so = _cache_dir() / f"cgctl-{key}.so"
        if not so.exists():
            so.parent.mkdir(parents=True, exist_ok=True)
            src, tmp = so.with_suffix(f".{os.getpid()}.c"), so.with_suffix(f".{os.getpid()}.tmp")
            src.write_text(SOURCE)
            try:
                subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(src), "-o", str(tmp)], check=True,
                               capture_output=True, text=True)
                os.replace(tmp, so)
            finally:
                src.unlink(missing_ok=True)
        return ctypes.CDLL(str(so))

    def running(self) -> bool:
        return bool(self.lib.cg_running()) if self.lib is not None else True

    def count(self, fn, calls: int) -> float:
        """Instructions per call of ``fn`` over one window of ``calls`` calls."""
        if self.lib is not None:
            self.lib.cg_begin()
            for _ in range(calls):
                fn()
            self.lib.cg_end()
        else:
            import torch

            torch._C._valgrind_toggle()
            for _ in range(calls):
                fn()
            torch._C._valgrind_toggle_and_dump_stats()
        return totals(latest_dump(self.out_dir, os.getpid())) / calls


def latest_dump(out_dir: Path, pid: int) -> Path:
    parts = [(int(p.name.rsplit(".", 1)[1]), p) for p in Path(out_dir).glob(f"callgrind.out.{pid}.*")
             if p.name.rsplit(".", 1)[1].isdigit()]
    if not parts:
        raise RuntimeError(f"callgrind wrote no dump for process {pid} in {out_dir}")
    return max(parts)[1]


def totals(path: Path) -> int:
    """The ``totals:`` line of a callgrind dump (``summary:`` only where there is none): the instructions executed
    in the window. valgrind 3.19 writes a wrapped-around ``summary:`` (≈ 2⁶⁴) in dumps after the first when
    collection is toggled, so ``totals:`` is the one to trust; a count that large is refused, never stored."""
    text = Path(path).read_text(errors="replace")
    found = {k: int(v) for k, v in re.findall(r"^(totals|summary):\s*(\d+)", text, re.M)}
    if not found:
        raise RuntimeError(f"{path} has no totals line")
    n = found.get("totals", found.get("summary"))
    if n >= 2**63:
        raise RuntimeError(f"{path}: instruction total {n} is a wrapped-around counter")
    return n
