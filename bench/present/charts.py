"""The report's charts (matplotlib): per-axis throughput curves, a roofline under the run's measured peaks, a speedup
heatmap against cudnn, training-step lines and the timing spread.

Conventions: one colour per implementation, the same in every chart (``COLOURS``); units on every axis; log scales
where values span decades, labelled with plain numbers; legends outside the data. Each function returns whether it
wrote its file (False when the run has no data for it).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from ..runs.schema import CATEGORIES, case_label  # noqa: E402
from ..runs.summary import RATE  # noqa: E402,F401 — charts.RATE: each op's throughput column

#: the results columns a suite sweeps, with their axis titles
AXES = {"batch": "batch (N)", "in_channels": "input channels (C)", "out_channels": "output channels (K)",
        "height": "image size (H = W)", "kernel_h": "kernel size (R = S)", "stride": "stride",
        "padding": "padding", "dilation": "dilation", "groups": "groups", "layout": "memory layout",
        "dtype": "dtype"}
SHAPE_COLUMNS = ("layout", "dtype", "batch", "in_channels", "out_channels", "height", "width", "kernel_h", "kernel_w",
                 "stride", "padding", "dilation", "groups", "options")
_PALETTE = plt.get_cmap("tab10").colors
#: the implementations in kernels.ORDER's order, for their colours: this torch-free layer cannot import kernels (which
#: loads torch), so the order is written here and tests/test_layers.py checks that it is kernels.ORDER
IMPL_ORDER = ("naive", "im2col", "cudnn", "compile", "compile-max-autotune", "compile-max-autotune-no-cudagraphs",
              "triton")


def colour(impl: str):
    """The colour of an implementation in every chart."""
    i = IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER) + sum(map(ord, impl)) % 3
    return _PALETTE[i % len(_PALETTE)]


def _plain(v, _=None) -> str:
    return f"{v:g}" if v >= 1e-3 else f"{v:.0e}"


def _log_axis(axis) -> None:
    """Log axis with labels only on 1-2-5 steps, as plain numbers: no '5060708090100' runs of minor labels."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> bool:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _ok(frame: pd.DataFrame, op: str | None = None) -> pd.DataFrame:
    ok = frame[frame["status"] == "ok"]
    return ok[ok["op"] == op] if op else ok


def _tick(v) -> str:
    """An axis value as a tick label: 3.0 → '3' (columns read back as floats where pools leave them empty)."""
    try:
        f = float(v)
        return str(int(f)) if f.is_integer() else f"{f:g}"
    except (TypeError, ValueError):
        return str(v)


def _sort_key(v):
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        return (1, str(v))


def axis_sweeps(frame: pd.DataFrame, op: str) -> dict[str, pd.DataFrame]:
    """For each swept axis, the ok rows of the largest family of cases that differ only in that axis (every
    other shape column equal), when the axis takes at least two values there."""
    ok = _ok(frame, op)
    out = {}
    for axis in AXES:
        if axis not in ok:
            continue
        others = [c for c in SHAPE_COLUMNS if c in ok and c != axis and not (axis == "height" and c == "width")
                  and not (axis == "kernel_h" and c == "kernel_w")]
        best = None
        for _, grp in ok.astype({c: str for c in others}).groupby(others, dropna=False):
            if grp[axis].astype(str).nunique() >= 2 and (best is None or len(grp) > len(best)):
                best = grp
        if best is not None:
            out[axis] = best
    return out


def plot_axis_curves(frame: pd.DataFrame, op: str, path: Path) -> bool:
    """Throughput against every swept axis, one panel per axis, one line per implementation."""
    sweeps = axis_sweeps(frame, op)
    if not sweeps:
        return False
    col, unit = RATE[op]
    cols = min(3, len(sweeps))
    rows = math.ceil(len(sweeps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    impls = []
    for ax, (axis, grp) in zip(axes.flat, sweeps.items()):
        ticks = grp[axis].map(_tick)
        values = sorted(ticks.unique(), key=_sort_key)
        pos = {v: i for i, v in enumerate(values)}
        for impl, g in grp.groupby("impl", sort=False):
            g = g.assign(x=ticks[g.index].map(pos)).sort_values("x")
            ax.plot(g["x"], g[col].astype(float), marker="o", color=colour(impl), label=impl)
            impls.append(impl)
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(AXES[axis])
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.grid(which="both", alpha=0.3)
        base = grp.iloc[0]
        ax.set_title(f"{axis} sweep", fontsize=9)
        ax.text(0.01, 0.01, case_label(base).replace(f"{op} ", "")[:60], transform=ax.transAxes, fontsize=6,
                color="grey", va="bottom")
    for ax in list(axes.flat)[len(sweeps):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colour(i), marker="o", label=i) for i in dict.fromkeys(impls)]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.02), frameon=False)
    fig.suptitle(f"{op}: throughput along each swept axis (higher is better)", y=1.06)
    fig.tight_layout()
    return _save(fig, path)


