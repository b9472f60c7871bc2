"""The run of ``bench run`` (its options: bench/commands/run.py): select cases, measure each in the supervised
worker, stream rows to disk, summarise.

Resume (``--resume``): rows already in results.jsonl are skipped by (case key, implementation); a run killed with
SIGKILL loses at most the case that was in flight. Shards (``--shard K/N``): case i of the selected, ordered list
belongs to shard (i mod N) + 1, so N machines split a suite without talking to each other; ``bench merge`` joins
their directories.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from ..measure import callgrind
from ..measure import env as envmod
from ..measure.cases import Case
from ..measure.counting import count_cases
from ..measure.env import default_threads, require_counts, require_device, require_threads
from ..measure.impls import load_warnings, not_runnable, select_impls
from ..measure.measure import Outcome
from ..measure.models import ZOO, ZOO_SHAPE, model_layers
from ..measure.peaks import measure as measure_peaks
from ..measure.peer import Peer, make_farm
from ..measure.profiler import collect
from ..measure.results import make_row, timing_mode
from ..measure.select import Selection, select_cases
from ..measure.suites import SUITES, suite_hash
from ..measure.worker import Supervisor, WorkerConfig, inherited_env, warm_up_cache
from ..present.console import case_line, closing_summary, not_run_lines
from ..present.profile_tables import write_profile
from ..present.report import write_report
from ..runs import runlog
from ..runs.runlog import library_logs_to
from ..runs.schema import (
    FAILED,
    JsonlWriter,
    UsageError,
    atomic_write,
    device_key,
    finalize,
    read_jsonl,
    row_id,
)
from .cluster import RayExecutor, env_fields


@dataclass
class RunOptions:
    suite: str = "quick"
    device: str = "cpu"
    impls: list[str] | None = None
    compile_modes: list[str] | None = None  # torch.compile modes to run (compile variants), e.g. default max-autotune
    ops: list[str] | None = None
    dtypes: list[str] | None = None
    layouts: list[str] | None = None
    where: dict[str, set[str]] = field(default_factory=dict)
    out: Path | None = None
    resume: bool = False
    shard: tuple[int, int] | None = None
    threads: int | None = None
    timeout: float = 300.0
    max_seconds: float | None = None
    seed: int = 0
    progress: bool = True
    profile: bool = False
    metric: str = "time"  # or "instructions": Callgrind counts, the whole selection in one valgrind process
    warm_cache: bool = False  # reuse the machine's Inductor/Triton caches instead of fresh ones for this run
    report: bool = True  # write report.md / report.html / plots/ at the end (--no-report: not)
    limit: int | None = None  # only the first N selected cases (bench gpu trims a phase to its allowance)
    deadline: float | None = None  # time.monotonic() after which no new case starts and a case in flight is cut
    peaks: dict | None = None  # peaks measured already (bench gpu's env phase): not measured again
    executor: str = "local"  # or "ray": each case a Ray task on a cluster (bench/commands/cluster.py)
    address: str | None = None  # the Ray cluster (None: a one-node cluster of this machine; "auto": the running one)
    each_device: bool = False  # ray: every case once per device kind of the cluster
    retries: int = 0  # ray: a case whose node dies goes once more to another node, this many times
    models: tuple[str, ...] = ()  # run --model: these torchvision models' layers instead of the suite's cases
    image_size: int = 224
    batch: int = 1

    def selection(self) -> Selection:
        """Which cases this run measures."""
        return Selection(self.suite, self.device, self.ops, self.dtypes, self.layouts, self.where, self.shard,
                         tuple(self.models), self.image_size, self.batch)

    @property
    def label(self) -> str:
        """What env.json and the report call the selection: the suite, or the models and their shape."""
        if not self.models:
            return self.suite
        return f"models {','.join(self.models)} at {self.image_size}×{self.image_size}, batch {self.batch}"


def network_sizes(opts: RunOptions) -> dict | None:
    """env.json's ``models``: how many distinct conv/pool layers (and convs) each measured network has, so that
    the report gives whole-network totals only where every layer was measured (bench/runs/network.py)."""
    if opts.models:
        names, (size, batch) = opts.models, (opts.image_size, opts.batch)
    elif opts.suite == "zoo":
        names, (size, batch) = ZOO, ZOO_SHAPE[opts.device]
    else:
        return None
    out = {}
    for name in names:
        layers = model_layers([name], size, batch)
        out[name] = {"layers": len(layers), "convs": sum(layer.problem.op == "conv2d" for layer in layers)}
    return out


def default_out(device: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path("results") / "runs" / f"{stamp}-{socket.gethostname()}-{device}"


class Progress:
    """One line per finished case with its numbers (bench/present/console.py: case_line) on stderr, readable in a
    CI log; on a terminal a rich progress bar with an ETA stays below the lines. The implementations that cannot
    run on the device (``hidden``: name → why) are named once here, not on every line."""

    def __init__(self, total: int, enabled: bool, hidden: dict[str, str] | None = None, device: str = "") -> None:
        self.total, self.done = total, 0
        self.hidden = frozenset(hidden or ())
        self.quiet = not enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("cases", total=total)
            self.bar.start()
        for line in not_run_lines(hidden or {}, device) if enabled else ():
            self._print(line)

    def _print(self, text: str) -> None:
        if self.bar is not None:  # above the bar, never wrapped into it
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, case: Case, rows: list[dict], note: str = "") -> None:
        """``case`` is finished; ``rows``: its rows (this run's, or a resumed run's earlier ones)."""
        self.done += 1
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=case.op)
        text = case_line(rows, self.hidden) if rows else case.key
        self._print(f"[{self.done:>{len(str(self.total))}}/{self.total}] {text}" + (f" ({note})" if note else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _load_for_resume(out: Path, env_now: dict) -> tuple[list[dict], dict]:
    env_path = out / "env.json"
    if not env_path.exists():
        raise UsageError(f"--resume: {out} has no env.json; is it a convbench run directory?")
    old = json.loads(env_path.read_text())
    if "ray" in (old.get("executor"), env_now.get("executor")):
        # each row names the environment that measured it, so a cluster that changed between the two starts is
        # recorded, not refused: the nodes of both starts are kept, and compare/report split by environment
        if old.get("executor") != env_now.get("executor"):
            raise UsageError(f"--resume: {out} was started with --executor {old.get('executor', 'local')}; "
                             f"resume it with the same executor")
        nodes = {**(old.get("nodes") or {}), **(env_now.get("nodes") or {})}
        old.update(nodes=nodes, **env_fields(list(nodes.values())))
    elif envmod.fingerprint(old) != envmod.fingerprint(env_now):
        raise UsageError(f"--resume: the environment differs from the one that started {out}: "
                         f"{envmod.fingerprint(old)} vs {envmod.fingerprint(env_now)}")
    if old.get("suite_hash") != env_now.get("suite_hash"):
        raise UsageError(f"--resume: {out} was started with another suite selection ({old.get('suite')}, "
                         f"hash {old.get('suite_hash')}); repeat the original arguments")
    old.setdefault("resumed", []).append(env_now["start"])
    old["warnings"] = list(dict.fromkeys(old.get("warnings", []) + env_now["warnings"]))
    return read_jsonl(out / "results.jsonl", repair=True), old


def run(opts: RunOptions, supervisor: Supervisor | None = None) -> int:
    """Measure the selected cases; return the contract's exit code (0 clean, 1 some case failed). ``supervisor``:
    a worker to reuse (bench gpu runs its suites in one worker, so warm-up and compiles are paid once); it is
    left open for the caller."""
    if opts.executor == "local":  # a Ray run's devices are its nodes' (probed there), not this machine's
        require_device(opts.device)
    elif opts.device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {opts.device!r}")
    if opts.executor not in ("local", "ray"):
        raise UsageError(f"--executor must be local or ray, got {opts.executor!r}")
    if opts.executor == "local" and (opts.each_device or opts.retries or opts.address):
        raise UsageError("--each-device, --retries and --address need --executor ray")
    if opts.executor == "ray" and opts.metric == "instructions":
        raise UsageError("--metric instructions counts on this machine (one valgrind process): use --executor local")
    if opts.executor == "ray" and opts.profile:
        raise UsageError("--profile runs on this machine: profile with --executor local")
    if opts.metric == "instructions" and opts.profile:  # the valgrind peer times nothing, so nothing is profiled
        raise UsageError("--profile profiles timed calls: use it with --metric time")
    if opts.executor == "local":  # a Ray node's cores are its own
        require_threads(opts.threads)
    impls = select_impls(opts.impls, opts.compile_modes)
    cases = select_cases(opts.selection())
    if not cases:
        raise UsageError("no case matches the selection (--suite/--op/--dtype/--layout/--where/--shard)")
    if opts.limit is not None:
        cases = cases[:opts.limit]
    timing = SUITES["zoo" if opts.models else opts.suite].timing
    if opts.max_seconds:
        timing = dataclasses.replace(timing, max_seconds=opts.max_seconds)
    if opts.metric == "instructions":
        require_counts(opts.device)
        if opts.threads not in (None, 1):
            raise UsageError("--metric instructions runs one thread (valgrind serialises threads); drop --threads")
    threads = 1 if opts.metric == "instructions" else opts.threads or default_threads()
    out = opts.out or default_out(opts.device)
    env = envmod.capture(opts.device, threads, opts.label, suite_hash(cases, timing) + (
        "-instructions" if opts.metric == "instructions" else ""), sys.argv[1:])
    env["warnings"] += load_warnings()
    env.update(models=network_sizes(opts), shard=list(opts.shard) if opts.shard else None, impls=impls,
               not_run=not_runnable(impls, opts.device) if opts.executor == "local" else {}, cases=len(cases),
               timing=dataclasses.asdict(timing), timeout_s=opts.timeout, seed=opts.seed, metric=opts.metric)
    if not opts.resume and (out / "results.jsonl").exists() and (out / "results.jsonl").stat().st_size:
        raise UsageError(f"{out} already holds results; pass --resume to continue it or choose another --out")
    device_names = opts.where.get("device_name")
    cluster = None
    if opts.executor == "ray":  # connect and probe every node before anything is written
        cluster = RayExecutor(opts.device, opts.address, opts.threads, device_names, opts.each_device, opts.retries)
        try:
            nodes = cluster.probe(opts.suite, env["suite_hash"], sys.argv[1:], sorted({c.dtype for c in cases}))
        except BaseException:
            cluster.close()
            raise
        envs = [n.env for n in nodes.values()]
        env.update(executor="ray", address=opts.address or "local", each_device=opts.each_device,
                   retries=opts.retries, nodes={k: n.env for k, n in nodes.items()}, **env_fields(envs),
                   ray={"version": cluster.ray.__version__, **cluster.timings,
                        "probe_failures": cluster.probe_failures})
        env["driver"] = {k: env[k] for k in ("host", "cpu_model")}
        env["warnings"] += [f"node {n.label}: {w}" for n in nodes.values() for w in n.env.get("warnings", [])]
        env["warnings"] += [f"a node could not be probed and took no case: {f}" for f in cluster.probe_failures]
    elif device_names and not any(v.lower() in str(env["device_name"]).lower() for v in device_names):
        raise UsageError(f"--where device_name={','.join(sorted(device_names))}: this machine's device is "
                         f"{env['device_name']!r}")
    if opts.resume:
        try:
            previous, env = _load_for_resume(out, env)
        except BaseException:
            if cluster:
                cluster.close()
            raise
    else:
        try:  # what --out's check at parse time cannot see (the default folder, /proc, a race): still exit 2
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if cluster:
                cluster.close()
            raise UsageError(f"--out {out}: cannot create it ({exc.strerror})") from None
        previous = []
    quiet = library_logs_to(out / runlog.NAME)
    try:
        return _measure(opts, supervisor, cases, impls, timing, threads, out, env, previous, cluster)
    finally:
        runlog.restore(quiet)


def _measure(opts: RunOptions, supervisor: Supervisor | None, cases: list[Case], impls: list[str], timing,
             threads: int, out: Path, env: dict, previous: list[dict], cluster) -> int:
    """The run once its directory exists: peaks, then every case, then the closing files and summary."""
    if opts.peaks and not env.get("peaks"):
        env["peaks"] = opts.peaks
    if opts.metric == "time" and not env.get("peaks") and cluster is None:  # a resumed run keeps its peaks
        env["peaks"] = measure_peaks(opts.device, sorted({c.dtype for c in cases}), threads)
    atomic_write(out / "env.json", json.dumps(env, indent=2))
    for w in env["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    done = {row_id(r) for r in previous}
    rows = list(previous)
    if cluster is not None:
        return _run_ray(opts, cluster, cases, impls, timing, out, env, done, rows)
    mode = timing_mode(opts.device, threads)
    writer = JsonlWriter(out / "results.jsonl")
    cache_dir = None
    own = supervisor is None
    if supervisor is not None:
        env["compile_cache"] = {"mode": "the caller's worker"}
        supervisor.cut = None
    elif opts.metric == "instructions":
        supervisor = InstructionSupervisor(out, opts.device, opts.timeout)
        mode = "callgrind,instructions-per-call-outside-malloc,arch=x86-64-v3"  # glibc malloc/free left out
    else:
        cache_env, env["compile_cache"], cache_dir = compile_caches(opts.warm_cache)
        supervisor = Supervisor(WorkerConfig(opts.device, threads, inherited_env() + cache_env,
                                             profile_dir=str(out.resolve()) if opts.profile else None,
                                             warmup_cache=env["compile_cache"].get("process warm-up"),
                                             log_path=str((out / runlog.NAME).resolve())), opts.timeout)
    progress = Progress(len(cases), opts.progress, env.get("not_run"), opts.device)
    placement = {"node": env["host"], "device_name": env["device_name"], "env_key": device_key(env)}
    interrupted = stopped = False
    started = time.perf_counter()
    try:
        for case in cases:
            if opts.deadline is not None and time.monotonic() > opts.deadline:
                stopped = True  # out of time: the cases not started are left for --resume
                break
            todo = [n for n in impls if (case.key, n, "") not in done]
            fresh = []
            for outcome in supervisor.measure(case, todo, timing, opts.seed, opts.deadline) if todo else ():
                row = make_row(case, outcome, mode, supervisor.threads or threads, env.get("peaks"), placement)
                writer.write(row)
                rows.append(row)
                fresh.append(row)
            progress.step(case, [r for r in previous if r["case_key"] == case.key] + fresh,
                          "" if fresh else "already done")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        if own:
            supervisor.close()
        writer.close()
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    env["cases_s"] = round(time.perf_counter() - started, 3)
    if opts.profile:  # each case was profiled by the worker after its timing; the tables join them
        profiled = collect(out)
        if profiled:
            write_profile(out, profiled)
            print(f"profiles: {out / 'profile.md'} ({sum(s['status'] == 'ok' for s in profiled)} case × "
                  f"implementation traces in {out / 'traces'})", file=sys.stderr)
    stopped = stopped or bool(getattr(supervisor, "cut", None))  # a case cut by the deadline is not complete
    env["worker_restarts"] = supervisor.restarts
    env["worker_warmup_s"] = getattr(supervisor, "warmups", [])
    return _finish(opts, out, env, rows, interrupted, stopped)


def _run_ray(opts: RunOptions, cluster, cases: list[Case], impls: list[str], timing, out: Path, env: dict,
             done: set, rows: list[dict]) -> int:
    """The case loop of ``--executor ray`` (bench/commands/cluster.py): rows stream in from the nodes as they finish."""
    writer = JsonlWriter(out / "results.jsonl")
    groups = cluster.groups()
    progress = Progress(len(cases) * len(groups), opts.progress)

    def emit(row: dict) -> None:
        writer.write(row)
        rows.append(row)

    def todo(case: Case, target: str) -> list[str]:
        return [n for n in impls if (case.key, n, target) not in done]

    setup = cluster.setup(opts.timeout, opts.warm_cache)
    env["compile_cache"] = {"mode": "warm" if opts.warm_cache else "cold", "per node": "the machine's own"
                            if opts.warm_cache else f"<tmp>/convbench-ray-{setup.run_token}, removed at the end"}
    try:
        interrupted, stopped = cluster.run(cases, todo, timing, opts.seed, setup, emit, progress.step, opts.deadline)
    finally:
        progress.close()
        writer.close()
        cluster.close()
    env["cases_s"] = cluster.timings.get("cases_s")
    env["ray"].update(cluster.timings)
    env["worker_restarts"] = cluster.restarts
    env["worker_warmup_s"] = cluster.warmups
    return _finish(opts, out, env, rows, interrupted, stopped)


def _finish(opts: RunOptions, out: Path, env: dict, rows: list[dict], interrupted: bool, stopped: bool) -> int:
    """Close the run: env.json, results.csv, pytest-benchmark.json, the summary and the report."""
    env = envmod.finish(env, rows)
    env["complete"] = not (interrupted or stopped)
    if stopped:
        env["stopped"] = "deadline: the cases not started are left for --resume"
    finalize(out, rows, env)
    report = None
    if opts.report and rows and opts.metric == "time":
        if write_report(out, announce=False) != 0:
            print(f"warning: the report of {out} could not be written (the results are complete)", file=sys.stderr)
        elif (out / "report.html").exists():
            report = out / "report.html"
    sys.stderr.flush()
    print("\n".join(closing_summary(rows, env, out, env.get("impls") or [], env.get("not_run") or {}, report,
                                    runlog.mention(out / runlog.NAME))), flush=True)
    if interrupted:
        print(f"interrupted: {len(rows)} rows kept in {out}; continue with --resume --out {out}", file=sys.stderr)
        return 1
    return 1 if any(r["status"] in FAILED for r in rows) else 0


class InstructionSupervisor:
    """``run --metric instructions``: one valgrind process (bench/measure/peer.py under Callgrind) for the whole
    selection, this checkout's implementations; the same interface as Supervisor. Dumps stay in ``out/callgrind/``."""

    threads = 1

    def __init__(self, out: Path, device: str, timeout: float) -> None:
        self.dumps = out.resolve() / "callgrind"  # valgrind runs in the peer's farm: a relative --out is not there
        self.dumps.mkdir(parents=True, exist_ok=True)
        self.farm = make_farm(Path(tempfile.mkdtemp(prefix="convbench-cg-")), Path(__file__).resolve().parents[2])
        self.peer = Peer("valgrind", self.farm, device, 1, {**callgrind.ENV, "CONVBENCH_CALLGRIND_OUT":
                                                             str(self.dumps)}, callgrind.command(self.dumps), 900.0)
        self.timeout, self.restarts = timeout, 0

    def measure(self, case: Case, impls: list[str], timing, seed: int, deadline: float | None = None):
        for _, got in count_cases(self.peer, [case], impls, timing, seed, self.timeout * 20):
            for name in impls:
                status, error, backend, count = got.get(name, ("error", "no result", "", None))
                yield Outcome(name, status, error, backend, instructions=count)
        self.restarts = self.peer.restarts

    def close(self) -> None:
        self.peer.close()
        shutil.rmtree(self.farm, ignore_errors=True)


