"""Which implementations a command measures: ``--impl`` and ``--compile-mode`` against the registry of kernels."""

from __future__ import annotations

import kernels

from ..runs.schema import UsageError
from .select import COMPILE_MODES


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
    twice = sorted({n for n in names or () if names.count(n) > 1})
    if twice:  # the worker would measure it once and report the second as "no result" errors
        raise UsageError(f"--impl {', '.join(twice)} is given twice")
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


def not_runnable(names: list[str], device: str) -> dict[str, str]:
    """The implementations among ``names`` that are not timed on ``device`` at all, each with why: those that
    cannot run there (rows ``unsupported``) and those only checked against the oracle there (rows ``skipped``,
    e.g. Triton under its CPU interpreter). The console names them once instead of on every case."""
    reasons = {}
    for name in names:
        impl = kernels.get(name)
        why = impl.unavailable_reason(device)
        only = None if why else impl.correctness_only(device)
        if why or only:
            reasons[name] = why or f"checked against the oracle, not timed: {only}"
    return reasons


def load_warnings() -> list[str]:
    """One warning per implementation module that could not be imported (a plugin's entry point, a
    CONVBENCH_PLUGINS module, a built-in): a run without it says so at its start and in env.json, instead of
    leaving the user to wonder where their implementation went."""
    return [f"implementation {name} was not loaded and is not in this run: {err}"
            for name, err in kernels.load_errors().items()]
