"""``bench gpu``: the whole GPU window in one prepared command, trimmed to a wall-time budget.

A session gets a GPU rarely and briefly (15 minutes of device time, start-up included, ≤ 10 minutes a command), so the
window runs as one command that plans its phases from a cost model, runs them in order and re-plans after each one
with the time actually left: a later phase is trimmed (fewer cases) or skipped rather than the budget overrun.
Everything goes under ``--out`` as it happens — ``phases.json`` after every phase, each suite's rows streamed to its
``results.jsonl`` — so a window killed half-way leaves usable results, and committing the run is one ``git add``.

Phases (costs: ``fixed + per_unit × units`` seconds; the priors below are estimates made before any GPU window ran,
replaced by the per-unit costs a previous window measured — its ``phases.json`` — when one is committed):
  env        device, driver, clocks, NVML telemetry; GEMM peaks for fp32, tf32, bf16, fp16 and copy/read bandwidth
  checks     ``pytest -m gpu`` (xdist) and, at the same time, every Triton config of every kernel specialisation
             the run needs compiled in worker processes (fills Triton's on-disk cache for the timed run)
  configs    every pruned autotune config of forward, dgrad and wgrad run on two ResNet-50 layers and compared with
             an fp32 reference (not only the winner: pytorch#173068); a failing config is reported
  suites     in priority order (the first is trimmed last): ResNet-50 bf16 channels_last forward (triton, cudnn,
             compile); compile-max-autotune on the stride-1 3×3 layers; pooling on tensors far larger than L2; the
             SimpleCNN bf16 train step at 256/4096; ResNet-50 backward; TF32
  report     one report per suite and one side by side; tuned configs saved to kernels/triton/tuned/
The run ends with a one-screen summary (``summary.md``).

On a machine without a GPU ``--dry-run`` prints the plan (phase by phase, then ``estimated total: N s``); the phase
logic is tested on the CPU with the GPU parts replaced by fakes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .schema import UsageError, atomic_write

ROOT = Path(__file__).resolve().parent.parent
#: seconds one implementation may spend in one phase of a case (a hung kernel costs this much of the window)
CASE_TIMEOUT_S = 90.0
#: seconds kept back from the budget for the summary, the final writes and the slack of a phase that overruns
RESERVE_S = 20.0


# ---- the plan -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """One step of the window. ``units``: its full size (cases, compiles, configs); ``min_units``: the smallest
    slice worth running (below it the phase is skipped); ``required``: never trimmed (it runs whatever is left)."""

    name: str
    what: str
    fixed_s: float
    per_unit_s: float
    units: int
    run: Callable[[Window, int, float], dict] = field(compare=False, repr=False)
    min_units: int = 1
    required: bool = False

    def cost(self, units: int | None = None) -> float:
        return self.fixed_s + self.per_unit_s * (self.units if units is None else units)


@dataclass(frozen=True)
class Step:
    """A phase as planned: how many units in how many seconds ('full', 'trimmed N/M' or 'skipped')."""

    phase: Phase
    units: int
    seconds: float

    @property
    def state(self) -> str:
        if self.units == 0:
            return "skipped"
        return "full" if self.units >= self.phase.units else f"trimmed {self.units}/{self.phase.units}"


def plan(phases: list[Phase], seconds: float) -> list[Step]:
    """Fit the phases into ``seconds``, in order: a phase runs whole if it fits, else as many units as the time left
    allows (at least its min_units, else it is skipped); required phases always run whole."""
    steps, left = [], seconds
    for i, ph in enumerate(phases):
        later_required = sum(q.cost() for q in phases[i + 1:] if q.required)
        if ph.required or ph.cost() <= left - later_required:
            units = ph.units
        elif ph.per_unit_s > 0 and left - later_required > ph.fixed_s:
            units = min(ph.units, int((left - later_required - ph.fixed_s) / ph.per_unit_s))
            units = units if units >= ph.min_units else 0
        else:
            units = 0
        cost = ph.cost(units) if units else 0.0
        steps.append(Step(ph, units, cost))
        left -= cost
    return steps


def describe(steps: list[Step], budget: float, source: str) -> list[str]:
    lines = [f"plan for a {budget:.0f} s budget ({RESERVE_S:.0f} s reserved; costs: {source})"]
    for i, s in enumerate(steps, 1):
        p = s.phase
        lines.append(f"  {i}. {p.name:<22} {s.seconds:6.0f} s  {s.state:<16} {p.what} "
                     f"[{p.fixed_s:.0f} s + {p.units} × {p.per_unit_s:.2f} s]")
    total = sum(s.seconds for s in steps) + RESERVE_S
    lines.append(f"estimated total: {total:.0f} s")
    return lines


# ---- the window ---------------------------------------------------------------------------------------------------
class Window:
    """The run in progress: output directory, the deadline, and phases.json rewritten after every phase."""

    def __init__(self, out: Path, budget: float, clock=time.monotonic) -> None:
        self.out, self.budget, self.clock = out, budget, clock
        self.start = clock()
        self.deadline = self.start + budget
        self.records: list[dict] = []

    def left(self) -> float:
        return self.deadline - self.clock()

    def write(self, extra: dict | None = None) -> None:
        doc = {"budget_s": self.budget, "elapsed_s": round(self.clock() - self.start, 1), "phases": self.records,
               **(extra or {})}
        atomic_write(self.out / "phases.json", json.dumps(doc, indent=1))


def execute(window: Window, phases: list[Phase], log=print) -> list[dict]:
    """Run the phases in order, re-planning the rest with the time actually left before each one. A phase that
    raises is recorded as failed and the window goes on; phases.json is rewritten after every phase."""
    for i, ph in enumerate(phases):
        left = window.left() - RESERVE_S
        rest = plan(phases[i:], left)
        step = rest[0]
        record = {"phase": ph.name, "planned_s": round(step.seconds, 1), "units": step.units,
                  "of_units": ph.units, "state": step.state}
        if step.units == 0:
            record.update(status="skipped", reason=f"{left:.0f} s left, {ph.cost(ph.min_units):.0f} s needed")
            log(f"phase {ph.name}: skipped ({record['reason']})")
        else:
            log(f"phase {ph.name}: {step.state}, {step.units} units, planned {step.seconds:.0f} s, {left:.0f} s left")
            t0 = window.clock()
            # the phase may use its planned time plus whatever the plan of the rest leaves spare, never the reserve
            spare = max(0.0, left - sum(s.seconds for s in rest))
            phase_deadline = min(t0 + step.seconds + spare, window.deadline - RESERVE_S)
            try:
                result = ph.run(window, step.units, phase_deadline) or {}
                record.update(status=result.pop("status", "ok"), **result)
            except Exception as exc:  # noqa: BLE001 — one failing phase must not lose the window
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            record["seconds"] = round(window.clock() - t0, 1)
            if step.units and ph.per_unit_s:
                record["per_unit_s"] = round(max(0.0, record["seconds"] - ph.fixed_s) / step.units, 3)
            log(f"phase {ph.name}: {record['status']} in {record['seconds']:.0f} s")
        window.records.append(record)
        window.write()
    return window.records


# ---- costs --------------------------------------------------------------------------------------------------------
# Priors (no GPU window had run when these were set): a worker process starts in ~6 s (torch import, CUDA context);
# a case costs its validation, its compile (triton: autotuning 7–13 configs with short timed runs; compile: Inductor
# on a cold cache) and ~0.1 s of samples per implementation. A Triton compile of one config takes ~1.5 s of one core.
PRIORS = {"env": (10.0, 3.0), "checks": (40.0, 0.5), "configs": (15.0, 0.15), "resnet50-bf16-fwd": (10.0, 5.0),
          "resnet50-bf16-bwd": (10.0, 8.0), "resnet50-max-autotune": (10.0, 20.0), "resnet50-tf32": (10.0, 3.0),
          "pool-large": (10.0, 2.0), "train": (10.0, 6.0), "report": (15.0, 0.0)}


def measured_costs(root: Path = ROOT / "results" / "gpu") -> tuple[dict, str]:
    """Per-unit costs of the newest committed window (phases.json), over the priors; and where they came from."""
    costs = dict(PRIORS)
    newest = sorted(root.glob("*/phases.json"), key=lambda p: p.parent.name)
    if not newest:
        return costs, "priors (no committed GPU window yet)"
    data = json.loads(newest[-1].read_text())
    for rec in data.get("phases", []):
        if rec.get("status") == "ok" and rec.get("per_unit_s") is not None and rec["phase"] in costs:
            costs[rec["phase"]] = (costs[rec["phase"]][0], float(rec["per_unit_s"]))
    where = newest[-1].parent
    return costs, f"measured in {where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}"


# ---- what the suites run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteRun:
    """One `bench run` selection of the window, and the order its cases are trimmed in (the runner keeps the
    first ``units``)."""

    name: str
    suite: str
    impls: tuple[str, ...]
    ops: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    layouts: tuple[str, ...] | None = None
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    compile_modes: tuple[str, ...] | None = None

    def options(self, out: Path, units: int | None = None, deadline: float | None = None):
        from .runner import RunOptions

        return RunOptions(suite=self.suite, device="cuda", impls=list(self.impls), ops=list(self.ops or []) or None,
                          dtypes=list(self.dtypes or []) or None, layouts=list(self.layouts or []) or None,
                          where={k: set(v) for k, v in self.where}, out=out / self.name, limit=units,
                          deadline=deadline, warm_cache=True, report=False, progress=True, max_seconds=0.5,
                          timeout=CASE_TIMEOUT_S,
                          compile_modes=list(self.compile_modes) if self.compile_modes else None)

    def cases(self, device: str = "cuda") -> list:
        from .select import select_cases

        return select_cases(self.options(Path("."), None))


SUITE_RUNS = [
    SuiteRun("resnet50-bf16-fwd", "resnet50", ("triton", "cudnn", "compile"), ("conv2d",), ("bfloat16",),
             ("channels_last",)),
    SuiteRun("resnet50-max-autotune", "resnet50", ("compile-max-autotune",), ("conv2d",), ("bfloat16",),
             ("channels_last",), (("kernel_h", ("3",)), ("stride", ("1",))), compile_modes=("max-autotune",)),
    SuiteRun("pool-large", "pool-large", ("triton", "cudnn", "compile")),
    SuiteRun("train", "train", ("triton", "cudnn", "compile"), ("train_step",), ("bfloat16",)),
    SuiteRun("resnet50-bf16-bwd", "resnet50", ("triton", "cudnn", "compile"), ("conv2d_backward",), ("bfloat16",),
             ("channels_last",)),
    SuiteRun("resnet50-tf32", "resnet50", ("triton", "cudnn"), ("conv2d",), ("tf32",), ("nchw",)),
]


def precompile_items(runs=SUITE_RUNS, device: str = "cuda") -> list[tuple]:
    """(problem, relu, parts) for every Triton conv specialisation the suites launch: forward for conv2d cases,
    dgrad and wgrad for conv2d_backward, all three with the fused ReLU for the train step's layers."""
    from reference import ConvProblem, TrainProblem

    from .suites import simplecnn_layers

    items: dict[tuple, None] = {}
    for run in runs:
        if "triton" not in run.impls:
            continue
        for case in run.cases(device):
            p = case.problem
            if isinstance(p, ConvProblem):
                items[(p, False, ("forward",) if case.op == "conv2d" else ("dgrad", "wgrad"))] = None
            elif isinstance(p, TrainProblem):
                for layer in simplecnn_layers(p.batch):
                    if isinstance(layer, ConvProblem):
                        layer = layer.replace(dtype=p.dtype)
                        items[(layer, True, ("forward", "dgrad", "wgrad"))] = None
    return list(items)


