"""Faults injected on purpose, to rehearse the GPU window's failure paths on a machine without a GPU.

``CONVBENCH_FAULT=KIND:WHERE[,KIND:WHERE…]`` — KIND is ``hang`` (the process stops answering: sleeps, ignoring
SIGTERM, as a process stuck in a driver call does) or ``crash`` (the process dies with SIGSEGV, as a kernel that
faults the CUDA context takes its process down). WHERE names the place: a window phase (``env``, ``checks``,
``configs``, ``report``), ``suite`` (the first suite phase), ``pytest`` and ``precompile`` (inside the checks phase's
subprocesses), ``worker`` (the benchmark worker, at its first case). Each fault fires once per window when
``CONVBENCH_FAULT_STATE`` names a directory (the window sets it), so the process that replaces a crashed one runs
clean. Nothing here runs unless the variable is set.

``CONVBENCH_RAY_FAULT=SUBSTRING@MARKER`` (``die_once``): the Ray task of the first case whose key contains SUBSTRING
kills its worker process, as a node that dies mid-case; the marker file records that it happened, so a retry
survives (tests/test_cluster.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KINDS = ("hang", "crash")
PLACES = ("env", "checks", "configs", "report", "suite", "pytest", "precompile", "worker")


def parse(text: str | None) -> list[tuple[str, str]]:
    """[(kind, where), …] of a CONVBENCH_FAULT value; ValueError naming the bad part."""
    faults = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        kind, _, where = part.partition(":")
        if kind not in KINDS or where not in PLACES:
            raise ValueError(f"CONVBENCH_FAULT: {part!r} is not KIND:WHERE with KIND in {', '.join(KINDS)} and "
                             f"WHERE in {', '.join(PLACES)}")
        faults.append((kind, where))
    return faults


def _claim(kind: str, where: str) -> bool:
    """True the first time this fault fires in the window (always, without a state directory)."""
    state = os.environ.get("CONVBENCH_FAULT_STATE")
    if not state:
        return True
    try:
        fd = os.open(Path(state) / f"{kind}-{where}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def inject(where: str) -> None:
    """Hang or crash here if CONVBENCH_FAULT asks for it (once per window)."""
    for kind, place in parse(os.environ.get("CONVBENCH_FAULT")):
        if place != where or not _claim(kind, where):
            continue
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            time.sleep(3600)


#: the Ray executor's fault: ``SUBSTRING@MARKER`` (see the module's docstring)
RAY_FAULT_ENV = "CONVBENCH_RAY_FAULT"


def die_once(case_key: str, where: str) -> None:
    """Exit at once, with no clean-up and no reply, if CONVBENCH_RAY_FAULT names this case and has not fired yet
    (its marker file, which records ``where``, does not exist)."""
    spec = os.environ.get(RAY_FAULT_ENV)
    if not spec or "@" not in spec:
        return
    text, marker = spec.rsplit("@", 1)
    if text in case_key and not os.path.exists(marker):
        Path(marker).write_text(where + "\n")
        os._exit(1)  # as a node or worker that dies: no clean-up, no reply
