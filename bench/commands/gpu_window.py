"""``bench gpu``: the whole GPU window in one prepared command, bounded, trimmed to a budget, returned as one archive
(the command's options: bench/commands/gpu.py).

A session gets a GPU rarely and briefly (15 minutes of device time, start-up included, ≤ 10 minutes a command; only
≤ 8 files of ≤ 16 MiB under one output folder come back, and a command killed at its limit loses its whole
pipeline). So the window is one command that

- plans its phases from a cost model and re-plans before each one with the time really left: a later phase is
  trimmed (fewer cases) or skipped rather than the budget overrun;
- runs every phase in a **phase process** (``python -m bench.commands.gpu_phases``) started in its own session and
  killed — with everything it started — at the phase's deadline, whatever it is doing: a hung compile, a hung test, a
  kernel that faults the CUDA context cost that phase, never the window. This process never touches the GPU;
- writes as it goes (each suite's rows streamed to its ``results.jsonl``, test outcomes and compiles to JSON lines)
  and after every phase rewrites ``phases.json``, ``summary.md`` and, with ``--pack FILE``, the one archive
  (bench/runs/pack.py); on SIGINT/SIGTERM (``timeout -s INT``) it stops the phase in flight, finishes the summary
  and the archive, and exits;
- is rehearsed on any CPU (``--rehearse``): the same orchestration — phase processes, deadlines, streaming,
  packing — with CPU stand-ins for the GPU work, and faults injected with ``CONVBENCH_FAULT`` (bench/measure/faults.py).

Phases, in the order of what the project exists to show (costs: ``fixed + per_unit × units`` seconds; the priors
below are replaced by the per-unit costs a committed window measured, its ``phases.json``):
  env        device, driver, clocks, NVML telemetry; GEMM peaks for fp32, tf32, bf16, fp16 and copy/read bandwidth
             (the suites take these peaks instead of measuring their own)
  checks     ``pytest -m window`` (tests/test_window.py: every Triton kernel × dtype × layout with a forced config, the
             train step, the timing helpers; autotuning off, nothing tuned is stored) while worker processes compile
             what the planned phases will launch, in plan order, with the timed path's own operands
             (bench.commands.gpu_phases)
  configs    every pruned config of forward, dgrad and wgrad on two ResNet-50 layers, run and compared with an fp32
             reference, in worker processes (not only the winner: pytorch#173068)
  suites     ResNet-50 bf16 channels_last forward (triton, cudnn, compile); pooling far beyond L2; the SimpleCNN bf16
             train step at 256/4096; ResNet-50 backward; compile-max-autotune with cudnn rows on the stride-1 3×3
             layers; TF32 — all in ONE benchmark worker (warm-up and compiles paid once), cut at the deadline
             inside a case if need be
  report     one report per suite and one side by side
The configs the suites tune are kept in the archive (``tuned.jsonl``); ``bench gpu --unpack`` merges them into
``kernels/triton/tuned/`` here, where they are committed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from kernels.triton import tuning
from reference import ConvProblem

from ..measure.env import cuda_available
from ..measure.faults import parse as parse_faults
from ..measure.select import select_cases
from ..measure.sweeps import resnet50_layers
from ..runs.pack import pack, read_name, unpack
from ..runs.schema import UsageError, atomic_write, read_jsonl, utc_now
from ..runs.summary import BASELINE, speedups
from .gpu_pytest import counts, junit
from .runner import RunOptions

ROOT = Path(__file__).resolve().parents[2]
#: seconds one implementation may spend in one phase of a case (a hung kernel costs this much of the window)
CASE_TIMEOUT_S = 90.0
#: seconds kept back from the budget for the summary, the final writes and a phase process's kill
RESERVE_S = 20.0
#: a phase process is told its deadline this much early, so that it ends by itself and writes its result
CHILD_MARGIN_S = 4.0
#: after SIGTERM, a phase process and what it started get this long before SIGKILL
KILL_GRACE_S = 2.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the window: stop the phase in flight, write the summary and the archive, exit."""


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
    group: str = ""  # phases of one group share a phase process (the suites: one benchmark worker for all)
    cold_s: float = 0.0  # what starting that shared process costs, paid by the first of the group to run

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


