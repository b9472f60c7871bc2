"""``run --executor ray``: one run's cases fanned out over a Ray cluster, one case per device slot.

The driver (``bench run``) selects the cases exactly as a local run does. Each case, with all its implementations
interleaved as locally, is one Ray task, and the task runs the same supervised worker (bench/measure/worker.py)
on the node it lands on. So validation, per-phase timeouts, crash isolation and the rows are what a local run
gives. Ray only places the work:

- CUDA: ``num_gpus=1``. Ray sets CUDA_VISIBLE_DEVICES, so each case has one GPU to itself.
- CPU: one unit of the custom resource ``convbench_cpu_slot``, which a node offers once
  (``ray start --resources='{"convbench_cpu_slot": 1}'``), so two timed cases never share a machine's cores.
- Which nodes: a label selector on ``ray.io/node-id``. Ray schedules among the nodes that ``--where
  device_name=…`` keeps, one device kind per submission with ``--each-device``, and other nodes than the one that
  died for a retry.

Before any case, one probe task per eligible node records that node's environment and measured peaks. env.json
keeps them under ``nodes``, and every row names its node, device and environment (``env_key``).

Tasks are generators. They first yield the node they run on, then one row per implementation as it finishes, and
the driver appends each row to results.jsonl at once, so ``--resume`` after a driver crash re-runs only what is
missing. A task that dies (its node or its Ray worker) turns the implementations it had not finished into
``error`` rows naming the node, or, with ``--retries 1``, goes once more to another node. Ctrl-C cancels the
outstanding tasks and leaves a resumable run.

Every Ray worker process keeps its supervised worker between cases (process start, imports and compile warm-up
are paid once per worker, as in a local run). The code the nodes run is the driver's: bench, kernels and reference
are shipped with the job (Ray ``py_modules``).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import kernels
import reference

from ..measure import env as envmod
from ..measure.env import default_threads
from ..measure.faults import RAY_FAULT_ENV, die_once
from ..measure.measure import Outcome
from ..measure.peaks import measure as measure_peaks
from ..measure.results import make_row, timing_mode
from ..measure.worker import Supervisor, WorkerConfig, inherited_env, warm_up_cache
from ..runs.schema import UsageError, device_key

SLOT = "convbench_cpu_slot"
NODE_LABEL = "ray.io/node-id"
FAULT_ENV = RAY_FAULT_ENV  # a test's fault, passed on to the nodes (bench/measure/faults.py)
BENCH = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Node:
    """One eligible node of the cluster, as its probe saw it."""

    node_id: str
    label: str  # "ip (hostname)", what rows and errors name
    device_name: str
    env_key: str
    threads: int
    env: dict = field(compare=False, repr=False)


@dataclass(frozen=True)
class TaskSetup:
    """What every case task needs, whichever node it lands on."""

    device: str
    timeout: float
    worker_env: tuple[tuple[str, str], ...]
    run_token: str  # names this run's compile-cache directory on each node
    warm_cache: bool
    nodes: dict  # node_id → {"label", "device_name", "env_key", "threads", "peaks"}


def _import_ray():
    try:
        import ray  # optional: pip install 'convbench[ray]'
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'convbench[ray]'") from None
    if tuple(int(p) for p in ray.__version__.split(".")[:2] if p.isdigit()) < (2, 50):
        raise UsageError(f"--executor ray needs Ray >= 2.50 (label selectors), found {ray.__version__}: "
                         "pip install 'convbench[ray]'")
    return ray


def _this_node() -> dict:
    import ray  # optional, and on a node: this runs inside a Ray task

    ip, node_id = ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()
    # the id's prefix tells apart Ray nodes that share a machine (containers, test clusters)
    return {"node_id": node_id, "label": f"{ip} ({socket.gethostname()}, node {node_id[:8]})", "pid": os.getpid()}


# ---- what runs on the nodes ------------------------------------------------------------------------------------
def probe(device: str, threads: int | None, suite: str, suite_hash: str, argv: list[str],
          dtypes: list[str]) -> dict:
    """On a node: its environment (bench/measure/env.py) and measured peaks, the thread count a case will use there."""
    n = threads or default_threads()
    env = envmod.capture(device, n, suite, suite_hash, argv)
    env["peaks"] = measure_peaks(device, dtypes, n)
    env.update(_this_node())
    env["env_key"] = device_key(env)
    env.pop("git", None)  # the node runs the driver's shipped code: the driver's commit is the run's
    return env


_SUPERVISOR: tuple | None = None  # (WorkerConfig, Supervisor) of this Ray worker process


def _supervisor(setup: TaskSetup, threads: int):
    """This Ray worker's supervised worker, started on first use and kept for the next case (a new one if the
    configuration changed, e.g. Ray gave this process another GPU)."""
    global _SUPERVISOR
    cache = ()
    if not setup.warm_cache:  # cold caches per run and node, as a local run has (bench.commands.runner.compile_caches)
        root = Path(tempfile.gettempdir()) / f"convbench-ray-{setup.run_token}"
        cache = (("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor")), ("TRITON_CACHE_DIR", str(root / "triton")))
    kept = None if setup.warm_cache else warm_up_cache()
    config = WorkerConfig(setup.device, threads, setup.worker_env + inherited_env() + cache,
                          warmup_cache=str(kept) if kept else None)
    if _SUPERVISOR is None or _SUPERVISOR[0] != config:
        if _SUPERVISOR is not None:
            _SUPERVISOR[1].close()
        _SUPERVISOR = (config, Supervisor(config, setup.timeout))
    return _SUPERVISOR[1]


def measure_case(case, impls: list[str], timing, seed: int, setup: TaskSetup, target: str):
    """The Ray task (a generator): ('node', where) first, then ('row', row) per implementation, ('stats', …) last."""
    where = _this_node()
    info = setup.nodes.get(where["node_id"])
    if info is None:  # a node that joined after the probe: it has no recorded environment to name
        yield ("node", where)
        raise RuntimeError(f"node {where['label']} was not probed at the start of the run")
    yield ("node", {**where, **{k: info[k] for k in ("label", "device_name", "env_key")}})
    die_once(case.key, where["label"])
    sup = _supervisor(setup, info["threads"])
    restarts, warmups = sup.restarts, len(sup.warmups)
    placement = {"node": info["label"], "device_name": info["device_name"], "env_key": info["env_key"],
                 "target": target}
    mode = timing_mode(setup.device, info["threads"])
    for outcome in sup.measure(case, impls, timing, seed):
        yield ("row", make_row(case, outcome, mode, sup.threads or info["threads"], info["peaks"], placement))
    yield ("stats", {"restarts": sup.restarts - restarts, "warmups": sup.warmups[warmups:]})


def clean_up(run_token: str) -> None:
    """On a node, after the run: remove this run's compile caches."""
    shutil.rmtree(Path(tempfile.gettempdir()) / f"convbench-ray-{run_token}", ignore_errors=True)


