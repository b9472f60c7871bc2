"""Whole-network figures from a model suite's rows (torch-free): what one forward, and one forward + backward, of a
network's convolutions and pools costs per implementation.

A model layer row carries ``models`` (``resnet18:4;convnext_tiny:1``: how many times each model makes that exact
call). For a model and an implementation:

- **forward** = Σ over the model's conv2d, max_pool2d and avg_pool2d layers of count × median;
- **forward + backward** = forward + Σ over its conv layers of count × the conv2d_backward row's median (the input,
  weight and bias gradients); pools' backward is not measured and is left out (said in the table);
- its **uncertainty**: each median's 95% interval half-width h (``ci_low_ms``/``ci_high_ms``), summed as
  √Σ (count·h)² — a layer that occurs several times is one measurement, so its error counts ``count`` times over,
  distinct layers are measured independently;
- each layer's **share** of the total, and the implementation's **speed relative to cudnn** on the whole network
  (cudnn's total / its total, the interval from both totals' relative half-widths).

A total is only given when every layer of that pass was measured ok for the implementation; otherwise it is
``None`` and ``missing`` says how many layers were not, and why (never a partial sum passed off as the network).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pandas as pd

from .schema import parse_models

FORWARD_OPS = ("conv2d", "max_pool2d", "avg_pool2d")
#: each pass a total is given for, and the rows it sums
PASSES = {"forward": FORWARD_OPS, "forward+backward": FORWARD_OPS + ("conv2d_backward",)}
#: the implementation totals are compared with
CONTROL = "cudnn"


@dataclass(frozen=True)
class Total:
    """One model's conv + pool time for one pass and one implementation."""

    model: str
    impl: str
    passes: str  # forward | forward+backward
    ms: float | None  # None when some layer was not measured ok
    halfwidth_ms: float | None
    layers: int  # distinct layers in the pass
    calls: int  # layer calls (Σ count)
    missing: str = ""  # why ms is None: '3 of 41 layers unsupported (…)'
    vs_control: float | None = None  # cudnn's total / this total (> 1: faster than cudnn)
    vs_control_halfwidth: float | None = None


def layer_rows(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """The rows of ``model``'s layers, with ``count_in_model``: how many times that model makes the call."""
    counts = df["models"].map(lambda t: parse_models(t).get(model, 0))
    return df[counts > 0].assign(count_in_model=counts[counts > 0])


def models_in(df: pd.DataFrame) -> list[str]:
    """The models a run's rows belong to, in order of first appearance."""
    if "models" not in df.columns:
        return []
    seen: dict[str, None] = {}
    for text in df["models"]:
        for name in parse_models(text):
            seen.setdefault(name)
    return list(seen)


def totals(df: pd.DataFrame, expected: dict | None = None) -> list[Total]:
    """Every (model, implementation, pass) total of a run's rows (``results.csv`` as a DataFrame). ``expected``:
    the run's ``env.json`` ``models`` ({model: {"layers": distinct conv and pool layers, "convs": of them convs}}),
    so that a run filtered to some of a model's layers (--op, --where, --shard) gives no whole-network total."""
    out: list[Total] = []
    for model in models_in(df):
        rows = layer_rows(df, model)
        want = (expected or {}).get(model)
        impls = list(dict.fromkeys(rows["impl"]))
        for passes, ops in PASSES.items():
            part = rows[rows["op"].isin(ops)]
            if passes == "forward+backward" and not (part["op"] == "conv2d_backward").any():
                continue  # the run measured no backward
            found = {impl: _total(model, impl, passes, _with_absent(part[part["impl"] == impl], passes))
                     for impl in impls}
            if want:
                n = want["layers"] + (want["convs"] if passes == "forward+backward" else 0)
                found = {impl: t if t.layers >= n else dataclasses.replace(
                    t, ms=None, halfwidth_ms=None, missing=f"only {t.layers} of the model's {n} layers are in this "
                                                           f"run (filtered)") for impl, t in found.items()}
            control = found.get(CONTROL)
            out += [_versus(t, control) for t in found.values()]
    return out


def _with_absent(rows: pd.DataFrame, passes: str) -> pd.DataFrame:
    """A forward + backward pass needs each conv layer's backward row too: one that is absent counts as a layer
    not measured (status ``absent``)."""
    if passes == "forward":
        return rows
    shape = rows["case_key"].str.split("|", n=1).str[1]
    have = set(shape[rows["op"] == "conv2d_backward"])
    absent = rows[(rows["op"] == "conv2d") & ~shape.isin(have)]
    if absent.empty:
        return rows
    stand_in = absent.assign(op="conv2d_backward", status="absent", error="no conv2d_backward row",
                             case_key="conv2d_backward|" + absent["case_key"].str.split("|", n=1).str[1])
    return pd.concat([rows, stand_in], ignore_index=True)


def _total(model: str, impl: str, passes: str, rows: pd.DataFrame) -> Total:
    layers, calls = len(rows), int(rows["count_in_model"].sum())
    bad = rows[rows["status"] != "ok"]
    if len(bad) or not layers:
        why = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
        error = bad["error"].iloc[0] if len(bad) and "error" in bad else ""
        first = error[:120] if isinstance(error, str) else ""
        return Total(model, impl, passes, None, None, layers, calls,
                     f"{len(bad)} of {layers} layers not measured ({why})" + (f": {first}" if first else ""))
    c, m = rows["count_in_model"].astype(float), rows["median_ms"].astype(float)
    h = ((rows["ci_high_ms"] - rows["ci_low_ms"]) / 2).astype(float) if "ci_high_ms" in rows else m * 0
    h = h.where(h.map(math.isfinite), rows["iqr_ms"].astype(float))  # too few samples for an interval: the IQR
    return Total(model, impl, passes, float((c * m).sum()), float(math.sqrt(((c * h) ** 2).sum())), layers, calls)


def _versus(t: Total, control: Total | None) -> Total:
    if t.ms is None or control is None or control.ms is None or not t.ms:
        return t
    r = control.ms / t.ms
    rel = math.hypot((t.halfwidth_ms or 0) / t.ms, (control.halfwidth_ms or 0) / control.ms)
    return dataclasses.replace(t, vs_control=r, vs_control_halfwidth=r * rel)


def shares(df: pd.DataFrame, model: str, impl: str, passes: str = "forward") -> pd.DataFrame:
    """The model's layers for one implementation and pass, each with count × median and its share of the total,
    largest first (``case_key``, ``op``, ``count``, ``median_ms``, ``ms``, ``share``)."""
    rows = layer_rows(df, model)
    rows = rows[(rows["impl"] == impl) & rows["op"].isin(PASSES[passes]) & (rows["status"] == "ok")]
    ms = rows["count_in_model"] * rows["median_ms"]
    out = pd.DataFrame({"case_key": rows["case_key"], "op": rows["op"], "count": rows["count_in_model"],
                        "median_ms": rows["median_ms"], "ms": ms, "share": ms / ms.sum() if len(ms) else ms})
    return out.sort_values("ms", ascending=False).reset_index(drop=True)


def totals_frame(df: pd.DataFrame, expected: dict | None = None) -> pd.DataFrame:
    """``totals`` as a table (one row per model, implementation and pass)."""
    return pd.DataFrame([dataclasses.asdict(t) for t in totals(df, expected)])