def plan(phases: list[Phase], seconds: float, warm: frozenset[str] = frozenset()) -> list[Step]:
    """Fit the phases into ``seconds``, in order: a phase runs whole if it fits, else as many units as the time left
    allows (at least its min_units, else it is skipped); required phases always run whole. The first phase of a
    group to run pays the group's start (``cold_s``) unless the group's process is ``warm`` already."""
    steps, left, warm = [], seconds, set(warm)
    for i, ph in enumerate(phases):
        later_required = sum(q.cost() for q in phases[i + 1:] if q.required)
        start = ph.cold_s if ph.group and ph.group not in warm else 0.0
        if ph.required or start + ph.cost() <= left - later_required:
            units = ph.units
        elif ph.per_unit_s > 0 and left - later_required > start + ph.fixed_s:
            units = min(ph.units, int((left - later_required - start - ph.fixed_s) / ph.per_unit_s))
            units = units if units >= ph.min_units else 0
        else:
            units = 0
        cost = start + ph.cost(units) if units else 0.0
        if units and ph.group:
            warm.add(ph.group)
        steps.append(Step(ph, units, cost))
        left -= cost
    return steps


def describe(steps: list[Step], budget: float, source: str) -> list[str]:
    lines = [f"plan for a {budget:.0f} s budget ({RESERVE_S:.0f} s reserved; costs: {source})"]
    for i, s in enumerate(steps, 1):
        p = s.phase
        start = s.seconds - p.cost(s.units) if s.units else 0.0
        lines.append(f"  {i}. {p.name:<22} {s.seconds:6.0f} s  {s.state:<16} {p.what} "
                     f"[{p.fixed_s:.0f} s + {p.units} × {p.per_unit_s:.2f} s"
                     + (f"; + {start:.0f} s to start the {p.group}' worker]" if start > 0.5 else "]"))
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
        self.planned: list[tuple[str, int]] = []  # the plan of the phases not run yet: (name, units), in order

    def left(self) -> float:
        return self.deadline - self.clock()

    def write(self, extra: dict | None = None) -> None:
        doc = {"budget_s": self.budget, "elapsed_s": round(self.clock() - self.start, 1), "phases": self.records,
               **(extra or {})}
        atomic_write(self.out / "phases.json", json.dumps(doc, indent=1))


def execute(window: Window, phases: list[Phase], log=print, after=lambda window: None,
            warm: Callable[[], frozenset[str]] = frozenset) -> list[dict]:
    """Run the phases in order, re-planning the rest with the time actually left before each one. A phase that
    raises is recorded as failed and the window goes on; phases.json is rewritten and ``after(window)`` called
    after every phase. ``Interrupted`` (a signal) ends the window: the phase in flight is recorded as interrupted,
    the rest as not run. ``warm()``: the groups whose shared process is running now."""
    for i, ph in enumerate(phases):
        left = window.left() - RESERVE_S
        rest = plan(phases[i:], left, warm())
        step = rest[0]
        window.planned = [(s.phase.name, s.units) for s in rest if s.units]
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
            except Interrupted as exc:
                record.update(status="interrupted", seconds=round(window.clock() - t0, 1),
                              **getattr(exc, "partial", {}))
                window.records.append(record)
                window.records += [{"phase": q.name, "status": "not run", "reason": "the window was interrupted",
                                    "units": 0, "of_units": q.units} for q in phases[i + 1:]]
                window.write()
                after(window)
                log(f"phase {ph.name}: interrupted; the window stops here")
                raise
            except Exception as exc:  # noqa: BLE001 — one failing phase must not lose the window
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            record["seconds"] = round(window.clock() - t0, 1)
            if step.units and ph.per_unit_s and record["status"] == "ok":
                start = step.seconds - ph.cost(step.units)  # the group's start, when this phase paid it
                record["per_unit_s"] = round(max(0.0, record["seconds"] - ph.fixed_s - start) / step.units, 3)
            log(f"phase {ph.name}: {record['status']} in {record['seconds']:.0f} s")
        window.records.append(record)
        window.write()
        after(window)
    return window.records


