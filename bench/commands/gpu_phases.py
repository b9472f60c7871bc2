"""The GPU window's phases, as run inside a phase process (``python -m bench.commands.gpu_phases --out DIR
[--rehearse]``).

``bench gpu`` (bench/commands/gpu_window.py) starts this process in a session of its own, sends it one request per
phase (a JSON line on stdin: phase, units, deadline, the plan of the phases still to come) and kills it, with
everything it started, at the phase's deadline. Each phase therefore ends by itself a little before that (its
deadline is given early), streams what it does to files as it goes — so a kill keeps everything finished — and
writes its result to ``DIR/phases/<phase>.json`` last. With ``--rehearse`` every phase does its CPU stand-in: the
smoke suite's cases on the CPU, the Triton checks and compiles under the interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

import kernels
from kernels.triton import tuning
from reference.agreement import plain_train_step
from reference.optim import make_optimizer

from ..measure import env as envmod
from ..measure.env import default_threads
from ..measure.faults import inject
from ..measure.measure import Expected, build_call, grad_mode, make_grad_out
from ..measure.peaks import measure
from ..measure.worker import Supervisor, WorkerConfig
from ..present.report import write_reports
from ..runs.schema import atomic_write, read_jsonl
from .gpu_pytest import ENV as PYTEST_STREAM
from .gpu_pytest import counts, junit
from .gpu_window import CONFIG_PARTS, ROOT, config_layers, precompile_items, row_statuses, suite_runs, write_configs_csv
from .runner import run

#: configs run per kernel launch in a rehearsal (the interpreter is slow; on a GPU: every pruned config)
REHEARSAL_CONFIG_LIMIT = 2


@dataclass
class Context:
    out: Path
    rehearse: bool
    supervisor: object = None  # the suites' one benchmark worker (bench/measure/worker.py Supervisor), made at once

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"


# ---- env ----------------------------------------------------------------------------------------------------------
def env_phase(ctx: Context, units: int, deadline: float, planned) -> dict:
    dtypes = ["float32", "tf32", "bfloat16", "float16"][:units] if not ctx.rehearse else ["float32"]
    env = envmod.capture(ctx.device, 1 if ctx.rehearse else torch.get_num_threads(), "gpu-window", "", sys.argv[1:])
    env["rehearsal"] = ctx.rehearse
    env["peaks"] = measure(ctx.device, dtypes, 1 if ctx.rehearse else None)
    if not ctx.rehearse:
        env["gpu_telemetry"] = envmod.gpu_telemetry()
        props = torch.cuda.get_device_properties(0)
        env["gpu_properties"] = {"name": props.name, "sms": props.multi_processor_count,
                                 "memory_gib": round(props.total_memory / 2 ** 30, 1),
                                 "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2 ** 20, 1),
                                 "capability": f"{props.major}.{props.minor}"}
    atomic_write(ctx.out / "env.json", json.dumps(env, indent=2))
    g = env["peaks"]["gemm_flops"]
    return {"device": env.get("device_name"), "peaks_tflops": {k: round(v / 1e12, 2) for k, v in g.items()},
            "copy_tb_s": round(env["peaks"]["copy_bytes_per_s"] / 1e12, 3)}


# ---- a bounded pool of worker processes ---------------------------------------------------------------------------
def _pool_worker(fn, rehearse: bool, conn) -> None:
    """One worker: receive (index, item) until None, answer (index, ``fn(item, rehearse)``) — on a pipe of its own,
    written synchronously, so a worker that dies takes nobody else's messages or locks with it."""
    os.environ.pop("CONVBENCH_TUNED_OUT", None)  # nothing timed or tuned here is stored: workers share the device
    os.environ["CONVBENCH_TUNED"] = "off"
    while True:
        got = conn.recv()
        if got is None:
            return
        index, item = got
        inject("precompile")  # a rehearsal's fault lands on an item in flight
        t0 = time.perf_counter()
        try:
            result = fn(item, rehearse)
        except Exception as exc:  # noqa: BLE001 — one failing item is a finding, not the end of the pool
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:400]}
        conn.send((index, {**result, "seconds": round(time.perf_counter() - t0, 2)}))