def plot_roofline(frame: pd.DataFrame, peaks: dict | None, path: Path) -> bool:
    """Every timed case as a point (arithmetic intensity = FLOPs / compulsory bytes, achieved GFLOP/s) under the
    measured compute roof (GEMM) and bandwidth roof (copy), one marker per op, one colour per implementation."""
    ok = _ok(frame)
    ok = ok[(ok["op"] != "train_step") & (ok["flops"].astype(float) > 0) & (ok["bytes"].astype(float) > 0)]
    if ok.empty or not peaks or not peaks.get("gemm_flops") or not peaks.get("copy_bytes_per_s"):
        return False
    dtype = ok["dtype"].mode().iloc[0]
    flop_peak = peaks["gemm_flops"].get(dtype)
    if not flop_peak:
        return False
    ok = ok[ok["dtype"] == dtype]
    bw = peaks["copy_bytes_per_s"]
    intensity = ok["flops"].astype(float) / ok["bytes"].astype(float)
    achieved = ok["gflops"].astype(float)
    fig, ax = plt.subplots(figsize=(8.5, 5))
    lo, hi = max(1e-3, intensity.min() / 3), intensity.max() * 3
    xs = np.logspace(math.log10(lo), math.log10(hi), 200)
    ax.plot(xs, np.minimum(flop_peak, bw * xs) / 1e9, color="black", lw=1.5)
    ridge = flop_peak / bw
    ax.axvline(ridge, color="grey", lw=0.6, ls=":")
    ax.text(ridge, flop_peak / 1e9 * 1.08, f"GEMM {flop_peak / 1e9:.0f} GFLOP/s ({dtype})", fontsize=8, ha="center")
    ax.text(lo * 1.3, bw * lo * 1.3 * 1.6 / 1e9, f"copy {bw / 1e9:.1f} GB/s", fontsize=8, rotation=33)
    markers = {"conv2d": "o", "conv2d_backward": "s", "max_pool2d": "^", "avg_pool2d": "v"}
    for (impl, op), g in ok.groupby(["impl", "op"], sort=False):
        ax.scatter(intensity[g.index], achieved[g.index], color=colour(impl), marker=markers.get(op, "o"), s=22,
                   alpha=0.8, edgecolor="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axis(ax.xaxis)
    _log_axis(ax.yaxis)
    ax.set_xlabel("arithmetic intensity (FLOP per compulsory byte, log)")
    ax.set_ylabel("achieved GFLOP/s (log)")
    ax.set_title(f"Roofline under the measured peaks ({dtype})")
    ax.grid(which="both", alpha=0.3)
    impl_handles = [plt.Line2D([], [], color=colour(i), marker="o", ls="", label=i) for i in ok["impl"].unique()]
    op_handles = [plt.Line2D([], [], color="grey", marker=markers[o], ls="", label=o) for o in markers
                  if o in set(ok["op"])]
    ax.legend(handles=impl_handles + op_handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False)
    return _save(fig, path)


def speedup_matrix(frame: pd.DataFrame, baseline: str = "cudnn") -> pd.DataFrame:
    """Rows = cases (labels), columns = implementations, cells = baseline time / implementation time."""
    ok = _ok(frame)
    ok = ok[ok["op"] != "train_step"]
    base = ok[ok["impl"] == baseline].set_index("case_key")["median_ms"].astype(float)
    labels = ok.drop_duplicates("case_key").set_index("case_key").apply(case_label, axis=1)
    out = {}
    for impl, g in ok.groupby("impl", sort=False):
        t = g.set_index("case_key")["median_ms"].astype(float)
        out[impl] = base.reindex(t.index) / t
    m = pd.DataFrame(out)
    m.index = [labels[k] for k in m.index]
    return m


def plot_speedup_heatmap(frame: pd.DataFrame, path: Path, baseline: str = "cudnn") -> bool:
    """Speed relative to ``baseline`` per case and implementation (log₂ colour: blue faster, red slower), with the
    geometric mean per implementation as the last row."""
    m = speedup_matrix(frame, baseline)
    if m.empty or baseline not in m:
        return False
    gm = np.exp(np.log(m.where(m > 0)).mean())
    m = pd.concat([m, pd.DataFrame([gm], index=["geometric mean"])])
    data = np.log2(m.astype(float).values)
    fig, ax = plt.subplots(figsize=(1.3 * len(m.columns) + 5.5, 0.22 * len(m) + 1.6))
    finite = np.abs(data[np.isfinite(data)])
    lim = max(1.0, float(finite.max()) if finite.size else 1.0)
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(m.columns)), m.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(m)), m.index, fontsize=6)
    for (i, j), v in np.ndenumerate(m.values):
        if v == v:
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=5.5,
                    color="white" if abs(math.log2(v)) > lim * 0.6 else "black")
    ax.axhline(len(m) - 1.5, color="black", lw=1)
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(f"× {baseline} speed (log₂ colour; >1 faster)")
    steps = [k for k in range(-math.floor(lim), math.floor(lim) + 1)]
    bar.set_ticks(steps)
    bar.set_ticklabels([_plain(2.0 ** k) for k in steps])
    ax.set_title(f"Speed relative to {baseline}, per case")
    return _save(fig, path)