# ---- costs --------------------------------------------------------------------------------------------------------
# Priors for an H100/H200 window, no GPU window having run yet (each a (fixed s, s per unit)); every figure is an
# estimate from what the phase does, made pessimistic where a first window found the old ones 2–5× optimistic:
# - a phase process starts in ~5 s (torch import, CUDA context); the suites' one worker another ~25 s at its first
#   case (its own start, then Inductor's and Triton's warm-up on a tiny conv), paid once for all suites;
# - checks is time-boxed: `pytest -m window` (~60–90 s on 4 xdist workers) with the precompile workers beside it,
#   which compile as much of the plan as fits (every config of a conv is ~1.5 s of one core; all the window's convs
#   are ~3,400 core-seconds, far more than a window holds: what is not precompiled compiles when first launched);
# - configs: 6 (layer, part) items of ≤ 13 configs, in 6 workers, compiled already by checks when it got that far;
# - a ResNet-50 case: float64 oracle, three validations, an Inductor compile on a cold cache, the Triton autotuner's
#   7–13 configs, ~1.5 s of samples: ~12 s; backward ~16 s; max-autotune benchmarks Inductor's templates: ~60 s;
# - pool-large: 205 M-element inputs drawn in float64 on the CPU (~6 s each), three implementations: ~15 s a case;
# - train: two to five checked steps against a float64 reference on the GPU, an Inductor compile, a CUDA-graph
#   capture: ~25 s a case;
# - zoo (optional, last): 286 layers of seven torchvision models at 224², bf16, forward and backward; a case like a
#   ResNet-50 one, ~12 s.
PRIORS = {"env": (15.0, 2.5), "checks": (100.0, 0.0), "configs": (10.0, 6.0), "suites-start": (30.0, 0.0),
          "resnet50-bf16-fwd": (5.0, 12.0),
          "pool-large": (5.0, 15.0), "train": (5.0, 25.0), "resnet50-bf16-bwd": (5.0, 16.0),
          "resnet50-max-autotune": (5.0, 60.0), "resnet50-tf32": (5.0, 10.0), "zoo": (5.0, 12.0),
          "report": (30.0, 0.0)}
# Measured on a 2-vCPU VM (bench gpu --rehearse), for the rehearsal's CPU stand-ins.
REHEARSAL_PRIORS = {"env": (6.0, 2.0), "checks": (25.0, 0.0), "configs": (6.0, 2.0), "suites-start": (11.0, 0.0),
                    "smoke-fwd": (3.0, 2.0),
                    "smoke-pool": (3.0, 1.5), "smoke-train": (3.0, 6.0), "smoke-bwd": (3.0, 3.0),
                    "report": (15.0, 0.0)}


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
    device: str = "cuda"

    def options(self, out: Path, units: int | None = None, deadline: float | None = None, peaks: dict | None = None):
        return RunOptions(suite=self.suite, device=self.device, impls=list(self.impls),
                          ops=list(self.ops or []) or None, dtypes=list(self.dtypes or []) or None,
                          layouts=list(self.layouts or []) or None, where={k: set(v) for k, v in self.where},
                          out=out / self.name, limit=units, deadline=deadline, warm_cache=True, report=False,
                          progress=True, max_seconds=0.5, timeout=CASE_TIMEOUT_S, peaks=peaks,
                          compile_modes=list(self.compile_modes) if self.compile_modes else None)

    def cases(self) -> list:
        return select_cases(self.options(Path(".")).selection())


SUITE_RUNS = [
    SuiteRun("resnet50-bf16-fwd", "resnet50", ("triton", "cudnn", "compile"), ("conv2d",), ("bfloat16",),
             ("channels_last",)),
    SuiteRun("pool-large", "pool-large", ("triton", "cudnn", "compile")),
    SuiteRun("train", "train", ("triton", "cudnn", "compile"), ("train_step",), ("bfloat16",)),
    SuiteRun("resnet50-bf16-bwd", "resnet50", ("triton", "cudnn", "compile"), ("conv2d_backward",), ("bfloat16",),
             ("channels_last",)),
    SuiteRun("resnet50-max-autotune", "resnet50", ("cudnn", "compile-max-autotune"), ("conv2d",), ("bfloat16",),
             ("channels_last",), (("kernel_h", ("3",)), ("stride", ("1",))), compile_modes=("max-autotune",)),
    SuiteRun("resnet50-tf32", "resnet50", ("triton", "cudnn"), ("conv2d",), ("tf32",), ("nchw",)),
    # optional: last, so it gets only what the budget leaves (its report then names the layers not reached)
    SuiteRun("zoo", "zoo", ("triton", "cudnn", "compile")),
]

