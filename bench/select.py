"""Which cases and implementations a command measures: suite, filters (--op/--dtype/--layout/--where), shards.

Shared by ``run``, ``ab`` and ``profile``; imports nothing of the commands themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import kernels

from .cases import Case
from .schema import UsageError
from .suites import SUITES

if TYPE_CHECKING:
    from .runner import RunOptions

MACHINE_AXES = ("device_name",)
AXIS_ALIASES = {"kernel": "kernel_h", "n": "batch", "c": "in_channels", "k": "out_channels", "h": "height"}


def parse_where(items: list[str]) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--where expects AXIS=VALUE[,VALUE...], got {item!r}")
        axis, values = item.split("=", 1)
        axis = AXIS_ALIASES.get(axis.strip().lower(), axis.strip().lower())
        where.setdefault(axis, set()).update(v.strip() for v in values.split(",") if v.strip())
    return where


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects K/N with integers, got {text!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise UsageError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def select_cases(opts: RunOptions) -> list[Case]:
    """The suite's cases on the device, filtered by op / dtype / layout / --where, then this shard's part."""
    if opts.suite not in SUITES:
        raise UsageError(f"--suite must be one of {', '.join(SUITES)}, got {opts.suite!r}")
    cases = SUITES[opts.suite].cases(opts.device)
    if opts.ops:
        cases = [c for c in cases if c.op in opts.ops]
    if opts.dtypes:
        cases = [c for c in cases if c.dtype in opts.dtypes]
    if opts.layouts:
        cases = [c for c in cases if c.layout in opts.layouts]
    for axis, values in opts.where.items():
        if axis in MACHINE_AXES:  # which machine runs the cases (bench/cluster.py), not which cases
            continue
        known = set(cases[0].columns()) if cases else set()
        if cases and axis not in known:
            raise UsageError(f"--where axis {axis!r} is not one of {', '.join(sorted(known))}")
        cases = [c for c in cases if str(c.columns()[axis]) in values]
    if opts.shard:
        k, n = opts.shard
        cases = [c for i, c in enumerate(cases) if i % n == k - 1]
    return cases


COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")


def compile_impl(mode: str) -> str:
    """The registered implementation of a torch.compile mode: 'compile' for default, 'compile-<mode>' else."""
    return "compile" if mode == "default" else f"compile-{mode}"


def select_impls(names: list[str] | None, compile_modes: list[str] | None = None) -> list[str]:
    """The implementations to run: ``names`` (default: every registered one that is not opt-in), with the
    torch.compile variants replaced by exactly those of ``compile_modes`` when it is given."""
    known = kernels.names()
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise UsageError(f"--impl {', '.join(unknown)} is not registered; registered: {', '.join(known)}"
                         + "".join(f" ({n}: {e})" for n, e in kernels.load_errors().items()))
    chosen = list(names) if names else list(kernels.default_names())
    if compile_modes:
        bad = [m for m in compile_modes if m not in COMPILE_MODES or compile_impl(m) not in known]
        if bad:
            raise UsageError(f"--compile-mode {', '.join(bad)} is not one of {', '.join(COMPILE_MODES)}")
        variants = {compile_impl(m) for m in COMPILE_MODES}
        wanted = {compile_impl(m) for m in compile_modes}
        chosen = [n for n in chosen if n not in variants] + [n for n in known if n in wanted]
        chosen = [n for n in known if n in chosen] + [n for n in chosen if n not in known]
    return chosen
