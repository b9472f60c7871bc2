"""The Python cost of one ``triton`` call with its GPU launches stubbed out (``bench host-overhead`` prints it).

On a GPU a small conv's kernels run for 5–25 µs, so whatever the host spends per call before the launch (argument
checks, autograd, output allocation, autotuner lookup, grid and stride arithmetic) is either hidden behind the
previous kernel or it *is* the run time. This measures that host cost on any machine, CPU included: every Triton
kernel of ``kernels.triton`` is replaced by a stub whose launch does nothing (and the autotuner's benchmark by a
constant, so its per-call key lookup still runs as on a GPU), then the host functions are called back to back on
``meta`` tensors (allocation as cheap as the GPU's caching allocator; a CPU malloc would dominate instead).

Reported per case: forward (the public ``conv2d`` under no_grad: checks, plan, allocation, launch), dgrad and
wgrad (their host functions: what autograd's backward calls), in µs per call, median of ``--repeats`` timed blocks
of ``--calls`` calls each, with the spread. Targets (issue 12): forward ≤ 15 µs, dgrad/wgrad ≤ 20 µs per call.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time

TARGETS_US = {"forward": 15.0, "dgrad": 20.0, "wgrad": 20.0}

#: ResNet-50 layers at batch 32 (the sizes whose GPU kernels take 5–25 µs): stem, 3×3, 1×1 reduce, strided, late
CASES = (
    ("stem 7x7 s2", (32, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    ("3x3 64", (32, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    ("1x1 256->64", (32, 256, 56, 56), (64, 256, 1, 1), 1, 0),
    ("3x3 128 s2", (32, 128, 56, 56), (128, 128, 3, 3), 2, 1),
    ("3x3 512 7x7", (32, 512, 7, 7), (512, 512, 3, 3), 1, 1),
)


@contextlib.contextmanager
def stubbed_launches():
    """Every Triton kernel of kernels.triton launches nothing; the autotuner 'benchmarks' every config as 1 ms
    (so it picks the first surviving one and caches it under its key, as on a GPU)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from kernels.triton import conv, pool

    saved_bench = Autotuner._bench
    Autotuner._bench = lambda self, *args, config, **meta: [1.0, 1.0, 1.0]
    stubbed = []
    for module in (conv, pool):
        for obj in vars(module).values():
            fn = obj.fn if isinstance(obj, Autotuner) else obj
            if isinstance(fn, JITFunction) and "run" not in vars(fn):
                fn.run = lambda *args, **kwargs: None
                stubbed.append(fn)
    try:
        yield
    finally:
        Autotuner._bench = saved_bench
        for fn in stubbed:
            del fn.run


def _per_call_us(fn, calls: int, repeats: int) -> list[float]:
    for _ in range(max(10, calls // 10)):
        fn()
    blocks = []
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            blocks.append((time.perf_counter() - t0) * 1e6 / calls)
    finally:
        gc.enable()
    return blocks


def measure(calls: int = 2000, repeats: int = 7) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("host-overhead measures the compiled-mode host path: unset TRITON_INTERPRET")
    import torch

    import kernels
    from kernels.triton import Triton, conv
    from reference import conv2d_problem

    impl = kernels.get("triton")
    rows = []
    with stubbed_launches(), contextlib.ExitStack() as stack:
        # the host path must run even on a machine where the kernels cannot (no GPU): availability is not measured
        stack.callback(setattr, Triton, "unavailable_reason", Triton.unavailable_reason)
        Triton.unavailable_reason = lambda self, device: None
        for name, xs, ws, stride, pad in CASES:
            # meta tensors: no launch reads them, and their allocation costs what the GPU's caching allocator does
            # (a CPU malloc of a 100 MB output would cost more than everything measured here)
            x, w, b = (torch.empty(s, device="meta") for s in (xs, ws, ws[:1]))
            p = conv2d_problem(x, w, b, stride, pad, 1, 1)
            dy = torch.empty((xs[0], ws[0], p.P, p.Q), device="meta")

            parts = {  # no operand requires grad: the forward takes the inference path, as under no_grad
                "forward": lambda x=x, w=w, b=b, s=stride, pad=pad: impl.conv2d(x, w, b, s, pad),
                "dgrad": lambda x=x, w=w, p=p, dy=dy: conv.conv2d_dgrad(dy, w, p, x),
                "wgrad": lambda x=x, w=w, b=b, p=p, dy=dy: conv.conv2d_wgrad(dy, x, p, w.dtype, b.dtype)}
            for part, fn in parts.items():
                blocks = _per_call_us(fn, calls, repeats)
                med = statistics.median(blocks)
                rows.append({"case": name, "part": part, "median_us": round(med, 2),
                             "min_us": round(min(blocks), 2), "max_us": round(max(blocks), 2),
                             "target_us": TARGETS_US[part], "meets_target": med <= TARGETS_US[part]})
    return rows