# The rehearsal's stand-ins: the smoke suite on the CPU (Triton checked under its interpreter, not timed).
REHEARSAL_RUNS = [
    SuiteRun("smoke-fwd", "smoke", ("triton", "cudnn", "im2col"), ("conv2d",), device="cpu"),
    SuiteRun("smoke-pool", "smoke", ("triton", "cudnn"), ("max_pool2d", "avg_pool2d"), device="cpu"),
    SuiteRun("smoke-train", "train", ("cudnn",), ("train_step",), where=(("batch", ("64",)),),
             device="cpu"),
    SuiteRun("smoke-bwd", "smoke", ("triton", "cudnn"), ("conv2d_backward",), device="cpu"),
]


def suite_runs(rehearse: bool) -> list[SuiteRun]:
    return REHEARSAL_RUNS if rehearse else SUITE_RUNS


def config_layers(rehearse: bool = False) -> list:
    """The two layers every config is checked on: a 3×3 and a 1×1, bf16 channels_last (ResNet-50's at batch 8; the
    rehearsal's are tiny fp32 ones, checked under the interpreter)."""
    if rehearse:
        three = ConvProblem(N=2, C=16, H=6, W=6, K=16, R=3, S=3, padding=(1, 1), layout="channels_last")
        return [three, three.replace(R=1, S=1, padding=(0, 0))]
    layers = [p for p, _ in resnet50_layers(8)]
    three = next(p for p in layers if p.R == 3 and p.stride == (1, 1) and p.C == 128)
    one = next(p for p in layers if p.R == 1 and p.C == 256 and p.K == 64)
    return [p.replace(dtype="bfloat16", layout="channels_last") for p in (three, one)]


CONFIG_PARTS = ("forward", "dgrad", "wgrad")


def precompile_items(planned: list[tuple[str, int]], rehearse: bool = False) -> list[tuple]:
    """What the planned phases will launch, in plan order: ('config', layer, part) for the config check's layers,
    then ('case', suite, Case) for every planned case of a suite that runs triton (its first ``units`` cases)."""
    runs = {r.name: r for r in suite_runs(rehearse)}
    items: list[tuple] = []
    for name, units in planned:
        if name == "configs":
            items += [("config", p, part) for p in config_layers(rehearse) for part in CONFIG_PARTS]
        elif name in runs and "triton" in runs[name].impls:
            items += [("case", name, c) for c in runs[name].cases()[:units]]
    return items


# ---- what a phase left on disk (read here, without torch, also when its process was killed) ------------------------
def row_statuses(run_dir: Path) -> dict[str, int]:
    return dict(Counter(r.get("status", "?") for r in read_jsonl(run_dir / "results.jsonl")))


def write_configs_csv(rows: list[dict], path: Path) -> None:
    cols = ["problem", "part", "index", "kernel", "config", "status", "max_abs_err", "max_rel_err", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "config": json.dumps(r.get("config"))})


def partial(out: Path, name: str, rehearse: bool) -> dict:
    """What a phase that did not finish had streamed to disk: its figures for the record, and its files completed
    (junit XML of the tests that ran, configs.csv of the configs checked)."""
    if name == "checks":
        tests = read_jsonl(out / "pytest.jsonl")
        junit(tests, out / "pytest-window.xml", note="the checks phase was killed at its deadline; tests not listed "
                                                     "did not run")
        done = read_jsonl(out / "precompile.jsonl")
        return {"tests": counts(tests),
                "precompiled": {"finished": len(done), **Counter(d.get("status", "?") for d in done)}}
    if name == "configs":
        rows = [row for line in read_jsonl(out / "configs.jsonl") for row in line.get("rows", [])]
        write_configs_csv(rows, out / "configs.csv")
        return {"configs_checked": len(rows), "failing": sum(r["status"] != "ok" for r in rows)}
    if name in {r.name for r in suite_runs(rehearse)}:
        return {"rows": row_statuses(out / name), "dir": name}
    return {}


# ---- phase processes ----------------------------------------------------------------------------------------------
TOKEN_VAR = "CONVBENCH_WINDOW_TOKEN"