def plot_train(frame: pd.DataFrame, path: Path) -> bool:
    """Images/s against batch size: one colour per implementation, one line style per optimizer."""
    ok = _ok(frame, "train_step")
    if ok.empty:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]  # a line style and a marker per optimizer/dtype,
    opt_style = {}  # so a configuration timed at one batch size only is still a visible, distinct point
    for (impl, opts, dtype), g in ok.groupby(["impl", "options", "dtype"], sort=False):
        g = g.sort_values("batch")
        opt = str(opts).replace("model=", "").replace("optimizer=", "")
        ls, mk = opt_style.setdefault(f"{opt} {dtype}", styles[len(opt_style) % len(styles)])
        ax.plot(g["batch"].astype(int), g["images_per_s"].astype(float), ls=ls, marker=mk, ms=7, mfc="none"
                if mk != "o" else None, color=colour(impl))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    _log_axis(ax.yaxis)
    ax.set_xlabel("batch size (images per step, log₂)")
    ax.set_ylabel("images/s (log)")
    ax.set_title("Training step throughput")
    ax.grid(which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colour(i), marker="o", label=i) for i in ok["impl"].unique()]
    handles += [plt.Line2D([], [], color="grey", ls=s, marker=m, mfc="none" if m != "o" else None, label=k)
                for k, (s, m) in opt_style.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_spread(frame: pd.DataFrame, path: Path, threshold: float = 10.0) -> bool:
    """Timing spread (IQR / median) per implementation, with the noise-warning threshold."""
    ok = _ok(frame)
    ok = ok[ok["iqr_ms"].astype(str) != ""]
    if ok.empty:
        return False
    rel = ok.assign(spread=100 * ok["iqr_ms"].astype(float) / ok["median_ms"].astype(float))
    groups = [(impl, g["spread"].values) for impl, g in rel.groupby("impl", sort=False)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    box = ax.boxplot([g for _, g in groups], showfliers=True, patch_artist=True, medianprops={"color": "black"})
    for patch, (impl, _) in zip(box["boxes"], groups):
        patch.set_facecolor(colour(impl))
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups])
    ax.axhline(threshold, color="red", lw=0.8, ls="--", label=f"{threshold:g}% warning level")
    ax.set_ylabel("IQR / median (%)")
    ax.set_title("Timing spread per implementation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return _save(fig, path)


def plot_pct_peak(frame: pd.DataFrame, path: Path) -> bool:
    """Share of the bounding roof (pct_peak) per op and implementation: a box per pair."""
    ok = _ok(frame)
    if "pct_peak" not in ok or ok["pct_peak"].astype(str).eq("").all():
        return False
    ok = ok[ok["pct_peak"].astype(str) != ""].assign(pct=lambda d: d["pct_peak"].astype(float))
    ops = [o for o in RATE if o in set(ok["op"]) and o != "train_step"]
    if not ops:
        return False
    impls = list(dict.fromkeys(ok["impl"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(ops) * max(1, len(impls)) / 2 + 3, 4))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        data = [ok[(ok["op"] == op) & (ok["impl"] == impl)]["pct"].values for op in ops]
        pos = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(ops))]
        keep = [(p, d) for p, d in zip(pos, data) if len(d)]
        if keep:
            b = ax.boxplot([d for _, d in keep], positions=[p for p, _ in keep], widths=width * 0.9,
                           patch_artist=True, showfliers=False, medianprops={"color": "black"})
            for patch in b["boxes"]:
                patch.set_facecolor(colour(impl))
    ax.set_xticks(range(len(ops)), ops)
    ax.set_ylabel("% of the bounding measured peak")
    ax.axhline(100, color="black", lw=0.6, ls=":")  # above: the working set ran from cache, beyond the DRAM roof
    ax.set_title("How close each implementation gets to the machine (compute roof or copy bandwidth)")
    ax.grid(axis="y", alpha=0.3)
    handles = [plt.Line2D([], [], color=colour(i), lw=6, label=i) for i in impls]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return _save(fig, path)


