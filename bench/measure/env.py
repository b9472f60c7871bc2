"""env.json: everything a reader needs to trust (or distrust) a run and to know whether two runs compare.

Versions (python, torch, triton, CUDA, cuDNN), device and CPU model, the thread count, GPU clocks, driver, power
and temperature (nvidia-ml-py) at start and end, git commit and dirty flag, the suite hash, start/end time, and
warnings: debug builds, interpreters, a loaded machine, throttling, noisy timings.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..runs.schema import FINGERPRINT_KEYS, UsageError, fingerprint, utc_now  # noqa: F401 — re-exported
from . import callgrind

ROOT = Path(__file__).resolve().parents[2]


def cuda_available() -> bool:
    """Whether this machine has a CUDA device (asked without creating a CUDA context)."""
    return torch.cuda.is_available()


def require_device(device: str) -> None:
    """The one check of ``--device`` every command makes: UsageError (exit 2) when it names no device here."""
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not cuda_available():
        raise UsageError("--device cuda: no CUDA device is available on this machine")


def require_counts(device: str) -> None:
    """The one check of ``--metric instructions`` every command makes: UsageError (exit 2) when it cannot run here."""
    why = callgrind.unavailable_reason() or (None if device == "cpu" else "counts CPU instructions: use --device cpu")
    if why:
        raise UsageError(f"--metric instructions: {why}")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def require_threads(threads: int | None) -> None:
    """The check of ``--threads`` on this machine: UsageError (exit 2) above its cores — more threads only measure
    oversubscription, and a huge count makes the OpenMP runtime die allocating them."""
    cores = usable_cores()
    if threads is not None and threads > cores:
        raise UsageError(f"--threads {threads} is more than the {cores} core(s) this process may use")


def default_threads() -> int:
    """All cores but one (at least one): the last core absorbs the OS, the supervising process and noisy
    neighbours, so an op's threads do not wait on a descheduled straggler. On a 2-vCPU VM this made repeated quick
    runs agree within 5% for 59% of rows against 27% with both threads (median deviation 3.5% vs 13%)."""
    return max(1, min(torch.get_num_threads(), usable_cores() - 1))


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        if not commit:
            return {"commit": None}
        return {"commit": commit, "dirty": bool(run("status", "--porcelain", "--untracked-files=no")),
                "branch": run("rev-parse", "--abbrev-ref", "HEAD"), "time": run("show", "-s", "--format=%cI")}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def _cpu() -> dict:
    model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model, "logical_cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "mkldnn": torch.backends.mkldnn.is_available(), "mkl": torch.backends.mkl.is_available(),
            "capability": torch.backends.cpu.get_cpu_capability()}


def nvml_uuid(props) -> str | None:
    """The device's UUID as NVML spells it ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") from torch's device
    properties (``uuid``: a ``torch._C._CUuuid`` whose ``bytes`` are the 16 raw bytes and whose str() is the
    8-4-4-4-12 hex form without a prefix); None where torch gives none (an old torch, an all-zero UUID)."""
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    raw = getattr(uuid, "bytes", None)
    if raw is not None and len(raw) == 16:
        h = bytes(raw).hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    else:
        text = str(uuid).strip()
    if not text.strip("-0") or text.strip("-0").upper() in ("GPU", "MIG"):
        return None
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _nvml_handle(nv, props):
    """NVML's handle of the device torch runs on, and the UUID it was found by: by the device's UUID, which holds
    whatever CUDA_VISIBLE_DEVICES says (an index, a list, or UUIDs as Ray and other schedulers set it) — tried as a
    MIG instance's ("MIG-…", whose clocks and power are its GPU's) when no GPU has it; by the index in
    CUDA_VISIBLE_DEVICES only where torch gives no UUID."""
    def by_uuid(text: str):
        try:
            return nv.nvmlDeviceGetHandleByUUID(text)
        except TypeError:  # an old pynvml that takes bytes only
            return nv.nvmlDeviceGetHandleByUUID(text.encode())

    uuid = nvml_uuid(props)
    if uuid is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        return nv.nvmlDeviceGetHandleByIndex(int(visible)), None
    try:
        return by_uuid(uuid), uuid
    except Exception:
        if not uuid.startswith("GPU-"):
            raise
        mig = f"MIG-{uuid[4:]}"
        try:
            h = by_uuid(mig)
        except Exception:  # noqa: BLE001 — not a MIG instance either: NVML's error about the GPU UUID
            pass
        else:
            parent = getattr(nv, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", None)
            return (parent(h) if parent is not None else h), mig
        raise


def gpu_telemetry() -> dict | None:
    """Name, driver, clocks, power, temperature and throttle reasons of the current GPU via NVML; None without a
    GPU. The NVML device is found by the UUID torch reports for it (``nvml_uuid``)."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info = {"name": torch.cuda.get_device_name(index),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
            "memory_gib": round(props.total_memory / 2**30, 1)}
    try:
        import pynvml as nv  # optional: nvidia-ml-py, read on a GPU only

        nv.nvmlInit()
        h, uuid = _nvml_handle(nv, props)
        if uuid is not None:
            info["uuid"] = uuid
        info.update(
            driver=nv.nvmlSystemGetDriverVersion(),
            sm_clock_mhz=nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            sm_clock_max_mhz=nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
            mem_clock_mhz=nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
            power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000, power_limit_w=nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
            temperature_c=nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            utilization_pct=nv.nvmlDeviceGetUtilizationRates(h).gpu,
            throttle_reasons=_throttle_names(nv, nv.nvmlDeviceGetCurrentClocksEventReasons(h)
                                             if hasattr(nv, "nvmlDeviceGetCurrentClocksEventReasons")
                                             else nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)),
        )
    except Exception as exc:  # noqa: BLE001 — telemetry is best effort; say why it is missing
        info["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _throttle_names(nv, mask: int) -> list[str]:
    names = []
    for attr in dir(nv):
        reason = attr.startswith(("nvmlClocksThrottleReason", "nvmlClocksEventReason"))
        if reason and not attr.endswith(("None", "All")):
            bit = getattr(nv, attr)
            if isinstance(bit, int) and bit and mask & bit:
                names.append(attr.split("Reason", 1)[1])
    return sorted(set(names) - {"GpuIdle", "ApplicationsClocksSetting"})


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid → (parent pid, command, CPU ticks used so far) for every process, from /proc (Linux)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended between listing and reading
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        table[int(stat.parent.name)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    return table


def own_processes(table: dict[int, tuple[int, str, int]], me: int) -> set[int]:
    """This process, its ancestors (the shell, nox) and its descendants (the worker, compile workers, a ps) —
    not its ancestors' other children, which are neighbours."""
    ancestors, pid = set(), me
    while pid in table and table[pid][0] > 0 and table[pid][0] not in ancestors:
        pid = table[pid][0]
        ancestors.add(pid)
    mine, grew = {me}, True
    while grew:
        kids = {p for p, (parent, _, _) in table.items() if parent in mine and p not in mine}
        mine |= kids
        grew = bool(kids)
    return ancestors | mine


def busy_processes(limit: int = 5, window_s: float = 0.5, threshold: float = 20.0) -> list[str]:
    """Other processes using CPU now, heaviest first — a loaded machine makes noisy timings. CPU share is measured
    over ``window_s`` from /proc (not ps's lifetime average, which calls every short-lived process busy), and the
    run's own process tree is left out: it is the benchmark, not a neighbour. Empty where /proc is missing."""
    if not Path("/proc/self/stat").exists():
        return []
    before = _proc_table()
    time.sleep(window_s)
    after = _proc_table()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = own_processes(after, os.getpid())
    busy = []
    for pid, (_, comm, ticks) in after.items():
        if pid in own or pid not in before:
            continue
        pct = (ticks - before[pid][2]) / hz / window_s * 100
        if pct >= threshold:
            busy.append((pct, f"{comm} (pid {pid}, {pct:.0f}% CPU)"))
    return [text for _, text in sorted(busy, reverse=True)[:limit]]


def capture(device: str, threads: int, suite: str, suite_hash: str, argv: list[str]) -> dict:
    """The environment at the start of a run, with the warnings that apply already."""
    cpu = _cpu()
    env = {
        "start": utc_now(), "end": None, "host": socket.gethostname(), "system": platform.system(),
        "machine": platform.machine(), "device": device,
        # (a Ray driver of a GPU run may have no GPU: its nodes have, and name theirs)
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available()
        else cpu["model"],
        "threads": threads, "suite": suite, "suite_hash": suite_hash, "argv": argv,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
                     "numpy": _version("numpy"), "convbench": _version("convbench")},
        "torch": torch.__version__, "cpu_model": cpu["model"], "cpu": cpu,
        "gpu": gpu_telemetry() if device == "cuda" else None, "git": _git(),
        "timer": "cuda-events" if device == "cuda" else "perf_counter",
        "settings": {"TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                     "CUDA_LAUNCH_BLOCKING": os.environ.get("CUDA_LAUNCH_BLOCKING"),
                     "cudnn_benchmark": device == "cuda"},
        "warnings": [],
    }
    env["warnings"] += start_warnings(env)
    return env


def start_warnings(env: dict) -> list[str]:
    warn = []
    if torch.version.debug:
        warn.append("torch is a debug build: timings are not representative")
    if env["settings"]["CUDA_LAUNCH_BLOCKING"] == "1":
        warn.append("CUDA_LAUNCH_BLOCKING=1 serialises every launch: GPU timings are not representative")
    if env["settings"]["TRITON_INTERPRET"] == "1":
        warn.append("TRITON_INTERPRET=1: Triton kernels run in the CPU interpreter (checked, never timed)")
    if sys.flags.dev_mode or sys.gettrace() is not None:
        warn.append("python runs in dev mode or under a tracer/debugger: timings are inflated")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        cores = os.cpu_count() or 1
        if load > 0.5 * cores:
            warn.append(f"the machine is loaded before the run starts (1-min load {load:.1f} on {cores} cores)")
    busy = busy_processes()
    if busy:
        warn.append("other processes are using CPU: " + "; ".join(busy))
    gpu = env.get("gpu") or {}
    if gpu.get("throttle_reasons"):
        warn.append(f"GPU clocks are throttled at start: {', '.join(gpu['throttle_reasons'])}")
    return warn


def finish(env: dict, rows: list[dict]) -> dict:
    """Close the record: end time, end-of-run telemetry, and warnings about what the run saw."""
    env["end"] = utc_now()
    if env["device"] == "cuda" and env.get("executor") != "ray":  # a Ray run's GPUs are on its nodes, not here
        env["gpu_end"] = gpu_telemetry()
        reasons = (env["gpu_end"] or {}).get("throttle_reasons")
        if reasons:
            env["warnings"].append(f"GPU clocks were throttled at the end of the run: {', '.join(reasons)}")
    ok = [r for r in rows if r["status"] == "ok"]
    noisy = [r for r in ok if r.get("warning")]
    if ok and len(noisy) > 0.1 * len(ok):
        env["warnings"].append(f"{len(noisy)} of {len(ok)} timed rows are noisy (IQR > 10% of the median): "
                               "compare runs with care, or re-run on a quieter machine")
    busy = busy_processes()
    if busy:
        env["warnings"].append("other processes were using CPU at the end: " + "; ".join(busy))
    return env
