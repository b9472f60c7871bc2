"""The report's whole-network part: per model, what one forward (and forward + backward) of its convolutions and
pools costs per implementation, where that time goes by layer kind, and the largest layers (bench/network.py does the
sums; this module draws and tabulates them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..runs.network import CONTROL, PASSES, Total, layer_rows, models_in, shares, totals  # noqa: E402
from .charts import colour  # noqa: E402

#: layer kinds in the order the chart stacks them
KINDS = ("dense k×k", "1×1", "stride-2+ stem/down", "depthwise", "grouped", "dilated", "max pool", "avg pool",
         "backward")
_KIND_COLOURS = dict(zip(KINDS, plt.get_cmap("tab10").colors))


def _first(v) -> int:
    """The first number of a results column that may read '2', '2x1', 2.0 or 'same'."""
    try:
        return int(float(str(v).split("x")[0]))
    except ValueError:
        return 1


def layer_kind(row) -> str:
    """What kind of layer a row is, for the stacked bars: pools by op, convs by their defining trait (depthwise,
    grouped, dilated, 1×1, strided, else dense k×k); a backward row is 'backward'."""
    if row["op"] == "conv2d_backward":
        return "backward"
    if row["op"] == "max_pool2d":
        return "max pool"
    if row["op"] == "avg_pool2d":
        return "avg pool"
    groups, C = _first(row["groups"]), int(row["in_channels"])
    if groups > 1:
        return "depthwise" if groups == C else "grouped"
    if _first(row["dilation"]) > 1:
        return "dilated"
    if int(row["kernel_h"]) == 1 and int(row["kernel_w"]) == 1:
        return "1×1"
    if _first(row["stride"]) > 1:
        return "stride-2+ stem/down"
    return "dense k×k"


def kind_totals(frame: pd.DataFrame, model: str, passes: str = "forward+backward") -> pd.DataFrame:
    """impl × kind: Σ count × median (ms) of the model's rows measured ok."""
    rows = layer_rows(frame, model)
    rows = rows[(rows["status"] == "ok") & rows["op"].isin(PASSES[passes])]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(kind=rows.apply(layer_kind, axis=1), ms=rows["count_in_model"] * rows["median_ms"].astype(float))
    table = rows.pivot_table(index="impl", columns="kind", values="ms", aggfunc="sum", fill_value=0.0, sort=False)
    return table[[k for k in KINDS if k in table.columns]]


def plot_network(frame: pd.DataFrame, model: str, found: list[Total], path: Path) -> bool:
    """One horizontal bar per implementation: the model's conv + pool time of one forward + backward (forward only
    when the run has no backward rows), stacked by layer kind; implementations with a layer not measured are named
    with the reason instead of a bar that would understate them. ``found``: the model's ``totals``."""
    passes = "forward+backward" if any(t.passes == "forward+backward" for t in found) else "forward"
    found = [t for t in found if t.passes == passes]
    if not found:
        return False
    kinds = kind_totals(frame, model, passes)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(found) + 1.6))
    labels = []
    for y, t in enumerate(found):
        labels.append(t.impl)
        if t.ms is None:
            ax.text(0, y, f"  not all layers measured: {t.missing[:70]}", va="center", fontsize=8, color="grey")
            continue
        left = 0.0
        for kind, ms in kinds.loc[t.impl].items():
            if ms > 0:
                ax.barh(y, ms, left=left, color=_KIND_COLOURS[kind], edgecolor="white", linewidth=0.5)
                left += ms
        vs = f", {t.vs_control:.2f}× {CONTROL}" if t.vs_control is not None and t.impl != CONTROL else ""
        ax.text(left, y, f"  {t.ms:.3g} ± {t.halfwidth_ms:.2g} ms{vs}", va="center", fontsize=8,
                color=colour(t.impl))
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per {'forward + backward' if passes != 'forward' else 'forward'} (Σ count × median over "
                  f"the model's conv and pool layers)")
    ax.set_title(f"{model}: where the convolution and pooling time goes, per implementation")
    ax.set_xlim(0, max((t.ms for t in found if t.ms), default=1) * 1.45)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_KIND_COLOURS[k], label=k) for k in kinds.columns]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False,
              title="layer kind", title_fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def totals_table(found: list[Total]) -> pd.DataFrame:
    """One row per implementation of one model's ``totals``: forward and forward + backward time with ±, and the
    speed relative to cudnn."""
    rows: dict[str, dict] = {}
    for t in found:
        r = rows.setdefault(t.impl, {"layers (calls)": f"{t.layers} ({t.calls})" if t.passes == "forward" else None})
        name = "fwd" if t.passes == "forward" else "fwd+bwd"
        r[f"{name} ms"] = f"{t.ms:.3g} ± {t.halfwidth_ms:.1g}" if t.ms is not None else _short(t.missing)
        r[f"{name} ×{CONTROL}"] = (f"{t.vs_control:.2f} ± {t.vs_control_halfwidth:.1g}"
                                   if t.vs_control is not None else "")
    return pd.DataFrame.from_dict(rows, orient="index")


def _short(missing: str, width: int = 70) -> str:
    return missing if len(missing) <= width else missing[:width - 1] + "…"


def network_sections(frame: pd.DataFrame, plots: Path, expected: dict | None = None) -> list[tuple[str, object]]:
    """The report's sections for every model the run's rows belong to (none for a run without model suites);
    ``expected``: env.json's ``models`` (how many layers each model has: a filtered run gets no totals)."""
    if "models" not in frame.columns:
        return []
    out: list[tuple[str, object]] = []
    every = totals(frame, expected)
    for model in models_in(frame):
        found = [t for t in every if t.model == model]
        out.append((f"{model}: whole-network conv + pool time per implementation "
                    "(pools' backward not measured; > 1 × cudnn is faster)", totals_table(found)))
        png = plots / f"network_{model}.png"
        if plot_network(frame, model, found, png):
            out.append(("", png))
        top = shares(frame, model, CONTROL)
        if not top.empty:
            top = top.head(8).assign(share=lambda d: (100 * d["share"]).round(1))
            out.append((f"{model}: its largest layers under {CONTROL} (forward, % of the total)",
                        top[["case_key", "count", "median_ms", "ms", "share"]]))
    return out