def processes_with_token(token: str) -> list[int]:
    """PIDs of live processes whose environment carries this window's token (what a phase process started, even in
    another session: pytest, its xdist workers, compile pools)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def reap(token: str, grace: float = KILL_GRACE_S) -> int:
    """SIGKILL every process carrying ``token`` (after SIGTERM and ``grace``); returns how many were found."""
    pids = processes_with_token(token)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + (grace if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < end and any(_alive(p) for p in pids):
            time.sleep(0.05)
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Host:
    """A phase process: ``python -m bench.commands.gpu_phases`` in its own session, serving phase requests (one JSON
    line on stdin each) until stdin closes; each phase's result lands in ``out/phases/<name>.json``. ``call`` waits for
    it up to the phase's deadline, then kills the process group and every process carrying the token."""

    def __init__(self, out: Path, rehearse: bool, env: dict[str, str], log: Path) -> None:
        self.out, self.token = out, uuid.uuid4().hex
        cmd = [sys.executable, "-m", "bench.commands.gpu_phases", "--out", str(out)] + (["--rehearse"] * rehearse)
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**env, TOKEN_VAR: self.token}, start_new_session=True)

    def call(self, name: str, units: int, deadline: float, planned: list[tuple[str, int]]) -> dict:
        result = self.out / "phases" / f"{name}.json"
        result.unlink(missing_ok=True)
        request = {"phase": name, "units": units, "deadline": deadline - CHILD_MARGIN_S, "planned": planned}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            while True:
                if result.exists():
                    return json.loads(result.read_text())
                code = self.proc.poll()
                if code is not None:
                    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                    self.kill()
                    return {"status": "failed", "error": f"the phase process {why} (log: {name}.log)"}
                if time.monotonic() > deadline:
                    reaped = self.kill()
                    return {"status": "timeout", "error": f"killed at its deadline with its process group and "
                                                          f"{reaped} process(es) it started outside that group"}
                time.sleep(0.1)
        except BrokenPipeError:
            self.kill()
            return {"status": "failed", "error": "the phase process was gone before its request"}
        except BaseException:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> int:
        """Kill the process group (SIGTERM, then SIGKILL), then every process still carrying the token; returns
        how many processes were found beside the phase process."""
        if self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(KILL_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what is left of the group once its leader is gone
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        found = reap(self.token)
        self.log.close()
        return found

    def close(self) -> None:
        """End the process normally (stdin closed: it returns), killing it if it does not within a few seconds."""
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            pass
        self.kill()


class Hosts:
    """Which phase process serves which phase: suites share one (one benchmark worker for all of them) while it
    is healthy; every other phase gets a fresh one, closed after it."""

    def __init__(self, out: Path, rehearse: bool, env: dict[str, str]) -> None:
        self.out, self.rehearse, self.env = out, rehearse, env
        self.shared: Host | None = None
        self.suites = {r.name for r in suite_runs(rehearse)}

    def run(self, name: str, window: Window, units: int, deadline: float) -> dict:
        shared = name in self.suites
        if not shared:
            self.close()  # the suites' process goes when the suites are over
        if shared and self.shared is not None and self.shared.alive():
            host = self.shared
        else:
            env = dict(self.env)
            if shared:  # what the suites tune is kept (the archive's tuned.jsonl); nothing else stores a config
                env["CONVBENCH_TUNED_OUT"] = str(self.out / "tuned.jsonl")
            host = Host(self.out, self.rehearse, env, self.out / "logs" / f"{'suites' if shared else name}.log")
            if shared:
                self.shared = host
        try:
            result = host.call(name, units, deadline, window.planned)
        except Interrupted as exc:  # the window ends: what the phase streamed still goes into the record
            exc.partial = partial(self.out, name, self.rehearse)
            self.shared = None if shared else self.shared
            raise
        if result.get("status") in ("timeout", "failed") and not (self.out / "phases" / f"{name}.json").exists():
            result.update(partial(self.out, name, self.rehearse))
        if not shared:
            host.close()
        elif result.get("status") == "timeout" or not host.alive():  # a failed case is a row, not a sick process
            host.kill()
            self.shared = None
        return result

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def warm(self) -> frozenset[str]:
        return frozenset({"suites"}) if self.shared is not None and self.shared.alive() else frozenset()


def phases(costs: dict, hosts: Hosts | None, rehearse: bool = False) -> list[Phase]:
    """The window's phases with their sizes and costs (sizes from the suites themselves)."""
    def ph(name, what, units, **kw):
        fixed, per = costs[name]
        go = (lambda w, n, d: hosts.run(name, w, n, d)) if hosts else (lambda w, n, d: {})
        return Phase(name, what, fixed, per, units, go, **kw)

    n_configs = len(config_layers(rehearse)) * len(CONFIG_PARTS)
    out = [ph("env", ("device, clocks, NVML; GEMM peaks fp32/tf32/bf16/fp16, copy and read bandwidth" if not rehearse
                      else "CPU stand-in: environment and fp32 peaks"), 1 if rehearse else 4, required=True),
           ph("checks", "pytest -m window ∥ precompile what the plan launches, in plan order (time-boxed)", 1,
              required=True),
           ph("configs", "every pruned config of fwd/dgrad/wgrad on two layers vs an fp32 reference", n_configs,
              min_units=n_configs)]
    for run in suite_runs(rehearse):
        n = len(run.cases())
        out.append(ph(run.name, f"{run.suite}: {', '.join(run.impls)}", n, min_units=min(n, 3), group="suites",
                      cold_s=costs["suites-start"][0]))
    out.append(ph("report", "reports (each suite and side by side)", 1, required=True))
    return out


# ---- summary ------------------------------------------------------------------------------------------------------
def summary(out: Path, records: list[dict], rehearse: bool = False) -> list[str]:
    """One screen: each phase's outcome, then the headline ratios measured in this window."""
    lines = ["| phase | status | seconds | units | note |", "| --- | --- | --- | --- | --- |"]
    for r in records:
        note = {k: v for k, v in r.items() if k not in ("phase", "status", "seconds", "units", "of_units", "state",
                                                       "planned_s", "per_unit_s", "dir")}
        lines.append(f"| {r['phase']} | {r['status']} | {r.get('seconds', 0)} | {r.get('units')}/{r.get('of_units')} "
                     f"| {json.dumps(note)[:160]} |")
    lines += [""] + headline(out, rehearse)
    return lines


def headline(out: Path, rehearse: bool = False) -> list[str]:
    """Geometric-mean speedups over cudnn per suite, op and implementation (the report's own ``speedups``), from
    the rows streamed so far, and the median share of peak."""
    lines = []
    col = f"geomean speedup vs {BASELINE}"
    for run in suite_runs(rehearse):
        path = out / run.name / "results.jsonl"
        if not path.exists():
            continue
        rows = read_jsonl(path, repair=True)
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
def run_name(device_name: str) -> str:
    return f"{tuning.device_slug(device_name)}-{utc_now()[:10]}"


def _phase_env(out: Path, rehearse: bool) -> dict[str, str]:
    """The environment of every phase process: one Triton cache for the window (what checks compiles, the suites
    find), the fault state, the interpreter in a rehearsal, and nothing that stores tuned configs."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONVBENCH_TUNED_OUT",)}
    env.setdefault("TRITON_CACHE_DIR", str(Path.home() / ".cache" / "convbench" / "gpu-triton"))
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "convbench" / "gpu-inductor"))
    env["CONVBENCH_FAULT_STATE"] = str(out / "logs")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if rehearse:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def gpu_command(args) -> int:
    """``bench gpu``: plan (and with --dry-run only print) the window; else run it, print the summary, pack it.
    ``--unpack`` restores an archive here instead."""
    if args.unpack:
        return unpack_command(args.unpack, args.into)
    budget, rehearse = args.budget, args.rehearse
    if not budget or budget <= RESERVE_S + 30:
        raise UsageError(f"--budget must be more than {RESERVE_S + 30:.0f} seconds, got {budget}")
    try:
        parse_faults(os.environ.get("CONVBENCH_FAULT"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.pack is not None and not args.pack.name.endswith(".tar.gz"):
        raise UsageError(f"--pack must name a .tar.gz file, got {args.pack}")
    if args.pack is not None and not args.pack.parent.is_dir():
        raise UsageError(f"--pack {args.pack}: the folder {args.pack.parent} does not exist")
    costs, source = (dict(REHEARSAL_PRIORS), "rehearsal priors, measured on a 2-vCPU VM") if rehearse \
        else measured_costs()
    all_phases = phases(costs, None, rehearse)
    needed = sum(p.cost() for p in all_phases if p.required) + RESERVE_S
    if budget < needed:
        raise UsageError(f"--budget {budget:.0f} s is less than the required phases need ({needed:.0f} s: env, "
                         "checks, report and the reserve)")
    steps = plan(all_phases, budget - RESERVE_S)
    for line in describe(steps, budget, source):
        print(line)
    if args.dry_run:
        out = args.out or Path("/tmp/window")
        if not rehearse:
                print(f"on a lent machine, in the repository: timeout -s INT {int(budget + 80)} python3 -m bench gpu "
                  f"--budget {budget:.0f} --out {out} --pack $OUT/window.tar.gz")
        return 0
    if not rehearse:
        if not cuda_available():  # the parent only asks; it never creates a CUDA context
            raise UsageError("bench gpu needs a CUDA GPU (use --dry-run to print the plan, --rehearse to rehearse "
                             "the window on the CPU)")
        name = run_name(torch.cuda.get_device_name(0))
    else:
        name = f"rehearsal-{run_name('cpu')}"
    out = args.out or ROOT / "results" / "gpu" / name
    if (out / "phases.json").exists():
        raise UsageError(f"--out {out} already holds a GPU window; choose another directory")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "phases").mkdir(exist_ok=True)
    (out / "plan.txt").write_text("\n".join(describe(steps, budget, source)) + "\n")
    window = Window(out, budget)
    hosts = Hosts(out, rehearse, _phase_env(out, rehearse))
    real = phases(costs, hosts, rehearse)

    def finish(window: Window, interrupted: bool | None = None) -> list[str]:
        """summary.md, phases.json and the archive, as they stand now: after every phase, and at the end (when
        ``interrupted`` is known, phases.json also keeps the summary)."""
        lines = summary(out, window.records, rehearse)
        atomic_write(out / "summary.md", "\n".join(lines) + "\n")
        extra = None if interrupted is None else {"summary": lines, "interrupted": interrupted}
        window.write(extra)
        if args.pack is not None:
            manifest = pack(out, args.pack, name)
            window.write({**(extra or {}), "archive": {k: manifest[k] for k in ("archive_bytes", "left_out")}})
        return lines

    def stop(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        execute(window, real, log=lambda m: print(m, flush=True), after=finish, warm=hosts.warm)
    except Interrupted:
        interrupted = True
    finally:
        for s in old:  # the last writes are not to be cut by a second signal
            signal.signal(s, signal.SIG_IGN)
        hosts.close()
    lines = finish(window, interrupted)
    for s, h in old.items():
        signal.signal(s, h)
    print("\n".join(lines))
    print(f"window: {out}" + (f"; archive: {args.pack} (bench gpu --unpack {args.pack.name} restores it)"
                              if args.pack is not None else ""))
    if interrupted:
        return 130
    return 0 if all(r["status"] in ("ok", "skipped") for r in window.records) else 1


def unpack_command(archive: Path, into: Path | None) -> int:
    """``bench gpu --unpack FILE [--into DIR]``: the archive as DIR/<device>-<date>/ (default results/gpu/), and its
    tuned configs merged into kernels/triton/tuned/ — ready for one ``git add``."""
    if not archive.is_file():
        raise UsageError(f"--unpack {archive}: no such file")
    try:
        name = read_name(archive)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--unpack {archive}: not a window archive ({exc})") from None
    into = into or ROOT / "results" / "gpu"
    if (into / name).exists():
        raise UsageError(f"--unpack: {into / name} exists already; remove it or pass --into another folder")
    run_dir = unpack(archive, into)
    added_paths = [run_dir]
    tuned = run_dir / "tuned.jsonl"
    env_path = run_dir / "env.json"
    if tuned.exists() and env_path.exists():
        env = json.loads(env_path.read_text())
        device = env.get("device_name") or (env.get("gpu_properties") or {}).get("name")
        version = (env.get("versions") or {}).get("triton") or env.get("triton")
        if device and version:
            path, added = tuning.merge(tuned, device, tuning.store_path(device, version))
            added_paths.append(path)
            print(f"tuned configs: {added} new in {path}")
        else:
            print(f"warning: {tuned} not merged: env.json names no device or triton version", file=sys.stderr)
    print(f"unpacked: {run_dir}")
    print("commit it with: git add " + " ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
                                              for p in added_paths))
    return 0
