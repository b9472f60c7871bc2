"""Instruction counts under Callgrind: the deterministic metric for regression tracking on a shared runner.

A whole suite runs in **one** valgrind process (a fresh start with torch costs 60–190 s here), started with
``--instr-atstart=no --collect-atstart=no``: the process runs uninstrumented (≈5× slower than native, not ≈50×)
until a measurement window, which turns instrumentation and collection on, makes ``calls`` calls, dumps the
counters to ``callgrind.out.<pid>.<part>`` and turns both off again. The window's instructions outside glibc's
allocator (below) divided by ``calls`` are the row's ``instructions`` (per call, like ``median_ms``).

The client requests come from a five-line C file built with the machine's compiler against valgrind's own
``callgrind.h`` (Debian's valgrind package ships it); without the header, torch's ``_valgrind_toggle`` (collection
only, instrumentation on from the start: slower) is used, and without valgrind the metric is unavailable.

What a count means: valgrind presents a CPU without AVX-512, so torch, oneDNN and our native code take their AVX2
paths under it — counts track work done by the code, they are not a profile of the native run.

What a row's count must not depend on: the process's history. Two runs of the same selection used to differ by up
to 0.7% on a case (0.46% over seven runs of the smoke conv2d cases; one case or another, at random), and the
difference was all in glibc's malloc/free (``_int_malloc``, ``malloc_consolidate``, ``unlink_chunk``,
``_int_memalign``; callgrind_annotate of the two dumps): what the allocator executes for the same requests depends
on the heap the window finds. Kept out of the history: the valgrind peer warms up by a count of calls, not for a
time (bench/measure/peer.py; the clock decided how many); each window follows as many un-counted calls of the same loop
(the allocator, the interpreter's specialised bytecode and lazy caches reach the state the window's own calls
keep); glibc's mmap and trim thresholds are fixed (``ENV``; by default they follow the largest block freed so far);
the client-request functions are bound before any window (a first ``lib.cg_end`` lookup landed in the first one).
Kept out of the count: the heap's layout still follows everything the process did — a checkout's path length in
``sys.path``; and identical starts are not always identical (the heap after ``import torch`` under valgrind
differed in one of five) — so a row counts the instructions *outside* glibc's allocator (``split_window``), and
``windows.jsonl`` beside the dumps keeps each window's total and allocator share. Measured: README, "Tracking
regressions in CI".
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
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
#: glibc malloc thresholds fixed for the process under valgrind: by default both move up, process-wide, to the largest
#: block freed so far (mmap threshold from 128 KiB up to 32 MiB, trim threshold twice that), so whether a call's
#: buffers are mmapped or carved from the heap, and whether the heap is trimmed and regrown inside a window, depended
#: on everything the process had done before. Fixed: blocks under 32 MiB always come from the heap, which is never
#: trimmed (the process keeps its peak heap: it only counts).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
#: environment of the process under valgrind: the same hash seed, the AVX2 build of our native code (valgrind
#: cannot run AVX-512) and fixed malloc thresholds, so two runs of the same code execute the same instructions
ENV = {"PYTHONHASHSEED": "0", "CONVBENCH_NATIVE_ARCH": "x86-64-v3", "OMP_NUM_THREADS": "1",
       "GLIBC_TUNABLES": MALLOC_TUNABLES}


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
        if self.lib is not None:  # bound now: a ctypes attribute's first lookup (dlsym) must not land in a window
            self._begin, self._end = self.lib.cg_begin, self.lib.cg_end
        else:
            import torch  # torch's own toggle, the fallback where valgrind's header is missing

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

    def count(self, fn, calls: int, label: str = "") -> float:
        """Instructions per call of ``fn`` outside glibc's allocator (``split_window``), over one window of ``calls``
        calls right after ``calls`` un-counted ones (the same loop: whatever the calls fill or specialise on their
        first runs is in place when the window opens, whatever the process did before). Each window's split is
        appended to ``windows.jsonl`` beside the dumps, under ``label``."""
        for _ in range(calls):
            fn()
        if self.lib is not None:
            begin, end = self._begin, self._end
            begin()
            for _ in range(calls):
                fn()
            end()
        else:
            import torch  # torch's own toggle, the fallback where valgrind's header is missing

            toggle, dump = torch._C._valgrind_toggle, torch._C._valgrind_toggle_and_dump_stats
            toggle()
            for _ in range(calls):
                fn()
            dump()
        dump_path = latest_dump(self.out_dir, os.getpid())
        window = split_window(dump_path)
        with open(self.out_dir / "windows.jsonl", "a") as f:  # what each row's count leaves out, kept beside the dumps
            f.write(json.dumps({"dump": dump_path.name, "label": label, "calls": calls, **asdict(window),
                                "per_call": window.counted / calls}) + "\n")
        return window.counted / calls


#: glibc's allocator entry points: the inclusive cost of a call into one of them is the allocator's
ALLOCATOR_ENTRIES = frozenset({
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "memalign", "aligned_alloc", "valloc",
    "pvalloc", "cfree", "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc", "__libc_memalign",
    "__libc_valloc", "__libc_pvalloc", "__posix_memalign"})
#: glibc's allocator internals: a call from one of them into an entry point is inside the allocator already
ALLOCATOR_INTERNALS = frozenset({
    "_int_malloc", "_int_free", "_int_realloc", "_int_memalign", "_mid_memalign", "malloc_consolidate", "sysmalloc",
    "systrim", "unlink_chunk", "munmap_chunk", "mremap_chunk", "tcache_init", "tcache_thread_shutdown",
    "ptmalloc_init", "malloc_init_state", "arena_get2", "arena_get_retry", "reused_arena", "get_free_list",
    "_int_new_arena", "new_heap", "alloc_new_heap", "grow_heap", "shrink_heap", "heap_trim", "detach_arena",
    "alloc_perturb", "free_perturb", "malloc_printerr", "mtrim", "malloc_trim", "__malloc_trim",
    "__malloc_arena_thread_freeres"})


@dataclass
class Window:
    """One window's instructions: ``total``; ``allocator``, the part spent inside glibc's malloc/free family
    (``allocator_calls`` calls into it); ``counted`` = total − allocator, what a row reports."""

    total: int
    allocator: int
    allocator_calls: int

    @property
    def counted(self) -> int:
        return self.total - self.allocator


def _base_name(name: str) -> str:
    """``unlink_chunk.constprop.0'2`` → ``unlink_chunk`` (compiler clones, callgrind's recursion suffix)."""
    return re.split(r"['.]", name, maxsplit=1)[0] or name


def split_window(path: Path) -> Window:
    """The window's ``totals`` and the inclusive cost of every call from outside glibc's allocator into one of its
    entry points (``calls=`` edges of the dump: no double counting, since edges from inside the allocator are
    skipped).

    Why the allocator is left out of a row's count: what glibc's malloc/free execute for the same requests depends
    on the free lists the window finds, i.e. on the heap's layout — which the process's whole history decides, down
    to the length of the checkout's path in ``sys.path``. With the history made deterministic (module docstring),
    rows of identical code still differed by up to 0.27% with it (one run in twenty) and by 0.6% from a checkout
    at a path of another length; without it, by 0.06% and 0.03–0.12%. The allocator's share (a third of a small
    oneDNN conv's count: 40–60 calls per conv) stays in ``windows.jsonl``."""
    names: dict[str, str] = {}
    inside = ALLOCATOR_ENTRIES | ALLOCATOR_INTERNALS
    fn = callee = ""
    total, allocator, calls, edge = None, 0, 0, None

    def resolve(spec: str) -> str:  # "(12) name" defines id 12, "(12)" refers to it
        m = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if m is None:
            return _base_name(spec)
        if m.group(2) is not None:
            names[m.group(1)] = _base_name(m.group(2))
        return names.get(m.group(1), "")

    with open(path, errors="replace") as f:
        for line in f:
            if edge is not None:  # the line after calls=: "<position> <inclusive cost>"
                fields = line.split()
                cost = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
                if callee in ALLOCATOR_ENTRIES and fn not in inside and cost < 2**63:
                    allocator += cost
                    calls += edge
                edge = None
            elif line.startswith("fn="):
                fn = resolve(line[3:].strip())
            elif line.startswith("cfn="):
                callee = resolve(line[4:].strip())
            elif line.startswith("calls="):
                edge = int(line[6:].split()[0])
            elif line.startswith("totals:"):
                total = int(line.split()[1])
    if total is None:
        total = totals(path)  # a dump without a totals line: the summary, checked
    if total >= 2**63:
        raise RuntimeError(f"{path}: instruction total {total} is a wrapped-around counter")
    return Window(total, allocator, calls)


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