@dataclass
class _Slot:
    proc: object
    conn: object
    index: int | None = None  # the item in flight


def run_pool(fn, items: list, workers: int, deadline: float, stream: Path, rehearse: bool, describe=str,
             started=lambda: None) -> dict:
    """Run ``fn(item, rehearse)`` for ``items`` (a module-level function: it is sent to the workers by name) in
    ``workers`` spawned processes, handed out in order, streaming one JSON line per finished item to ``stream``.
    A worker that dies records its item as ``crashed`` and is replaced; at ``deadline`` every worker is killed
    (SIGKILL: a hung compile ignores politer signals), never joined without a timeout. ``started()`` is called
    once the workers run."""
    ctx = mp.get_context("spawn")

    def start() -> _Slot:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_pool_worker, args=(fn, rehearse, theirs), daemon=True)
        proc.start()
        theirs.close()
        return _Slot(proc, mine)

    slots = [start() for _ in range(max(1, min(workers, len(items))))]
    started()
    finished, following, states, cut = 0, 0, Counter(), False

    def record(index: int, result: dict) -> None:
        nonlocal finished
        finished += 1
        states[result.get("status", "ok")] += 1
        with open(stream, "a") as f:
            f.write(json.dumps({"index": index, "item": describe(items[index]), **result}) + "\n")

    while finished < len(items):
        for slot in slots:
            if slot.index is None and following < len(items) and slot.proc.is_alive():
                slot.conn.send((following, items[following]))
                slot.index, following = following, following + 1
        left = deadline - time.monotonic()
        if left <= 0:
            cut = True
            break
        busy = [s for s in slots if s.index is not None]
        if not busy:
            break
        mp.connection.wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=min(0.5, left))
        for i, slot in enumerate(slots):
            if slot.index is None:
                continue
            try:
                if slot.conn.poll():
                    index, result = slot.conn.recv()
                    record(index, result)
                    slot.index = None
                    continue
            except (EOFError, OSError):
                pass
            if not slot.proc.is_alive():  # died mid-item: that item crashed it; a fresh worker takes over
                slot.proc.join(1)
                code = slot.proc.exitcode
                record(slot.index, {"status": "crashed", "error": f"worker died ({signal.Signals(-code).name})"
                                    if code is not None and code < 0 else f"worker exited with code {code}"})
                slots[i] = start()
    in_flight = sorted(describe(items[s.index]) for s in slots if s.index is not None)
    for slot in slots:
        if slot.proc.is_alive():
            slot.proc.kill()
    for slot in slots:
        slot.proc.join(2)
    return {"items": len(items), "finished": finished, "workers": len(slots), "cut_at_deadline": cut,
            "in_flight_when_cut": in_flight if cut else [], **states}


def _workers(rehearse: bool, want: int) -> int:
    return 1 if rehearse else max(2, min(want, (os.cpu_count() or 4) - 4))


# ---- checks: the window's tests beside the precompile workers -----------------------------------------------------
def _describe_item(item) -> str:
    if item[0] == "config":
        return f"config {item[2]} {item[1]}"
    return f"{item[1]} {item[2].key}"


def precompile_item(item, rehearse: bool) -> dict:
    """Compile (and run once) every config of every Triton launch ``item`` makes, through the callable the timed
    run itself builds (so the binaries are the ones it looks up: same strides, same specialisations); pooling
    kernels are compiled by their autotuner on the first call."""
    limit = REHEARSAL_CONFIG_LIMIT if rehearse else 64
    if item[0] == "config":
        _, p, part = item
        calls, _ = tuning.conv_parts(p, "cpu" if rehearse else "cuda")
        call = calls[part]
    else:
        case = item[2]
        impl = kernels.get("triton")
        if case.op == "train_step":
            call = _train_call(impl, case)
        else:
            # the timed callable itself, without the oracle (nothing is checked here): build_call draws the inputs
            # from the run's seed, so values, strides and alignment are those of the timed run; a backward gets the
            # same dy (only its dtype is read from the tensors)
            expected = Expected({})
            if case.op == "conv2d_backward":
                expected.grad_out = make_grad_out(case, case.problem.make_inputs(case.device, 0))
            with grad_mode(case):
                call, _ = build_call(impl, case, 0, expected)
    n, errors = 0, []
    with grad_mode(case) if item[0] != "config" else contextlib.nullcontext():  # as the timed calls run
        for i, cfg, out in tuning.each_config(call, limit, clamp=True):
            n += 1
            if isinstance(out, Exception):
                errors.append(f"config {i} {cfg.get('config')}: {type(out).__name__}: {out}"[:300])
            if not rehearse:
                torch.cuda.synchronize()
    done = {"status": "ok" if not errors else "error", "forced_configs": n, "errors": errors[:5]}
    if not n:  # pooling: no forced launch; the call ran, and the kernels' own autotuner compiled every config
        done["note"] = "compiled by the kernels' own autotuner"
    return done