def config_layers() -> list:
    """The two ResNet-50 layers every config is checked on: a 3×3 and a 1×1, bf16 channels_last, batch 8."""
    from .suites import resnet50_layers

    layers = [p for p, _ in resnet50_layers(8)]
    three = next(p for p in layers if p.R == 3 and p.stride == (1, 1) and p.C == 128)
    one = next(p for p in layers if p.R == 1 and p.C == 256 and p.K == 64)
    return [p.replace(dtype="bfloat16", layout="channels_last") for p in (three, one)]


# ---- the real phases (GPU) ----------------------------------------------------------------------------------------
def _env_phase(window: Window, units: int, deadline: float) -> dict:
    import torch

    from . import env as envmod
    from .peaks import measure

    env = envmod.capture("cuda", 1, "gpu-window", "", sys.argv[1:])
    env["peaks"] = measure("cuda", ["float32", "tf32", "bfloat16", "float16"][:units])
    env["gpu_telemetry"] = envmod.gpu_telemetry()
    props = torch.cuda.get_device_properties(0)
    env["gpu_properties"] = {"name": props.name, "sms": props.multi_processor_count,
                             "memory_gib": round(props.total_memory / 2 ** 30, 1),
                             "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2 ** 20, 1),
                             "capability": f"{props.major}.{props.minor}"}
    atomic_write(window.out / "env.json", json.dumps(env, indent=2))
    g = env["peaks"]["gemm_flops"]
    return {"peaks_tflops": {k: round(v / 1e12, 1) for k, v in g.items()},
            "copy_tb_s": round(env["peaks"]["copy_bytes_per_s"] / 1e12, 2)}


