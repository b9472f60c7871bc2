"""``bench profile`` and ``run --profile``: where one case's time goes, per implementation, with torch.profiler.

The profiled callable is exactly the one ``bench run`` times: validated against the oracle and warmed up first
(bench.measure.prepare_case), and under ``run --profile`` profiled once after its timing, never inside the timed
samples. Each (case, implementation) gets:

- the operator table: self and total time, calls and input shapes per operator; on a GPU also the kernels by
  their own names (cuDNN engines, cuBLAS GEMMs, Triton kernels);
- a Chrome trace, ``traces/trace-<case>-<impl>.json`` (``.json.gz`` above 5 MB), which opens in
  https://ui.perfetto.dev;
- a breakdown per call that a person can act on. The categories are in ``CATEGORIES``: the main compute, im2col
  / col2im data rearrangement, layout conversions and copies, allocation and memset, other operators, and Python
  and gaps. On a CPU each operator's self time goes to the category its name says, and the gaps are the wall time
  no operator covers (Python, dispatch, ctypes calls nobody labelled). On a GPU it is device time: each kernel's
  time by its name, and idle = the wall time during which no kernel ran (the union of the kernel intervals from
  the trace; HolisticTraceAnalysis is not used, as it is not installed on the GPU machine this project has).
  train_step cases are also split into forward, backward and optimizer.

Run directory outputs: ``profile.md`` (per case: breakdown and top operators per implementation), ``profile.csv``
(the operator tables), ``breakdown.csv`` (one row per case and implementation, with the trace's path), and
``traces/`` (the tables: bench/present/profile_tables.py). ``bench report`` links them and draws the breakdown as
stacked bars.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # read when torch loads Kineto: its warnings are not for a CI log

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from ..runs.schema import CATEGORIES, atomic_write  # noqa: E402
from .measure import grad_mode, prepare_case  # noqa: E402
from .timing import synchronize  # noqa: E402

COMPRESS_ABOVE = 5 << 20
#: (category, fragments of a lower-cased operator or kernel name), first match wins
RULES = (
    ("im2col/col2im", ("aten::im2col", "aten::col2im", "aten::unfold", "aten::fold", "native_im2col",
                       "native_col2im")),
    ("allocation & memset", ("aten::empty", "aten::zeros", "aten::zero_", "aten::fill_", "aten::resize_",
                             "aten::new_empty", "aten::new_zeros", "aten::ones", "memset")),
    ("layout & copies", ("aten::copy_", "aten::contiguous", "aten::clone", "aten::_to_copy", "aten::cat",
                         "to_mkldnn", "reorder", "nchw_to_nhwc", "nhwc_to_nchw", "nchwtonhwc", "nhwctonchw",
                         "transpose", "memcpy", "aten::to_dense")),
    ("compute", ("conv", "mm", "gemm", "matmul", "linear", "pool", "fused", "triton", "xmma", "cudnn", "cutlass",
                 "wgmma", "compiledfxgraph", "compiled region", "compiledfunction")),
)
PHASES = (  # train_step: checked in order, the first phase whose marker an op's nearest labelled ancestor carries
    ("optimizer", ("convbench.optimizer", "Optimizer.step", "Optimizer.zero_grad")),
    ("backward", ("convbench.backward", "CompiledFunctionBackward", "autograd::engine::evaluate_function")),
    ("forward", ("convbench.forward", "CompiledFunction")),
)
TOP = 12  # operators (and kernels) per table


def category(name: str, kernel: bool = False) -> str:
    """The breakdown category of a CPU operator or (``kernel``) a GPU kernel's name. A CPU region without an
    operator namespace is Python (an autograd Function's or a record_function's own time, e.g.
    ``Optimizer.step#SGD.step``), except our labelled native calls and compiled graphs, whose kernels the profiler
    cannot see inside them."""
    low = name.lower()
    if not kernel and "::" not in name and not low.startswith(("native_", "torch-compiled region")) \
            and "compiledfxgraph" not in low and not low.startswith("compiledfunction"):
        return "Python & gaps"
    if low.startswith("autograd::engine"):
        return "other ops"  # the engine's own time; the backward operators it calls are categorised themselves
    for cat, fragments in RULES:
        if any(f in low for f in fragments):
            return cat
    return "other ops"


def phase_of(event) -> str:
    node = event
    while node is not None:
        for phase, markers in PHASES:
            if node.name.startswith(markers):
                return phase
        node = node.cpu_parent
    return "forward"  # the plain timed step is unlabelled: what is not backward or optimizer is its forward and loss


def case_slug(key: str) -> str:
    """A file-name part for a case key: readable (op, shape, arguments, dtype, layout) and unique (a hash)."""
    parts = key.split("|")[:-1]
    text = "-".join(re.sub(r"[^A-Za-z0-9._=]+", "", p) for p in parts)[:90]
    return f"{text}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def _union_us(intervals: list[tuple[float, float]]) -> float:
    busy, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    return busy


def breakdown(prof, calls: int, wall_ms: float, device: str, train: bool = False) -> dict:
    """Milliseconds per call in each of CATEGORIES (and per train phase), from a finished profile."""
    events = prof.events()
    per = dict.fromkeys(CATEGORIES, 0.0)
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    if device == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        for e in kernels:
            per[category(e.name, kernel=True)] += e.time_range.elapsed_us() / 1e3 / calls
        busy_ms = _union_us([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e3
        per["Python & gaps"] = max(0.0, wall_ms - busy_ms) / calls  # the GPU idle: no kernel running
        if train:
            for e in events:
                if e.device_type != DeviceType.CUDA and e.self_device_time_total:
                    phases[phase_of(e)] += e.self_device_time_total / 1e3 / calls
    else:
        threads: dict[int, int] = {}
        for e in events:
            if e.cpu_parent is None:
                threads[e.thread] = threads.get(e.thread, 0) + 1
        main = max(threads, key=threads.get) if threads else None
        mine = [e for e in events if e.thread == main]
        in_ops = sum(e.cpu_time_total for e in mine if e.cpu_parent is None) / 1e3
        for e in mine:
            per[category(e.name)] += e.self_cpu_time_total / 1e3 / calls
            if train:
                phases[phase_of(e)] += e.self_cpu_time_total / 1e3 / calls
        per["Python & gaps"] += max(0.0, wall_ms - in_ops) / calls
    out = {f"{k} ms": v for k, v in per.items()}
    if train:
        out.update({f"{k} ms": v for k, v in phases.items()})
    return out


def operator_table(prof, device: str, calls: int) -> list[dict]:
    """Top operators by self CPU time (and on a GPU the top kernels by device time), per call."""
    rows = []
    averages = prof.key_averages(group_by_input_shape=True)
    ops = [e for e in averages if e.self_cpu_time_total > 0 and getattr(e, "device_type", None) != DeviceType.CUDA]
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:TOP]:
        rows.append({"kind": "cpu op", "name": e.key, "input shapes": str(e.input_shapes or "")[:200],
                     "calls": e.count / calls, "self ms": e.self_cpu_time_total / 1e3 / calls,
                     "total ms": e.cpu_time_total / 1e3 / calls})
    if device == "cuda":
        kernels = [e for e in prof.key_averages() if getattr(e, "device_type", None) == DeviceType.CUDA
                   and e.self_device_time_total > 0]
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:TOP]:
            rows.append({"kind": "gpu kernel", "name": e.key[:200], "input shapes": "", "calls": e.count / calls,
                         "self ms": e.self_device_time_total / 1e3 / calls,
                         "total ms": e.device_time_total / 1e3 / calls})
    return rows


def _save_trace(prof, path: Path) -> Path:
    prof.export_chrome_trace(str(path))
    if path.stat().st_size > COMPRESS_ABOVE:
        with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(path)
        path = Path(f"{path}.gz")
    return path


def auto_calls(call_ms: float) -> int:
    """Calls per profile: about 100 ms of work, 3 to 50 calls (the profiler's own cost grows with events)."""
    return int(min(50, max(3, math.ceil(100.0 / max(call_ms, 1e-3)))))


def profile_call(case, impl: str, fn, out: Path, calls: int) -> dict:
    """Profile ``calls`` calls of a validated, warmed-up ``fn``; write its trace and summary JSON under
    ``out/traces/``; return the summary (breakdown and operator table)."""
    traces = out / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device == "cuda" else [])
    fn()  # one more untimed call: nothing first-call (allocator growth, lazy init) in the profile
    synchronize(case.device)
    with profile(activities=activities, record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(case.device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    name = f"trace-{case_slug(case.key)}-{impl}.json"
    trace = _save_trace(prof, traces / name)
    summary = {**_case_columns(case), "impl": impl, "status": "ok", "reason": "", "calls": calls,
               "wall ms": wall_ms / calls, "threads": torch.get_num_threads(),
               **breakdown(prof, calls, wall_ms, case.device, train=case.op == "train_step"),
               "trace": trace.relative_to(out).as_posix(), "operators": operator_table(prof, case.device, calls),
               "method": ("GPU: kernel time by name; idle = wall time with no kernel running" if case.device == "cuda"
                          else "CPU: self time of each operator on the calling thread; gaps = wall time outside "
                               "every operator")}
    atomic_write(traces / f"{name.removesuffix('.json')}.summary.json", json.dumps(summary, default=str))
    return summary


def _case_columns(case) -> dict:
    """The results-row columns that describe a case (bench.runs.schema.case_label reads them)."""
    return {"case_key": case.key, "op": case.op, "dtype": case.dtype, "layout": case.layout, **case.columns(),
            "options": case.options_text().strip()}


def not_profiled(case, impl: str, status: str, reason: str, out: Path) -> dict:
    summary = {**_case_columns(case), "impl": impl, "status": status, "reason": reason[:300]}
    traces = out / "traces"
    traces.mkdir(parents=True, exist_ok=True)
    atomic_write(traces / f"trace-{case_slug(case.key)}-{impl}.summary.json", json.dumps(summary))
    return summary


def collect(out: Path) -> list[dict]:
    """Every profile summary written under ``out/traces/``, in file order."""
    found = []
    for p in sorted((out / "traces").glob("*.summary.json")):
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):  # one unreadable summary costs that profile only
            continue
    return found


def profile_timed(case, timed: dict, out: Path, calls: int | None = None, announce=lambda name: None) -> list[dict]:
    """Profile each validated, warmed-up implementation of ``case`` (name → bench.measure.Prepared); a profiler
    failure costs that profile, never the others. ``announce(name)`` before each (the worker's watchdog)."""
    summaries = []
    for name, p in timed.items():
        announce(name)
        try:
            summaries.append(profile_call(case, name, p.sampler.fn, out, calls or auto_calls(p.call_ms)))
        except Exception as exc:  # noqa: BLE001
            summaries.append(not_profiled(case, name, "error", f"profiling failed: {type(exc).__name__}: {exc}", out))
    return summaries


def profile_cases(cases: list, impls: list[str], out: Path, timing, seed: int = 0,
                  calls: int | None = None, log=print) -> list[dict]:
    """Validate and warm up every implementation on each case (as bench run does), then profile the correct ones."""
    summaries = []
    for case in cases:
        failed = []
        with grad_mode(case):  # the profiled calls run as the timed ones do
            ready = prepare_case(case, impls, timing, seed, report=failed.append)
            profiled = profile_timed(case, ready, out, calls)
        summaries += [not_profiled(case, o.impl, o.status, o.error, out) for o in failed]
        for s in profiled:
            summaries.append(s)
            log(f"{case.key} {s['impl']}: " + (f"{s['wall ms']:.3g} ms per call, {s['calls']} calls → {s['trace']}"
                                                if s["status"] == "ok" else f"{s['status']}: {s['reason']}"))
    return summaries
