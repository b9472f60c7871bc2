"""``bench report DIR``: report.md, report.html and plots/*.png from a run directory.

The report leads with what a reader asks first — how each implementation compares with the library (geometric
mean of speedups over the cases both ran), whether anything failed validation — then per-operation tables and
charts, then the environment and its warnings. Every number carries its unit.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .schema import FAILED, atomic_write, case_label, read_rows  # noqa: E402

BASELINE = "cudnn"
OP_ORDER = ("conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d", "train_step")
RATE = {"conv2d": ("gflops", "GFLOP/s"), "conv2d_backward": ("gflops", "GFLOP/s"), "max_pool2d": ("gbps", "GB/s"),
        "avg_pool2d": ("gbps", "GB/s"), "train_step": ("images_per_s", "images/s")}


def geomean(values) -> float:
    v = np.asarray([x for x in values if x and x > 0 and math.isfinite(x)], dtype=float)
    return float(np.exp(np.log(v).mean())) if len(v) else float("nan")


def speedups(frame: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per op and implementation: geometric mean over shared ok cases of baseline_time / impl_time."""
    ok = frame[frame["status"] == "ok"]
    out = []
    for op in [o for o in OP_ORDER if o in set(ok["op"])]:
        sub = ok[ok["op"] == op]
        base = sub[sub["impl"] == baseline].set_index("case_key")["median_ms"].astype(float)
        col, unit = RATE[op]
        for impl, grp in sub.groupby("impl", sort=False):
            t = grp.set_index("case_key")["median_ms"].astype(float)
            shared = t.index.intersection(base.index)
            speedup = geomean(base[shared] / t[shared]) if len(shared) else math.nan
            out.append({"op": op, "impl": impl, "cases": len(grp), f"geomean speedup vs {baseline}": speedup,
                        "vs cases": len(shared), "geomean throughput": geomean(grp[col].astype(float)),
                        "unit": unit})
    return pd.DataFrame(out)


def case_table(frame: pd.DataFrame, op: str) -> pd.DataFrame:
    """Rows = cases, columns = implementations, cells = 'median ms (rate)'; the fastest marked with ★."""
    sub = frame[frame["op"] == op]
    col, unit = RATE[op]
    table = {}
    for _key, grp in sub.groupby("case_key", sort=False):
        label = case_label(grp.iloc[0])
        ok = grp[grp["status"] == "ok"]
        fastest = ok.loc[ok["median_ms"].astype(float).idxmin(), "impl"] if len(ok) else None
        cells = {}
        for _, r in grp.iterrows():
            if r["status"] == "ok":
                cells[r["impl"]] = (f"{'★ ' if r['impl'] == fastest else ''}{float(r['median_ms']):.3g} ms "
                                    f"({float(r[col]):.3g} {unit})")
            else:
                cells[r["impl"]] = r["status"]
        table[label] = cells
    return pd.DataFrame.from_dict(table, orient="index")


PLAIN = FuncFormatter(lambda v, _: f"{v:g}")  # log axes labelled 0.5, 1, 2 rather than 5×10⁻¹


def _plain_log(axis) -> None:
    axis.set_major_formatter(PLAIN)
    axis.set_minor_formatter(PLAIN)


