"""``bench profile``: where a training step's time goes, per implementation, with torch.profiler.

Each implementation's step — exactly the callable ``bench run`` times, wrapped as that implementation wraps it
(compiled, CUDA-graph captured) — is warmed up, then profiled for a few steps. Time is split into forward,
backward and optimizer by the ancestry of every profiled op: the step's own ``convbench.*`` labels for eager
steps, torch's ``CompiledFunction`` / ``CompiledFunctionBackward`` / ``Optimizer.step`` regions for compiled ones,
and the autograd engine's nodes for a backward that runs on its own thread. Self times are summed, so no op is
counted twice. Outputs in the run directory: ``profile.md`` and ``profile.csv`` (phase split and top kernels per
implementation) and a Chrome trace per implementation, ``trace-<impl>.json`` (``.json.gz`` above 5 MB), which
opens in https://ui.perfetto.dev or chrome://tracing.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

import kernels

from .measure import set_precision
from .schema import atomic_write

PHASES = (  # checked in order: the first phase whose marker an op's nearest labelled ancestor carries
    ("optimizer", ("convbench.optimizer", "Optimizer.step", "Optimizer.zero_grad")),
    ("backward", ("convbench.backward", "CompiledFunctionBackward", "autograd::engine::evaluate_function")),
    ("forward", ("convbench.forward", "CompiledFunction")),
)
COMPRESS_ABOVE = 5 << 20


def phase_of(event) -> str:
    node = event
    while node is not None:
        for phase, markers in PHASES:
            if node.name.startswith(markers):
                return phase
        node = node.cpu_parent
    return "other"


def phase_split(prof, steps: int, device: str) -> dict[str, float]:
    """Milliseconds per step in each phase: self CPU time on a CPU, self device (kernel) time on a GPU."""
    totals = {p: 0.0 for p, _ in PHASES} | {"other": 0.0}
    for e in prof.events():
        us = e.self_device_time_total if device == "cuda" else e.self_cpu_time_total
        if us:
            totals[phase_of(e)] += us / 1e3 / steps
    return totals


def top_kernels(prof, device: str, limit: int = 8) -> pd.DataFrame:
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = [{"kernel": e.key, "calls": e.count, "self ms": getattr(e, key) / 1e3}
            for e in prof.key_averages() if getattr(e, key) > 0 and not e.key.startswith("convbench.")]
    return pd.DataFrame(rows).sort_values("self ms", ascending=False).head(limit) if rows else pd.DataFrame()


def _save_trace(prof, out: Path, impl: str) -> Path:
    path = out / f"trace-{impl}.json"
    prof.export_chrome_trace(str(path))
    if path.stat().st_size > COMPRESS_ABOVE:
        with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(path)
        path = Path(f"{path}.gz")
    return path


def profile_training(out: Path, impls: list[str], model: str = "simplecnn", batch: int = 64,
                     optimizer: str = "sgd", dtype: str = "float32", device: str = "cpu", steps: int = 5,
                     warmup: int = 3, seed: int = 0) -> pd.DataFrame:
    """Profile one training step configuration for every implementation; write the table and traces to ``out``."""
    from reference import TrainProblem, make_optimizer

    from .train import make_train_step

    problem = TrainProblem(model, batch, optimizer, dtype)
    out.mkdir(parents=True, exist_ok=True)
    set_precision(dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    split_rows, sections = [], []
    for name in impls:
        impl = kernels.get(name)
        why = impl.unavailable_reason(device) or impl.correctness_only(device)
        if why:
            split_rows.append({"impl": name, "status": "not profiled", "reason": why})
            continue
        net = problem.build(impl.train_ops(), seed, device)
        opt = make_optimizer(optimizer, net.parameters(), **impl.optimizer_options(device))
        step = impl.wrap_train_step(make_train_step(net, opt), net, opt, device)
        (x, y), = problem.make_batches(1, seed, device)
        for _ in range(warmup):  # compile, autotune, capture: not what a step costs
            step(x, y)
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step(x, y)
            if device == "cuda":
                torch.cuda.synchronize()
        split = phase_split(prof, steps, device)
        trace = _save_trace(prof, out, name)
        split_rows.append({"impl": name, "status": "ok", **{f"{k} ms": v for k, v in split.items()},
                           "total ms": sum(split.values()), "trace": trace.name, "reason": ""})
        sections.append((name, top_kernels(prof, device)))
    table = pd.DataFrame(split_rows)
    what = "self device (kernel) time" if device == "cuda" else "self CPU time"
    md = [f"# Training-step profile: {model}, batch {batch}, {optimizer}, {dtype}, {device}", "",
          f"Per step, {what} in ms, averaged over {steps} profiled steps after {warmup} warm-up steps. Traces open "
          "in https://ui.perfetto.dev.", "", table.to_markdown(index=False, floatfmt=".3f"), ""]
    for name, top in sections:
        md += [f"## {name}: top kernels ({what}, {steps} steps)", "",
               top.to_markdown(index=False, floatfmt=".3f") if not top.empty else "_no events_", ""]
    atomic_write(out / "profile.md", "\n".join(md))
    atomic_write(out / "profile.csv", table.to_csv(index=False))
    return table


def profile_command(args) -> int:
    from .select import select_impls

    if args.device == "cuda" and not torch.cuda.is_available():
        print("convbench profile: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("results") / "runs" / "profile"
    table = profile_training(out, select_impls(args.impl), args.model, args.batch, args.optimizer, args.dtype,
                             args.device, args.steps)
    print(table.to_string(index=False))
    print(f"wrote {out}/profile.md, profile.csv and trace-<impl>.json")
    return 0