def _precompile_one(item) -> dict:
    """Worker: compile every config of one specialisation (runs in a spawned process, on the GPU). Nothing tuned
    here is stored: these workers share the GPU, so any timing they did would be noise."""
    os.environ.pop("CONVBENCH_TUNED_OUT", None)
    os.environ["CONVBENCH_TUNED"] = "off"
    from kernels.triton import tuning

    p, relu, parts = item
    t0 = time.perf_counter()
    res = tuning.precompile(p, "cuda", relu=relu, parts=parts)
    return {**res, "seconds": time.perf_counter() - t0}


def _checks_phase(window: Window, units: int, deadline: float) -> dict:
    import concurrent.futures as cf
    import multiprocessing as mp

    out = window.out
    workers = max(2, min(12, (os.cpu_count() or 4) - 4))
    tests = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-n", "4",
         f"--junitxml={out / 'pytest-gpu.xml'}", "tests"], cwd=ROOT, stdout=open(out / "pytest-gpu.log", "w"),
        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    items = precompile_items()[:units]
    compiled, errors, done = 0, [], 0
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_precompile_one, it) for it in items]
        try:
            for fut in cf.as_completed(futures, timeout=max(1.0, deadline - time.monotonic())):
                r = fut.result()
                compiled += r["configs"]
                errors += r["errors"]
                done += 1
        except cf.TimeoutError:
            for f in futures:
                f.cancel()
    try:
        rc = tests.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        tests.kill()
        rc = "timeout"
    tail = (out / "pytest-gpu.log").read_text().strip().splitlines()[-1:] or [""]
    return {"status": "ok" if rc == 0 and not errors else "failed", "pytest_rc": rc, "pytest": tail[0],
            "precompiled_specialisations": done, "of": len(items), "compiled_configs": compiled,
            "compile_errors": errors[:20]}