def _plot_rates(frame: pd.DataFrame, op: str, path: Path) -> bool:
    ok = frame[(frame["op"] == op) & (frame["status"] == "ok")].copy()
    if ok.empty:
        return False
    col, unit = RATE[op]
    ok["label"] = ok.apply(case_label, axis=1).str.replace(f"{op} ", "", regex=False)
    pivot = ok.pivot_table(index="label", columns="impl", values=col, aggfunc="first", sort=False).astype(float)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(pivot) * max(1, len(pivot.columns)) / 2.5 + 1.5))
    pivot.plot.barh(ax=ax, logx=True, width=0.8)
    ax.invert_yaxis()
    _plain_log(ax.xaxis)
    ax.set_xlabel(f"{unit} (log scale, higher is better)")
    ax.set_ylabel("")
    ax.set_title(f"{op}: throughput per case")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(title="implementation", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_speedups(summary: pd.DataFrame, path: Path) -> bool:
    col = f"geomean speedup vs {BASELINE}"
    if summary.empty or summary[col].isna().all():
        return False
    pivot = summary.pivot_table(index="op", columns="impl", values=col, sort=False)
    fig, ax = plt.subplots(figsize=(9, 4))
    pivot.plot.bar(ax=ax, logy=True, rot=0)
    ax.axhline(1.0, color="black", lw=0.8)
    _plain_log(ax.yaxis)
    ax.set_ylabel(f"× {BASELINE} speed (geometric mean, log scale)")
    ax.set_title(f"Speed relative to {BASELINE} (above 1 is faster)")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_train(frame: pd.DataFrame, path: Path) -> bool:
    ok = frame[(frame["op"] == "train_step") & (frame["status"] == "ok")]
    if ok.empty:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (impl, opts, dtype), grp in ok.groupby(["impl", "options", "dtype"]):
        grp = grp.sort_values("batch")
        ax.plot(grp["batch"].astype(int), grp["images_per_s"].astype(float), marker="o",
                label=f"{impl} {opts.replace('model=', '').replace('optimizer=', '')} {dtype}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("images/s (log scale)")
    ax.set_title("Training step throughput")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_noise(frame: pd.DataFrame, path: Path) -> bool:
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return False
    rel = ok.assign(spread=100 * ok["iqr_ms"].astype(float) / ok["median_ms"].astype(float))
    groups = [(impl, g["spread"].values) for impl, g in rel.groupby("impl", sort=False)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.boxplot([g for _, g in groups], showfliers=True)
    ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups])
    ax.axhline(10, color="red", lw=0.8, ls="--")
    ax.set_ylabel("IQR / median (%)")
    ax.set_title("Timing spread per implementation (dashed: 10% warning level)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _named_index(df: pd.DataFrame) -> bool:
    """Show the index only when it carries names (case labels, impls), not a 0..n range."""
    return not isinstance(df.index, pd.RangeIndex)


def _md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=_named_index(df), floatfmt=".3g") if not df.empty else "_none_"


def build_sections(run_dir: Path) -> tuple[str, list[tuple[str, object]]]:
    """The report as (title, [(heading, DataFrame | str | Path to png)]) — rendered to both md and html."""
    frame = read_rows(run_dir)
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    title = f"convbench report: {env.get('suite', '?')} suite on {env.get('device_name') or env.get('device', '?')}"
    sections: list[tuple[str, object]] = []
    summary = speedups(frame)
    overview = (f"{len(frame)} rows from `{run_dir}`; timed {env.get('start', '?')} → {env.get('end', '?')}, "
                f"{env.get('threads', '?')} CPU thread(s), torch {env.get('torch', '?')}. Every timed row agreed with "
                "the float64 oracle first; speedups are geometric means over the cases both implementations ran.")
    sections.append(("Summary", overview))
    if not summary.empty:
        sections.append(("Speed relative to the library", summary.round(3)))
        if _plot_speedups(summary, plots / "speedup.png"):
            sections.append(("", plots / "speedup.png"))
    status = frame.pivot_table(index="impl", columns="status", values="op", aggfunc="count", fill_value=0, sort=False)
    sections.append(("Outcomes (rows per status)", status))
    failed = frame[frame["status"].isin(FAILED)]
    if len(failed):
        sections.append(("Failures", failed[["op", "impl", "status", "error", "case_key"]].reset_index(drop=True)))
    for op in [o for o in OP_ORDER if o in set(frame["op"])]:
        sections.append((f"{op}", case_table(frame, op)))
        if _plot_rates(frame, op, plots / f"{op}.png"):
            sections.append(("", plots / f"{op}.png"))
    if _plot_train(frame, plots / "train_step_images_per_s.png"):
        sections.append(("Training step throughput", plots / "train_step_images_per_s.png"))
    skipped = frame[frame["status"].isin(["skipped", "unsupported"])]
    if len(skipped):
        reasons = skipped.groupby(["impl", "status", "error"]).size().rename("rows").reset_index()
        sections.append(("Not timed, and why", reasons))
    if _plot_noise(frame, plots / "timing_spread.png"):
        sections.append(("Timing spread", plots / "timing_spread.png"))
    env_rows = {"device": env.get("device_name"), "threads": env.get("threads"),
                "timing": (frame["timing_mode"].dropna().astype(str).str.split(",loops").str[0].iloc[0]
                           if frame["timing_mode"].notna().any() else ""),
                **{k: v for k, v in (env.get("versions") or {}).items() if v},
                "git commit": (env.get("git") or {}).get("commit"), "dirty": (env.get("git") or {}).get("dirty"),
                "suite hash": env.get("suite_hash")}
    sections.append(("Environment", pd.DataFrame({"value": env_rows})))
    warnings = env.get("warnings") or []
    sections.append(("Warnings", "\n".join(f"- {w}" for w in warnings) if warnings else "none recorded"))
    return title, sections


def write_report(run_dir: Path) -> int:
    """Write DIR/report.md, DIR/report.html and DIR/plots/*.png; 0 on success, 2 if the run cannot be read."""
    import sys

    try:
        title, sections = build_sections(Path(run_dir))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"convbench report: cannot read run {run_dir}: {exc}", file=sys.stderr)
        return 2
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        if heading:
            md += [f"## {heading}", ""]
            body.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, Path):
            rel = content.relative_to(run_dir)
            md += [f"![{heading or content.stem}]({rel.as_posix()})", ""]
            body.append(f'<img src="{html.escape(rel.as_posix())}" alt="{html.escape(content.stem)}">')
        elif isinstance(content, pd.DataFrame):
            md += [_md_table(content), ""]
            body.append(content.to_html(escape=True, na_rep="", index=_named_index(content),
                                        float_format=lambda v: f"{v:.3g}"))
        else:
            md += [str(content), ""]
            body.append("".join(f"<p>{html.escape(line.lstrip('- '))}</p>" for line in str(content).splitlines()))
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    atomic_write(Path(run_dir) / "report.md", "\n".join(md))
    atomic_write(Path(run_dir) / "report.html", page)
    print(f"wrote {run_dir}/report.md, report.html and plots/")
    return 0