# ---- the driver -------------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    case: object
    impls: list[str]  # the implementations still without a row
    target: str
    nodes: tuple[str, ...]  # node ids it may run on
    tried: tuple[str, ...] = ()
    node: dict | None = None  # where it runs, once it said so
    rows: list[dict] = field(default_factory=list)  # its rows so far (the console line of the case)


class RayExecutor:
    """Connects to the cluster, probes its nodes, then runs cases on them (``run``)."""

    def __init__(self, device: str, address: str | None, threads: int | None, device_names: set[str] | None,
                 each_device: bool, retries: int) -> None:
        self.ray = _import_ray()
        self.device, self.address, self.threads_opt = device, address, threads
        self.device_names, self.each_device, self.retries = device_names, each_device, retries
        self.restarts, self.warmups = 0, {}
        self.gaps: list[float] = []  # seconds a slot stood idle between two cases while cases were queued
        self._ended: dict[str, float] = {}  # node id → when its last case ended
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._connect()
        self.timings["connect_s"] = round(time.perf_counter() - t0, 3)

    def _connect(self) -> None:
        ray = self.ray
        # the nodes run the driver's code: these packages travel with the job
        runtime_env = {"py_modules": [str(BENCH)] + [str(Path(m.__file__).parent) for m in (kernels, reference)],
                       "env_vars": {k: os.environ[k] for k in ("TRITON_INTERPRET", FAULT_ENV) if k in os.environ}}
        kwargs = dict(runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
                      logging_level="ERROR", configure_logging=True)
        try:
            if self.address is None:  # a one-node cluster of this machine, for trying the path out and for tests
                ray.init(address="local", num_cpus=os.cpu_count() or 1, resources={SLOT: 1}, **kwargs)
            else:
                ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"--address {self.address}: cannot connect to a Ray cluster: "
                             f"{str(exc).splitlines()[0][:200]}") from None

    def _slot(self) -> dict:
        return {"num_gpus": 1} if self.device == "cuda" else {"num_cpus": 1, "resources": {SLOT: 1}}

    def probe(self, suite: str, suite_hash: str, argv: list[str], dtypes: list[str]) -> dict[str, Node]:
        """Probe every node that offers a slot for the device; keep those --where device_name=… names."""
        ray = self.ray
        need = "GPU" if self.device == "cuda" else SLOT
        alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(need, 0) >= 1]
        if not alive:
            how = ("a GPU" if self.device == "cuda" else
                   f"the {SLOT} resource (ray start --resources='{{\"{SLOT}\": 1}}')")
            self.close()
            raise UsageError(f"--executor ray --device {self.device}: no node of the cluster offers {how}")
        t0 = time.perf_counter()
        task = ray.remote(max_retries=0)(probe)
        refs = {n["NodeID"]: task.options(**self._slot(), label_selector={NODE_LABEL: f"in({n['NodeID']})"}).remote(
            self.device, self.threads_opt, suite, suite_hash, argv, dtypes) for n in alive}
        nodes, failed = {}, []
        for node_id, ref in refs.items():
            try:
                env = ray.get(ref, timeout=600)
            except Exception as exc:  # noqa: BLE001 — a node that cannot even probe takes no case
                failed.append(f"{node_id[:8]}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            nodes[node_id] = Node(node_id, env["label"], str(env["device_name"]), env["env_key"], env["threads"], env)
        self.timings["probe_s"] = round(time.perf_counter() - t0, 3)
        self.probe_failures = failed
        if self.device_names:
            wanted = {v.lower() for v in self.device_names}
            kept = {k: n for k, n in nodes.items() if any(w in n.device_name.lower() for w in wanted)}
            if not kept:
                self.close()
                present = ", ".join(sorted({n.device_name for n in nodes.values()}))
                raise UsageError(f"--where device_name={','.join(sorted(self.device_names))}: no node of the cluster "
                                 f"has such a device; present: {present}")
            nodes = kept
        if not nodes:
            self.close()
            raise UsageError("--executor ray: no node could be probed: " + "; ".join(failed))
        self.nodes = nodes
        return nodes

    def groups(self) -> dict[str, tuple[str, ...]]:
        """target → the node ids its cases may run on: one group of every node, or one per device kind."""
        if not self.each_device:
            return {"": tuple(self.nodes)}
        kinds: dict[str, list[str]] = {}
        for n in self.nodes.values():
            kinds.setdefault(n.device_name, []).append(n.node_id)
        return {k: tuple(v) for k, v in sorted(kinds.items())}

    def setup(self, timeout: float, warm_cache: bool) -> TaskSetup:
        nodes = {k: {"label": n.label, "device_name": n.device_name, "env_key": n.env_key, "threads": n.threads,
                     "peaks": n.env.get("peaks")} for k, n in self.nodes.items()}
        # CUDA_VISIBLE_DEVICES is Ray's to set on each node, never the driver's
        worker_env = tuple((k, v) for k, v in inherited_env() if k != "CUDA_VISIBLE_DEVICES")
        self.token = uuid.uuid4().hex[:12]
        return TaskSetup(self.device, timeout, worker_env, self.token, warm_cache, nodes)

    def _submit(self, task, att: Attempt, timing, seed: int, setup: TaskSetup):
        allowed = [n for n in att.nodes if n not in att.tried] or list(att.nodes)
        return task.options(**self._slot(), label_selector={NODE_LABEL: f"in({','.join(allowed)})"}).remote(
            att.case, att.impls, timing, seed, setup, att.target)

    def run(self, cases, todo, timing, seed: int, setup: TaskSetup, emit, step, deadline: float | None = None):
        """Submit every case (× target) with implementations still to do (``todo(case, target)``); call
        ``emit(row)`` for each row as it arrives and ``step(case, rows, note)`` when a case is done. Returns
        (interrupted, stopped); on Ctrl-C and at the deadline the outstanding tasks are cancelled."""
        ray = self.ray
        task = ray.remote(max_retries=0, num_returns="streaming")(measure_case)
        pending: dict = {}
        groups = self.groups()
        for case in cases:
            for target, nodes in groups.items():
                impls = todo(case, target)
                if impls:
                    att = Attempt(case, list(impls), target, nodes)
                    pending[self._submit(task, att, timing, seed, setup)] = att
                else:
                    step(case, [], "already done")
        t0 = time.perf_counter()
        interrupted = stopped = False
        try:
            while pending:
                if deadline is not None and time.monotonic() > deadline and not stopped:
                    stopped = True  # no case starts after the deadline: the unstarted ones are left for --resume
                    for gen, att in list(pending.items()):
                        if att.node is None:
                            ray.cancel(gen, force=True)
                            del pending[gen]
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for gen in ready:
                    att = pending.pop(gen)
                    more = self._advance(gen, att, emit)
                    if more is True:
                        pending[gen] = att
                    elif more is False:  # the task ended (well or not): every implementation has its row
                        if att.node:
                            self._ended[att.node["node_id"]] = time.perf_counter()
                        step(att.case, att.rows, f"on {att.node['label'] if att.node else '?'}")
                    else:  # failed, to be retried elsewhere
                        pending[self._submit(task, more, timing, seed, setup)] = more
        except KeyboardInterrupt:
            interrupted = True
            for gen in pending:
                ray.cancel(gen, force=True)
        self.timings["cases_s"] = round(time.perf_counter() - t0, 3)
        if self.gaps:  # per-case overhead of the Ray path: a slot idle between one case's end and the next's start
            self.timings["slot_idle_s"] = {"median": round(statistics.median(self.gaps), 4),
                                           "max": round(max(self.gaps), 4), "n": len(self.gaps)}
        return interrupted, stopped

    def _advance(self, gen, att: Attempt, emit):
        """Take one item of a task's stream. True: more to come; False: finished; an Attempt: retry that."""
        ray = self.ray
        try:
            kind, payload = ray.get(next(gen))
        except StopIteration:
            for name in att.impls:
                self._fail(att, name, "the Ray task returned no result for this implementation", emit)
            return False
        except ray.exceptions.TaskCancelledError:
            return False
        except Exception as exc:  # noqa: BLE001 — the task, its worker or its node died
            where = att.node["label"] if att.node else "an unknown node (before the case started)"
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            others = [n for n in att.nodes if n not in att.tried and (not att.node or n != att.node["node_id"])]
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            others = [n for n in others if n in alive]
            if len(att.tried) < self.retries and att.impls and others:
                print(f"warning: the case {att.case.key} died on {where} ({why}); retrying on another node",
                      file=sys.stderr)
                tried = att.tried + ((att.node["node_id"],) if att.node else ())
                return Attempt(att.case, att.impls, att.target, att.nodes, tried, None, att.rows)
            suffix = "" if not self.retries else (" (no retry left)" if att.tried else " (no other node to retry on)")
            for name in list(att.impls):
                self._fail(att, name, f"the Ray task died on node {where}: {why}{suffix}", emit)
            return False
        if kind == "node":
            att.node = payload
            ended = self._ended.get(payload["node_id"])
            if ended is not None:  # the slot was free from `ended` until this case started on it: Ray's share
                self.gaps.append(time.perf_counter() - ended)
        elif kind == "row":
            if payload["impl"] in att.impls:
                att.impls.remove(payload["impl"])
                att.rows.append(payload)
                emit(payload)
        elif kind == "stats":
            label = att.node["label"] if att.node else "?"
            self.restarts += payload["restarts"]
            self.warmups.setdefault(label, []).extend(payload["warmups"])
        return True

    def _fail(self, att: Attempt, name: str, message: str, emit) -> None:
        info = self.nodes.get(att.node["node_id"]) if att.node else None
        placement = {"node": info.label if info else "", "device_name": info.device_name if info else "",
                     "env_key": info.env_key if info else "", "target": att.target}
        row = make_row(att.case, Outcome(name, "error", message), "", info.threads if info else 0, None, placement)
        att.impls.remove(name)
        att.rows.append(row)
        emit(row)

    def close(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            token = getattr(self, "token", None)
            if token and getattr(self, "nodes", None):
                task = ray.remote(max_retries=0, num_cpus=0)(clean_up)
                refs = [task.options(label_selector={NODE_LABEL: f"in({k})"}).remote(token) for k in self.nodes]
                try:
                    ray.get(refs, timeout=60)
                except Exception:  # noqa: BLE001 — a dead node keeps its caches; nothing of the run is lost
                    pass
            ray.shutdown()


def env_fields(node_envs: list[dict]) -> dict:
    """env.json's top-level fingerprint fields of a Ray run: each field's value when every node agrees, else
    'mixed: a | b' (such a run is compared and reported per environment: bench.runs.schema.env_groups)."""
    out = {}
    for key in ("device_name", "threads", "torch", "cpu_model"):
        values = list(dict.fromkeys(e.get(key) for e in node_envs))
        out[key] = values[0] if len(values) == 1 else "mixed: " + " | ".join(map(str, values))
    first = node_envs[0]
    if len({e.get("env_key") for e in node_envs}) == 1:
        out["peaks"] = first.get("peaks")  # one environment: its peaks are the run's (the first node's measure)
        out["peaks_from"] = first.get("label")
        out["versions"], out["cpu"], out["gpu"] = first.get("versions"), first.get("cpu"), first.get("gpu")
    else:
        out["peaks"] = None  # per node, under nodes
    return out
