"""A run directory's run.log: what torch, Inductor, Triton, the C++ libraries and the compilers they start print
about themselves (``No CUDA runtime is found``, ``Profiler record function … will be ignored``, compiler output)
is appended there, so that the console keeps the run's own lines. Torch-free.

The worker process (bench/measure/worker.py) sends its whole stdout and stderr there, at the file-descriptor level,
which also catches C++ warnings and subprocesses; the main process sends torch's loggers and Python warnings
there, each distinct message once. ``TORCH_LOGS`` set by a user who debugs torch leaves torch's loggers alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

NAME = "run.log"


def process_output_to(path: Path | str) -> None:
    """Append this process's stdout and stderr (descriptors 1 and 2: Python, C++ and child processes) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"--- worker {os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


@contextlib.contextmanager
def stderr_to(path: Path | str):
    """Within the block, this process's descriptor 2 — C++ libraries (Kineto's profiler lines), subprocesses, and
    Python's sys.stderr — is appended to ``path``; yields a text stream on the console's stderr for the lines that
    must still reach it. For commands that do their work in-process (bench profile)."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    console = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8")
    try:
        yield console
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


class _Once(logging.Filter):
    """Each distinct (logger, level, message) once: torch repeats some warnings per graph or per call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def library_logs_to(path: Path | str) -> logging.Handler:
    """In the main process: torch's loggers (each has its own stderr handler) and Python warnings go to ``path``,
    each distinct message once. Returns the handler (``restore`` puts the console back)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s main %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Once())
    handler.moved = []  # (logger, its own handlers) to put back
    loggers = [logging.getLogger("py.warnings")]
    if not os.environ.get("TORCH_LOGS"):
        loggers += [lg for name, lg in list(logging.root.manager.loggerDict.items())
                    if isinstance(lg, logging.Logger) and (name == "torch" or name.startswith("torch."))]
    for lg in loggers:
        own = [h for h in lg.handlers if not isinstance(h, logging.FileHandler)]  # the console ones (torch's own
        # _StderrHandler is no StreamHandler); a file that TORCH_LOGS_OUT names keeps its records
        if lg.name != "py.warnings" and not own:
            continue  # it prints nothing itself (it reaches "torch", or is one of torch's switched-off artifacts)
        for h in own:
            lg.removeHandler(h)
        handler.moved.append((lg, own, lg.propagate))
        lg.addHandler(handler)
        lg.propagate = False
    logging.captureWarnings(True)
    return handler


def restore(handler: logging.Handler) -> None:
    """Undo ``library_logs_to`` (a run inside a longer process, e.g. the GPU window or a test)."""
    logging.captureWarnings(False)
    for lg, own, propagate in handler.moved:
        lg.removeHandler(handler)
        for h in own:
            lg.addHandler(h)
        lg.propagate = propagate
    handler.close()


def mention(path: Path | str, what: str = "torch and compiler messages") -> str | None:
    """The one line a command ends with when ``path`` holds messages (``3 lines of … in …``); None when empty."""
    n = lines(path)
    return f"{n} line{'s' if n != 1 else ''} of {what} in {path}" if n else None


def lines(path: Path | str) -> int:
    """How many lines of messages ``path`` holds (the worker's start markers not counted)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip() and not line.startswith("--- worker "))
    except FileNotFoundError:
        return 0
