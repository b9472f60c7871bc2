"""Helpers more than one implementation needs, each defined once: accumulator dtype, memory-format classification,
batch slicing under a size budget. Implementation-private helpers stay in their own package."""

from __future__ import annotations

import contextlib

import torch


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 partial sums are kept in fp32 (as cuDNN does); fp32/fp64 keep their own precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format torch gives a conv/pool output for input ``x``: channels_last when x is channels_last
    (and not also plain contiguous, e.g. a 1×1 image), else contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def is_nchw(x: torch.Tensor) -> bool:
    """Whether ``x`` is (to be treated as) NCHW rather than channels_last — the layout its output keeps."""
    return output_memory_format(x) == torch.contiguous_format


def batch_slices(N: int, per_image: int, budget: int) -> list[slice]:
    """Consecutive batch slices of at most ``budget // per_image`` images (at least one image each), covering
    0..N (none for N = 0)."""
    step = max(1, budget // max(1, per_image))
    return [slice(i, min(N, i + step)) for i in range(0, N, step)]


def profiled(name: str):
    """A torch.profiler region named ``name`` around a call the profiler cannot see (a ctypes call into native
    code), so that a profile attributes its time instead of showing a gap; nothing while no profiler runs."""
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