def plot_speedup_summary(summary: pd.DataFrame, path: Path, baseline: str = "cudnn") -> bool:
    """Geometric-mean speed relative to ``baseline`` per op, one bar per implementation."""
    col = f"geomean speedup vs {baseline}"
    if summary.empty or col not in summary or summary[col].isna().all():
        return False
    pivot = summary.pivot_table(index="op", columns="impl", values=col, sort=False)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(pivot.columns)
    for j, impl in enumerate(pivot.columns):
        ax.bar([i + (j - (len(pivot.columns) - 1) / 2) * width for i in range(len(pivot))], pivot[impl], width,
               color=colour(impl), label=impl)
    ax.set_xticks(range(len(pivot)), pivot.index)
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel(f"× {baseline} speed (geometric mean, log)")
    ax.set_title(f"Speed relative to {baseline} per operation (above 1 is faster)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return _save(fig, path)


def _short_case(key: str) -> str:
    """A compact label of a case key: op, shape, kernel and arguments, dtype and layout."""
    parts = key.split("|")
    return " ".join(parts[:-1]).replace("  ", " ")[:70]


def plot_breakdown(breakdown_csv: Path, path: Path, limit: int = 40) -> bool:
    """Every profiled case × implementation as one horizontal bar split into the profile's categories (share of
    the wall time per call), with the ms per call at its end; the bars of one case are next to each other."""
    if not breakdown_csv.exists():
        return False
    table = pd.read_csv(breakdown_csv)
    table = table[table["status"] == "ok"] if "status" in table else table
    cats = [f"{c} ms" for c in CATEGORIES if f"{c} ms" in table]
    if table.empty or not cats:
        return False
    shown = table.head(limit)
    labels = [f"{_short_case(k)} · {i}" for k, i in zip(shown["case_key"], shown["impl"])]
    wall = shown["wall ms"].astype(float).values
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.32 * len(shown)))
    left = np.zeros(len(shown))
    shades = plt.get_cmap("Set2").colors
    y = np.arange(len(shown))[::-1]
    for k, cat in enumerate(cats):
        share = shown[cat].astype(float).fillna(0).values / np.where(wall > 0, wall, 1) * 100
        ax.barh(y, share, left=left, color=shades[k % len(shades)], label=cat.replace(" ms", ""), height=0.75)
        left += share
    for yy, total, ms in zip(y, left, wall):
        ax.text(total + 1, yy, f"{ms:.3g} ms", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("share of the wall time per call (%)")
    ax.set_xlim(0, 118)
    more = f" (first {limit} of {len(table)})" if len(table) > limit else ""
    ax.set_title(f"Where each profiled case's time goes{more}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_profile_split(breakdown_csv: Path, path: Path) -> bool:
    """The profiled training steps per implementation as stacked bars: forward / backward / optimizer (ms)."""
    if not breakdown_csv.exists():
        return False
    table = pd.read_csv(breakdown_csv)
    phases = [c for c in ("forward ms", "backward ms", "optimizer ms") if c in table]
    table = table[(table.get("op") == "train_step") & (table["status"] == "ok")] if "op" in table else table.iloc[:0]
    if table.empty or not phases:
        return False
    labels = [f"{i}\n{k.split('|')[1]}" for k, i in zip(table["case_key"], table["impl"])]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table)), 4))
    bottom = np.zeros(len(table))
    shades = plt.get_cmap("Set2").colors
    for k, phase in enumerate(phases):
        values = table[phase].astype(float).fillna(0).values
        ax.bar(labels, values, bottom=bottom, color=shades[k % len(shades)], label=phase.replace(" ms", ""))
        bottom += values
    ax.set_ylabel("ms per training step")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("Where a profiled training step spends its time")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