def _configs_phase(window: Window, units: int, deadline: float) -> dict:
    import pandas as pd

    from kernels.triton import tuning

    rows = tuning.check_configs(config_layers(), "cuda")
    pd.DataFrame(rows).to_csv(window.out / "configs.csv", index=False)
    bad = [r for r in rows if r["status"] != "ok"]
    return {"status": "ok" if not bad else "failed", "configs_checked": len(rows),
            "failing": [f"{r['part']} {r['kernel']} {r['config']}: {r['status']} {r.get('error', '')[:80]}"
                        for r in bad][:20]}


def _suite_phase(run: SuiteRun) -> Callable[[Window, int, float], dict]:
    def go(window: Window, units: int, deadline: float) -> dict:
        from .runner import run as run_suite

        rc = run_suite(run.options(window.out, units, deadline))
        env = json.loads((window.out / run.name / "env.json").read_text())
        return {"status": "ok" if rc == 0 else "failed", "rc": rc, "complete": env.get("complete"),
                "dir": run.name}
    return go


def _report_phase(window: Window, units: int, deadline: float) -> dict:
    import torch

    from kernels.triton import tuning

    from .report import write_reports

    dirs = [window.out / r.name for r in SUITE_RUNS if (window.out / r.name / "results.csv").exists()]
    rc = write_reports(dirs, window.out) if dirs else 2
    saved = {}
    lines = window.out / "tuned.jsonl"
    if lines.exists():
        path, added = tuning.merge(lines, torch.cuda.get_device_name(0))
        saved = {"tuned_file": str(path.relative_to(ROOT)), "tuned_added": added}
    return {"status": "ok" if rc == 0 else "failed", "reports": [d.name for d in dirs], **saved}


def phases(costs: dict) -> list[Phase]:
    """The window's phases with their sizes and costs (sizes from the suites themselves)."""
    def ph(name, what, units, run, **kw):
        fixed, per = costs[name]
        return Phase(name, what, fixed, per, units, run, **kw)

    from kernels.triton import conv

    n_items = len(precompile_items())
    n_configs = 2 * 3 * len(conv.GEMM_CONFIGS)  # at most: pruning drops the tiles that do not fit a layer
    out = [ph("env", "device, clocks, NVML; GEMM peaks fp32/tf32/bf16/fp16, copy and read bandwidth", 4,
              _env_phase, required=True),
           ph("checks", f"pytest -m gpu ∥ precompile {n_items} kernel specialisations × every config", n_items,
              _checks_phase, required=True),
           ph("configs", "every pruned config of fwd/dgrad/wgrad on two ResNet-50 layers vs fp32", n_configs,
              _configs_phase, min_units=n_configs)]
    for run in SUITE_RUNS:
        n = len(run.cases())
        out.append(ph(run.name, f"{run.suite}: {', '.join(run.impls)}", n, _suite_phase(run),
                      min_units=min(n, 3)))
    out.append(ph("report", "reports (each suite and side by side), tuned configs saved, summary", 1, _report_phase,
                  required=True))
    return out


