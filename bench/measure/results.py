"""Results rows: what one (case, implementation) outcome becomes in a run directory (the files:
bench/runs/schema.py)."""

from __future__ import annotations

import json
import math

from ..runs.stats import summarize
from .cases import Case
from .measure import Outcome
from .peaks import pct_peak
from .timing import WALL_TIMING_MODE, wall_timed


def _num(v: float | None, digits: int = 6):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return float(f"{v:.{digits}g}")


def timing_mode(device: str, threads: int) -> str:
    """The rows' ``timing_mode`` (before ``loops=``): how a sample is taken on this device."""
    return "cuda-events,l2-flush,sleep-prefix" if device == "cuda" else f"perf_counter,threads={threads}"


def make_row(case: Case, outcome: Outcome, timing_mode: str, threads: int, peaks: dict | None = None,
             placement: dict | None = None) -> dict:
    """A results row: the contract columns, then the extras. Throughput comes from the problem's formulas:
    gflops = flops / median time, gbps = compulsory bytes / median time, images_per_s = images / median time;
    pct_peak = share of the roof that bounds the row, from the measured ``peaks`` (bench/measure/peaks.py) of the
    machine that ran it. ``placement``: where it ran — node, device_name, env_key (bench.runs.schema.device_key of
    that machine's environment) and target (see bench.runs.schema.row_id). ``timing_mode``: how the run takes a
    sample on its device; a row the device times otherwise says so (a GPU training step: ``WALL_TIMING_MODE``)."""
    if outcome.instructions is None and wall_timed(case.op, case.device):
        timing_mode = WALL_TIMING_MODE
    row = dict(op=case.op, impl=outcome.impl, device=case.device, backend=outcome.backend, dtype=case.dtype,
               layout=case.layout, **case.columns(), status=outcome.status, error=outcome.error)
    flops, nbytes = case.flops(), case.bytes_moved()
    row.update(median_ms="", iqr_ms="", min_ms="", samples=0, times_ms="", flops=flops, bytes=nbytes, gflops="",
               gbps="", images_per_s="", compile_s=_num(outcome.compile_s, 4), max_abs_err=_num(outcome.max_abs_err, 4),
               max_rel_err=_num(outcome.max_rel_err, 4), timing_mode="")
    extras = dict(case_key=case.key, options=case.options_text().strip(), threads=threads, loops="", ci_low_ms="",
                  ci_high_ms="", warning=outcome.warning, instructions=_num(outcome.instructions, 10),
                  host_us=_num(outcome.host_us, 4), pct_peak="",
                  provenance=json.dumps(outcome.provenance, sort_keys=True, default=str) if outcome.provenance else "",
                  node="", device_name="", env_key="", target="", count=case.count or "", models=case.models)
    extras.update(placement or {})
    if outcome.instructions is not None:
        row["timing_mode"] = timing_mode
    if outcome.status == "ok" and outcome.times_ms:
        s = summarize(list(outcome.times_ms))
        seconds = s.median_ms / 1e3
        row.update(median_ms=_num(s.median_ms), iqr_ms=_num(s.iqr_ms), min_ms=_num(s.min_ms), samples=s.samples,
                   times_ms=" ".join(f"{t:.6g}" for t in outcome.times_ms), gflops=_num(flops / seconds / 1e9, 5),
                   gbps=_num(nbytes / seconds / 1e9, 5), timing_mode=f"{timing_mode},loops={outcome.loops}")
        if case.images:
            row["images_per_s"] = _num(case.images / seconds, 5)
        extras.update(loops=outcome.loops, ci_low_ms=_num(s.ci_low_ms), ci_high_ms=_num(s.ci_high_ms),
                      pct_peak=_num(pct_peak(flops, nbytes, seconds, case.dtype, peaks), 4))
    return {**row, **extras}


