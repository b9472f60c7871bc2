"""The machine's attainable peaks, measured at the start of a run and stored in env.json (``peaks``).

- compute: a large square GEMM (``torch.mm``) in each dtype the run times, with the run's thread count:
  FLOP/s = 2·n³ / best time. On a GPU fp32 is measured with TF32 off, ``tf32`` with it on.
- bandwidth: a large copy (bytes = read + write = 2·size / time) and a read-only reduction (``sum``: size /
  time), on buffers far larger than the last-level cache.

Each row then gets ``pct_peak``: its achieved rate over the roof that bounds it — FLOP/s over the GEMM peak when its
arithmetic intensity (the problem's FLOPs / compulsory bytes) is at or above the ridge point (peak FLOP/s over copy
bandwidth), else bytes/s over the copy bandwidth. The best of a few repetitions is kept: a peak is what the
machine can reach, and a noisy neighbour only ever slows a repetition down.
"""

from __future__ import annotations

import time

import torch

GEMM_N = {"cpu": 1024, "cuda": 8192}
COPY_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}
REPEATS = 5


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_s(fn, device: str, repeats: int = REPEATS) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_flops(device: str, dtype: str) -> float:
    """Attainable FLOP/s of a large matrix product in ``dtype`` ('tf32' = float32 with TF32 math)."""
    n = GEMM_N[device] // (2 if device == "cpu" and dtype in ("float16", "bfloat16") else 1)  # slow on most CPUs
    dt = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        return 2 * n ** 3 / _best_s(lambda: torch.mm(a, b), device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def bandwidth(device: str) -> dict[str, float]:
    """Bytes/s of a large copy (read + write) and of a read-only sum."""
    size = COPY_BYTES[device]
    src = torch.ones(size // 4, device=device)
    dst = torch.empty_like(src)
    copy = 2 * size / _best_s(lambda: dst.copy_(src), device)
    read = size / _best_s(lambda: src.sum(), device)
    return {"copy_bytes_per_s": copy, "read_bytes_per_s": read}


def measure(device: str, dtypes: list[str], threads: int | None = None) -> dict:
    """env.json's ``peaks``: {'gemm_flops': {dtype: FLOP/s}, 'copy_bytes_per_s', 'read_bytes_per_s', 'how'}."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        peaks = {"gemm_flops": {}, **bandwidth(device)}
        for dtype in dict.fromkeys(dtypes):
            try:
                peaks["gemm_flops"][dtype] = gemm_flops(device, dtype)
            except (RuntimeError, TypeError) as exc:  # a dtype this device has no GEMM for: say so, no peak
                peaks.setdefault("errors", {})[dtype] = str(exc)[:200]
    finally:
        torch.set_num_threads(saved)
    peaks["how"] = (f"best of {REPEATS}: torch.mm {GEMM_N[device]}² per dtype; copy_ and sum of "
                    f"{COPY_BYTES[device] >> 20} MiB; threads={threads or saved}")
    return peaks


def pct_peak(flops: float, nbytes: float, seconds: float, dtype: str, peaks: dict | None) -> float | None:
    """Share (in %) of the roof that bounds a row: compute when flops/bytes ≥ the ridge point, else copy bandwidth.
    None without peaks for the row's dtype or without a time."""
    if not peaks or not seconds or seconds <= 0:
        return None
    flop_peak = (peaks.get("gemm_flops") or {}).get(dtype)
    bw = peaks.get("copy_bytes_per_s")
    if not flop_peak or not bw:
        return None
    if nbytes and flops / nbytes < flop_peak / bw:
        return 100 * nbytes / seconds / bw
    return 100 * flops / seconds / flop_peak