def _train_call(impl, case):
    """One eager training step of ``case`` through ``impl``'s ops: the kernels its (graph-captured) step launches."""
    p = case.problem
    model = p.build(impl.train_ops(), 0, case.device)
    optimizer = make_optimizer(p.optimizer, model.parameters(), **impl.optimizer_options(case.device))
    step = plain_train_step(model, optimizer)
    x, y = p.make_batches(1, 0, case.device)[0]
    return lambda: step(x, y)


def checks_phase(ctx: Context, units: int, deadline: float, planned) -> dict:
    out = ctx.out
    stream = out / "pytest.jsonl"
    stream.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CONVBENCH_TUNED_OUT"}
    env.update({PYTEST_STREAM: str(stream), "CONVBENCH_TUNED": "off", "PYTHONPATH": str(ROOT)})
    try:
        import xdist  # noqa: F401 — parallel tests where pytest-xdist is installed (the GPU machine has it)

        parallel = ["-n", "1" if ctx.rehearse else "4"]
    except ImportError:
        parallel = []
    # the rehearsal: the bf16 Triton cases under the interpreter (18 of the 77), the GPU-only ones skip
    selection = ["-m", "window", "tests/test_window.py"] + (["-k", "bfloat16"] if ctx.rehearse else [])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.commands.gpu_pytest", "-o",
           "addopts=", *parallel, *selection]
    with open(out / "logs" / "pytest.log", "wb") as log:
        # its own session, so the whole of it — xdist workers included — can be killed at once
        tests = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    t0 = time.monotonic()
    items = precompile_items(planned, ctx.rehearse)
    (out / "precompile.jsonl").unlink(missing_ok=True)
    # a rehearsal's fault hangs here, with pytest and the pool running: the window must kill them all
    pool = run_pool(precompile_item, items, _workers(ctx.rehearse, 12), deadline, out / "precompile.jsonl",
                    ctx.rehearse, _describe_item, started=lambda: inject("checks")) if items else {"items": 0}
    try:
        rc = tests.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(tests.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        tests.wait()
        rc = "killed at the deadline"
    lines = read_jsonl(stream)
    junit(lines, out / "pytest-window.xml", note="" if rc != "killed at the deadline"
          else f"pytest was killed at its deadline after {time.monotonic() - t0:.0f} s; tests not listed did not run")
    c = counts(lines)
    # a config that fails to compile, or a compile that crashes its worker, is a finding like a failing test
    ok = rc == 0 and not c.get("failed") and not c.get("error") and not pool.get("crashed") and not pool.get("error")
    return {"status": "ok" if ok else "failed", "pytest_rc": rc, "tests": c, "precompile": pool,
            "failing": [f"{r['nodeid']}: {r['reason'][:120]}" for r in lines if r["outcome"] in ("failed", "error")]
            [:10]}


# ---- configs ------------------------------------------------------------------------------------------------------
def check_item(item, rehearse: bool) -> dict:
    p, part = item
    rows = tuning.check_configs([p], "cpu" if rehearse else "cuda", parts=(part,),
                                limit=REHEARSAL_CONFIG_LIMIT if rehearse else 64)
    bad = [r for r in rows if r["status"] != "ok"]
    return {"status": "ok" if not bad else "failed", "rows": rows}


def configs_phase(ctx: Context, units: int, deadline: float, planned) -> dict:
    items = [(p, part) for p in config_layers(ctx.rehearse) for part in CONFIG_PARTS][:units]
    stream = ctx.out / "configs.jsonl"
    stream.unlink(missing_ok=True)
    pool = run_pool(check_item, items, _workers(ctx.rehearse, len(items)), deadline, stream, ctx.rehearse,
                    lambda it: f"{it[1]} {it[0]}", started=lambda: inject("configs"))
    rows = [row for line in read_jsonl(stream) for row in line.get("rows", [])]
    write_configs_csv(rows, ctx.out / "configs.csv")
    bad = [r for r in rows if r["status"] != "ok"]
    complete = pool["finished"] == len(items) and not pool.get("crashed")
    return {"status": "ok" if complete and not bad else "failed", "configs_checked": len(rows), "pool": pool,
            "failing": [f"{r['part']} {r['kernel']} {r['config']}: {r['status']} {r.get('error', '')[:80]}"
                        for r in bad][:20]}


# ---- suites -------------------------------------------------------------------------------------------------------
def suite_phase(ctx: Context, name: str, units: int, deadline: float) -> dict:
    inject("suite")
    suite = next(r for r in suite_runs(ctx.rehearse) if r.name == name)
    env_path = ctx.out / "env.json"
    peaks = json.loads(env_path.read_text()).get("peaks") if env_path.exists() else None
    if ctx.supervisor is None:  # one worker for every suite: its start and warm-up are paid once
        keep = ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "CONVBENCH_TUNED_OUT", "CONVBENCH_FAULT",
                "CONVBENCH_FAULT_STATE")
        ctx.supervisor = Supervisor(WorkerConfig(suite.device, 1 if ctx.rehearse else default_threads(),
                                                 tuple((k, os.environ[k]) for k in keep if k in os.environ)),
                                    suite.options(ctx.out).timeout)
    rc = run(suite.options(ctx.out, units, deadline, peaks), ctx.supervisor)
    env = json.loads((ctx.out / name / "env.json").read_text())
    return {"status": "ok" if rc == 0 else "failed", "rc": rc, "complete": env.get("complete"),
            "stopped": env.get("stopped"), "rows": row_statuses(ctx.out / name), "dir": name}