# ---- summary ------------------------------------------------------------------------------------------------------
def summary(out: Path, records: list[dict]) -> list[str]:
    """One screen: each phase's outcome, then the headline ratios measured in this window."""
    lines = ["| phase | status | seconds | units | note |", "| --- | --- | --- | --- | --- |"]
    for r in records:
        note = {k: v for k, v in r.items() if k not in ("phase", "status", "seconds", "units", "of_units", "state",
                                                       "planned_s", "per_unit_s", "dir")}
        lines.append(f"| {r['phase']} | {r['status']} | {r.get('seconds', 0)} | {r.get('units')}/{r.get('of_units')} "
                     f"| {json.dumps(note)[:160]} |")
    lines += [""] + headline(out)
    return lines


def headline(out: Path) -> list[str]:
    """Geometric-mean speedups over cudnn per suite, op and implementation (the report's own ``speedups``), from
    the rows streamed so far, and the median share of peak."""
    import pandas as pd

    from .report import BASELINE, speedups
    from .schema import read_jsonl

    lines = []
    col = f"geomean speedup vs {BASELINE}"
    for run in SUITE_RUNS:
        path = out / run.name / "results.jsonl"
        if not path.exists():
            continue
        rows = read_jsonl(path)
        df = pd.DataFrame([r for r in rows if r.get("status") == "ok" and r.get("median_ms")])
        if df.empty or BASELINE not in set(df["impl"]):
            lines.append(f"- {run.name}: {len(rows)} rows")
            continue
        sp = speedups(df)
        several = sp["op"].nunique() > 1
        parts = [f"{r['impl']}{'/' + r['op'] if several else ''} {r[col]:.2f}× ({r['vs cases']} cases)"
                 for _, r in sp.iterrows() if r["impl"] != BASELINE and r[col] == r[col]]
        pct = df.groupby("impl")["pct_peak"].median() if "pct_peak" in df else None
        peak = "" if pct is None else "; median % of peak: " + ", ".join(f"{k} {v:.0f}%" for k, v in pct.items()
                                                                          if v == v)
        lines.append(f"- {run.name}: speedup over cudnn (geomean) " + (", ".join(parts) or "n/a") + peak)
    return lines


# ---- command ------------------------------------------------------------------------------------------------------
def default_out() -> Path:
    import torch

    from kernels.triton.tuning import device_slug

    from .env import utc_now

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-gpu"
    return ROOT / "results" / "gpu" / f"{device_slug(name)}-{utc_now()[:10]}"


def gpu_command(args) -> int:
    """``bench gpu``: plan (and with --dry-run only print) the window; else run it and print the summary."""
    import torch

    budget = args.budget
    if not budget or budget <= RESERVE_S + 30:
        raise UsageError(f"--budget must be more than {RESERVE_S + 30:.0f} seconds, got {budget}")
    costs, source = measured_costs()
    all_phases = phases(costs)
    needed = sum(p.cost() for p in all_phases if p.required) + RESERVE_S
    if budget < needed:
        raise UsageError(f"--budget {budget:.0f} s is less than the required phases need ({needed:.0f} s: env, "
                         "checks, report and the reserve)")
    steps = plan(all_phases, budget - RESERVE_S)
    for line in describe(steps, budget, source):
        print(line)
    if args.dry_run:
        return 0
    if not torch.cuda.is_available():
        raise UsageError("bench gpu needs a CUDA GPU (use --dry-run to print the plan on this machine)")
    out = args.out or default_out()
    if (out / "phases.json").exists():
        raise UsageError(f"--out {out} already holds a GPU window; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path.home() / ".cache" / "convbench" / "gpu-triton"))
    os.environ["CONVBENCH_TUNED_OUT"] = str(out / "tuned.jsonl")  # the workers append what they tune
    window = Window(out, budget)
    (out / "plan.txt").write_text("\n".join(describe(steps, budget, source)) + "\n")
    records = execute(window, all_phases)
    lines = summary(out, records)
    atomic_write(out / "summary.md", "\n".join(lines) + "\n")
    window.write({"summary": lines})
    print("\n".join(lines))
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


def add_parser(sub) -> None:
    g = sub.add_parser("gpu", help="the whole GPU window in one command: env and peaks, GPU tests with every "
                                   "Triton config precompiled, config checks, suites, report — within --budget",
                       description=__doc__.split("\n")[0])
    g.add_argument("--out", type=Path, help="output directory (default results/gpu/<device>-<date>)")
    g.add_argument("--budget", type=float, default=480.0, metavar="S",
                   help="wall-clock seconds the whole window may take (default 480)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and its estimated total, run nothing")

