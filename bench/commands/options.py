"""The command-line options several commands share: argparse types that refuse with a one-line reason (exit 2),
and the case and implementation filters of ``run`` and ``ab``."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..measure.select import COMPILE_MODES
from ..measure.suites import SUITE_NAMES
from ..runs.schema import CASE_OPS, UsageError

DTYPES = ["float32", "tf32", "float16", "bfloat16", "float64"]
LAYOUTS = ["nchw", "channels_last"]
DEVICES = ["cpu", "cuda"]


def filters(p, default_suite: str) -> None:
    """The case and implementation filters that run and ab share."""
    p.add_argument("--suite", choices=sorted(SUITE_NAMES), help=f"which cases (default: {default_suite})")
    p.set_defaults(default_suite=default_suite)  # None above, so that suite() sees a --suite given beside --model
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--impl", nargs="+", metavar="NAME",
                   help="implementations to run (default: all registered except opt-in variants such as "
                        "compile-max-autotune)")
    p.add_argument("--compile-mode", nargs="+", metavar="MODE",
                   choices=COMPILE_MODES,
                   help="torch.compile modes to run, each its own implementation (compile, compile-max-autotune, "
                        "compile-max-autotune-no-cudagraphs); replaces the compile variants of the selection")
    p.add_argument("--op", nargs="+", choices=CASE_OPS, help="operations to run (default: all in the suite)")
    p.add_argument("--dtype", nargs="+", choices=DTYPES)
    p.add_argument("--layout", nargs="+", choices=LAYOUTS)
    p.add_argument("--where", action="append", metavar="AXIS=V[,V]",
                   help="keep cases whose results column AXIS (batch, in_channels, out_channels, height, width, "
                        "kernel, stride, padding, dilation, groups) takes one of the values; repeatable. "
                        "device_name=TEXT[,TEXT] picks machines instead: those whose device name contains a TEXT "
                        "(case-insensitive; with --executor ray, the nodes that take cases)")
    m = p.add_argument_group("real networks", "the distinct Conv2d/MaxPool2d/AvgPool2d layers of torchvision models "
                                              "(no weights) instead of a suite's cases, and each model's training step")
    m.add_argument("--model", type=model_list, metavar="NAME[,NAME…]",
                   help="torchvision model names, e.g. resnet18,mobilenet_v3_small (python -m bench list --models)")
    m.add_argument("--image-size", type=count("--image-size"), default=224, metavar="N",
                   help="input images N×N (default 224)")
    m.add_argument("--batch", type=count("--batch"), default=1, metavar="N", help="images per call (default 1)")
    p.add_argument("--shard", metavar="K/N", help="run only the K-th of N deterministic parts of the suite")
    p.add_argument("--threads", type=count("--threads"),
                   help="intra-op CPU threads (default: all cores but one; recorded, and runs with different counts "
                        "are never compared)")
    p.add_argument("--seed", type=count("--seed", 0), default=0, help="input data seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-case lines")


def suite(args) -> str:
    """The suite of ``run``/``ab``: --suite, else the command's default — refused beside --model, whose layers
    replace a suite's cases (the suite would be ignored without a word)."""
    if args.model and args.suite:
        raise UsageError(f"--suite {args.suite} and --model both choose the cases: give one of them")
    return args.suite or args.default_suite


def out_dir(flag: str = "--out"):
    """An argparse type: a directory to write into — refused (exit 2, before anything is created) when it names an
    existing file, lies under one, or lies in a folder this user cannot write."""
    def parse(text: str) -> Path:
        path = Path(text)
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{flag} {text} is an existing file, not a directory")
        _check_writable(flag, text, path)
        return path
    return parse


def out_file(flag: str, parents: bool = False):
    """An argparse type: a file to write (replaced if it exists) — refused (exit 2) when it names a directory, lies
    under a file or in a folder this user cannot write, or (unless the command creates ``parents``) in a folder
    that does not exist."""
    def parse(text: str) -> Path:
        path = Path(text)
        _check_writable(flag, text, path.parent)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{flag} {text} is a directory, not a file")
        if not parents and not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"{flag} {text}: the folder {path.parent} does not exist")
        return path
    return parse


def _check_writable(flag: str, text: str, path: Path) -> None:
    """Refuse what mkdir or open would fail on only after the work: an empty path (it would mean the current
    folder), a path under an existing file, a nearest existing folder this user cannot write."""
    if not text:
        raise argparse.ArgumentTypeError(f"{flag} needs a path, got an empty one")
    existing = next(p for p in (path, *path.parents) if p.exists())  # '.' or '/' at the latest
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{flag} {text}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{flag} {text}: {existing} is not writable")


def model_list(text: str) -> tuple[str, ...]:
    """``--model a,b`` → ('a', 'b'); which names exist is checked when the cases are built (exit 2 there)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("--model expects NAME[,NAME…], got nothing")
    return names


def positive(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects a number, got {text!r}") from None
        if not 0 < v < math.inf:  # nan and inf too: a budget or timeout that never ends is no limit
            raise argparse.ArgumentTypeError(f"{name} must be positive and finite, got {text!r}")
        return v
    return parse


def count(name: str, minimum: int = 1):
    """An argparse type: an integer of at least ``minimum``, refused with a one-line reason (exit 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {text!r}")
        return v
    return parse