def compile_caches(warm: bool) -> tuple[tuple[tuple[str, str], ...], dict, Path | None]:
    """The Inductor and Triton cache directories of a run's workers. Cold (the default): fresh empty ones, removed
    at the end, so compile_s measures compilation and not whatever earlier runs left on disk (identical code gave
    0.9–1.3 s in one run and 0.06–0.1 s in the next); only the worker's process warm-up keeps its own cache from run
    to run. Warm (--warm-cache): the machine's own caches, as set in the
    environment or torch's and Triton's defaults. Returns (worker environment, env.json entry, dir to remove)."""
    if warm:
        dirs = {"inductor": os.environ.get("TORCHINDUCTOR_CACHE_DIR")
                or str(Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"),
                "triton": os.environ.get("TRITON_CACHE_DIR") or str(Path.home() / ".triton" / "cache")}
        return (), {"mode": "warm", **dirs}, None
    root = Path(tempfile.mkdtemp(prefix="convbench-compile-cache-"))
    kept = warm_up_cache()  # kept across runs: no row depends on it (see warm_up_cache)
    dirs = {"inductor": str(root / "inductor"), "triton": str(root / "triton"),
            "process warm-up": str(kept) if kept else None}
    return (("TORCHINDUCTOR_CACHE_DIR", dirs["inductor"]), ("TRITON_CACHE_DIR", dirs["triton"])), \
        {"mode": "cold", **dirs}, root
