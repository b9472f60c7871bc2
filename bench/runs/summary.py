"""What a run's rows add up to, per operation and implementation: throughput columns and geometric-mean speedups
over the library (the report's headline, and the GPU window's summary line). Torch-free."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

BASELINE = "cudnn"
OP_ORDER = ("conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d", "train_step")
#: per op: the results column of its throughput and that column's unit
RATE = {"conv2d": ("gflops", "GFLOP/s"), "conv2d_backward": ("gflops", "GFLOP/s"), "max_pool2d": ("gbps", "GB/s"),
        "avg_pool2d": ("gbps", "GB/s"), "train_step": ("images_per_s", "images/s")}


def geomean(values) -> float:
    v = np.asarray([x for x in values if x and x > 0 and math.isfinite(x)], dtype=float)
    return float(np.exp(np.log(v).mean())) if len(v) else float("nan")


def ratios(sub: pd.DataFrame, impl: str, baseline: str = BASELINE, value: str = "median_ms",
           key: str = "case_key") -> pd.Series:
    """Per case (``key``) that both ran: the baseline's ``value`` / ``impl``'s — above 1, ``impl`` is faster (or
    executes fewer instructions). ``sub``: ok rows of one op."""
    base = sub[sub["impl"] == baseline].set_index(key)[value].astype(float)
    mine = sub[sub["impl"] == impl].set_index(key)[value].astype(float)
    shared = mine.index.intersection(base.index)
    return base[shared] / mine[shared]


def speedups(frame: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per op and implementation: geometric mean over shared ok cases of baseline_time / impl_time."""
    ok = frame[frame["status"] == "ok"]
    out = []
    for op in [o for o in OP_ORDER if o in set(ok["op"])]:
        sub = ok[ok["op"] == op]
        col, unit = RATE[op]
        for impl, grp in sub.groupby("impl", sort=False):
            shared = ratios(sub, impl, baseline)
            speedup = geomean(shared) if len(shared) else math.nan
            out.append({"op": op, "impl": impl, "cases": len(grp), f"geomean speedup vs {baseline}": speedup,
                        "vs cases": len(shared), "geomean throughput": geomean(grp[col].astype(float)),
                        "unit": unit})
    return pd.DataFrame(out)