# ---- report -------------------------------------------------------------------------------------------------------
def report_phase(ctx: Context, units: int, deadline: float, planned) -> dict:
    dirs = [ctx.out / r.name for r in suite_runs(ctx.rehearse) if (ctx.out / r.name / "results.csv").exists()]
    rc = write_reports(dirs, ctx.out) if dirs else 2
    return {"status": "ok" if rc == 0 else "failed", "reports": [d.name for d in dirs]}


PHASES = {"env": env_phase, "checks": checks_phase, "configs": configs_phase, "report": report_phase}


def serve(ctx: Context, stream=sys.stdin) -> None:
    """Answer phase requests until stdin closes."""
    suites = {r.name for r in suite_runs(ctx.rehearse)}
    try:
        for line in stream:
            req = json.loads(line)
            name, units, deadline, planned = req["phase"], req["units"], req["deadline"], req.get("planned", [])
            print(f"== phase {name}: {units} units, {deadline - time.monotonic():.0f} s", flush=True)
            if name in ("env", "report"):  # checks and configs hang once their subprocesses run
                inject(name)
            try:
                if name in suites:
                    result = suite_phase(ctx, name, units, deadline)
                else:
                    result = PHASES[name](ctx, units, deadline, planned)
            except Exception as exc:  # noqa: BLE001 — reported to the window, which goes on
                traceback.print_exc()
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
            atomic_write(ctx.out / "phases" / f"{name}.json", json.dumps(result, default=str))
    finally:
        if ctx.supervisor is not None:
            ctx.supervisor.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.commands.gpu_phases", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rehearse", action="store_true")
    args = ap.parse_args(argv)
    serve(Context(args.out, args.rehearse))
    return 0


if __name__ == "__main__":
    sys.exit(main())
