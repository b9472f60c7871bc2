"""``bench report DIR``: report.md, report.html and plots/*.png from a run directory.

The report leads with what a reader asks first — how each implementation compares with the library (geometric
mean of speedups over the cases both ran), whether anything failed validation — then per-operation tables and
charts, then the environment and its warnings. Every number carries its unit.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

import pandas as pd

from ..runs.history import DEFAULT_DB
from ..runs.merge import split_by_device
from ..runs.schema import FAILED, atomic_write, case_label, device_key, env_groups, read_rows
from ..runs.summary import BASELINE, OP_ORDER, RATE, speedups
from . import charts
from .history_plots import plot as plot_history
from .network import network_sections


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


def _named_index(df: pd.DataFrame) -> bool:
    """Show the index only when it carries names (case labels, impls), not a 0..n range."""
    return not isinstance(df.index, pd.RangeIndex)


def _md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=_named_index(df), floatfmt=".3g") if not df.empty else "_none_"


def history_plots(env: dict, plots: Path, db: Path | None = None) -> list[Path]:
    """Per-case trends across commits, with change points, for this run's environment — when ``bench history``
    has stored runs of it (results/history.sqlite)."""
    db = db or DEFAULT_DB
    if not db.exists() or not env:
        return []
    try:
        return plot_history(db, out_dir=plots, env_key=device_key(env))
    except (OSError, ValueError, KeyError):  # an unreadable history is not the run's failure
        return []


class Links(list):
    """A report section of (text, relative path) links: rendered as a Markdown list and HTML anchors."""


def profile_links(breakdown: Path) -> Links:
    """profile.md and the Chrome trace of every profiled case × implementation, relative to the run directory."""
    table = pd.read_csv(breakdown)
    links = Links([("profile.md: breakdown and operator tables of every profiled case", "profile.md")])
    for _, r in table[table["status"] == "ok"].iterrows():
        links.append((f"{r['impl']} · {r['case_key']} · {float(r['wall ms']):.3g} ms per call (trace)", r["trace"]))
    return links


def build_sections(run_dir: Path) -> tuple[str, list[tuple[str, object]]]:
    """The report as (title, [(heading, DataFrame | str | Path to png)]) — rendered to both md and html."""
    frame = read_rows(run_dir)
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    suite = env.get("suite", "?")
    title = (f"convbench report: {suite}{'' if suite.startswith('models ') else ' suite'} on "
             f"{env.get('device_name') or env.get('device', '?')}")
    sections: list[tuple[str, object]] = []
    summary = speedups(frame)
    overview = (f"{len(frame)} rows from `{run_dir}`; timed {env.get('start', '?')} → {env.get('end', '?')}, "
                f"{env.get('threads', '?')} CPU thread(s), torch {env.get('torch', '?')}. Every timed row agreed with "
                "the float64 oracle first; speedups are geometric means over the cases both implementations ran.")
    sections.append(("Summary", overview))
    if not summary.empty:
        sections.append(("Speed relative to the library", summary.round(3)))
        if charts.plot_speedup_summary(summary, plots / "speedup.png"):
            sections.append(("", plots / "speedup.png"))
    sections += network_sections(frame, plots, env.get("models"))  # whole networks first: what users decide on
    status = frame.pivot_table(index="impl", columns="status", values="op", aggfunc="count", fill_value=0, sort=False)
    sections.append(("Outcomes (rows per status)", status))
    failed = frame[frame["status"].isin(FAILED)]
    if len(failed):
        sections.append(("Failures", failed[["op", "impl", "status", "error", "case_key"]].reset_index(drop=True)))
    peaks = env.get("peaks")
    if charts.plot_speedup_heatmap(frame, plots / "speedup_heatmap.png"):
        sections.append(("Speed relative to cudnn, per case", plots / "speedup_heatmap.png"))
    if charts.plot_roofline(frame, peaks, plots / "roofline.png"):
        sections.append(("Roofline (measured peaks of this run)", plots / "roofline.png"))
    if charts.plot_pct_peak(frame, plots / "pct_peak.png"):
        sections.append(("Share of the measured peak", plots / "pct_peak.png"))
    for op in [o for o in OP_ORDER if o in set(frame["op"])]:
        if op != "train_step" and charts.plot_axis_curves(frame, op, plots / f"{op}_axes.png"):
            sections.append((f"{op}: throughput along each axis", plots / f"{op}_axes.png"))
        sections.append((f"{op}: every case", case_table(frame, op)))
    if charts.plot_train(frame, plots / "train_step_images_per_s.png"):
        sections.append(("Training step throughput", plots / "train_step_images_per_s.png"))
    breakdown = run_dir / "breakdown.csv"
    if charts.plot_breakdown(breakdown, plots / "profile_breakdown.png"):
        sections.append(("Where the time goes (profiled cases: run --profile, bench profile)",
                         plots / "profile_breakdown.png"))
    if charts.plot_profile_split(breakdown, plots / "train_step_profile.png"):
        sections.append(("Profiled training steps", plots / "train_step_profile.png"))
    if breakdown.exists():
        sections.append(("Profiles: tables and traces", profile_links(breakdown)))
    for png in history_plots(env, plots):
        sections.append((f"History: {png.stem.split('-')[-2]}", png))
    ran = frame[frame["status"] == "ok"]
    if len(ran):
        prov = ran.groupby(["op", "impl", "backend"], sort=False).size().rename("rows").reset_index()
        sections.append(("What ran (backend, as each call reported it)", prov))
        errs = ran.groupby("impl", sort=False)[["max_abs_err", "max_rel_err"]].agg(
            lambda s: pd.to_numeric(s, errors="coerce").max())
        sections.append(("Worst agreement error per implementation (all within the tolerance table: "
                         "reference/tolerance.py)", errs))
    skipped = frame[frame["status"].isin(["skipped", "unsupported"])]
    if len(skipped):
        reasons = skipped.groupby(["impl", "status", "error"]).size().rename("rows").reset_index()
        sections.append(("Not timed, and why", reasons))
    if charts.plot_spread(frame, plots / "timing_spread.png"):
        sections.append(("Timing spread", plots / "timing_spread.png"))
    env_rows = {"device": env.get("device_name"), "threads": env.get("threads"),
                "timing": (frame["timing_mode"].dropna().astype(str).str.split(",loops").str[0].iloc[0]
                           if frame["timing_mode"].notna().any() else ""),
                **{k: v for k, v in (env.get("versions") or {}).items() if v},
                "git commit": (env.get("git") or {}).get("commit"), "dirty": (env.get("git") or {}).get("dirty"),
                "suite hash": env.get("suite_hash"), "compile cache": (env.get("compile_cache") or {}).get("mode")}
    for dtype, flops in ((peaks or {}).get("gemm_flops") or {}).items():
        env_rows[f"measured GEMM peak ({dtype})"] = f"{flops / 1e9:.1f} GFLOP/s"
    if peaks and peaks.get("copy_bytes_per_s"):
        env_rows["measured copy bandwidth"] = f"{peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s"
        env_rows["measured read bandwidth"] = f"{peaks['read_bytes_per_s'] / 1e9:.1f} GB/s"
    sections.append(("Environment", pd.DataFrame({"value": env_rows})))
    warnings = env.get("warnings") or []
    sections.append(("Warnings", "\n".join(f"- {w}" for w in warnings) if warnings else "none recorded"))
    return title, sections


def _page(title: str, style: str, body: str) -> str:
    """A whole HTML page: the title, the style sheet and the body."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")


def write_report(run_dir: Path, announce: bool = True) -> int:
    """Write DIR/report.md, DIR/report.html and DIR/plots/*.png; 0 on success, 2 if the run cannot be read.
    ``announce``: print where they are (bench run names the report in its closing summary instead)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        print(f"convbench report: {run_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        frame = read_rows(run_dir)  # refuse before anything is written
        env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
        if len(env_groups(env, frame)) > 1:
            return _write_device_reports(run_dir, env)
        title, sections = build_sections(run_dir)
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
            data = base64.b64encode(content.read_bytes()).decode()  # inlined: the page needs no other file
            body.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(content.stem)}">')
        elif isinstance(content, Links):
            md += [f"- [{text}]({href})" for text, href in content] + [""]
            body.append("<ul>" + "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>'
                                         for text, href in content) + "</ul>")
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
    page = _page(title, style, "".join(body))
    atomic_write(Path(run_dir) / "report.md", "\n".join(md))
    atomic_write(Path(run_dir) / "report.html", page)
    if announce:
        print(f"report: {Path(run_dir) / 'report.html'} and {Path(run_dir) / 'report.md'} "
              f"({len(list((Path(run_dir) / 'plots').glob('*.png')))} charts in {Path(run_dir) / 'plots'})")
    return 0


def per_case_medians(frames: dict, names: list[str], run_dirs: list[Path]) -> pd.DataFrame:
    """(case, impl) × run: median ms of every ok row, for the cases at least one run timed."""
    cols = {}
    for n, d in zip(names, run_dirs):
        ok = frames[d][frames[d]["status"] == "ok"]
        cols[n] = pd.Series(ok["median_ms"].astype(float).values,
                            index=pd.MultiIndex.from_arrays([[case_label(r) for _, r in ok.iterrows()],
                                                             ok["impl"].values], names=["case", "impl"]))
    return pd.concat(cols, axis=1) if cols else pd.DataFrame()


def _write_device_reports(run_dir: Path, env: dict) -> int:
    """Each environment's report in its by-device/ directory, and the run's own report.md/html side by side."""
    dirs = split_by_device(run_dir, env)
    print(f"{run_dir} holds rows of {len(dirs)} environments: one run directory each under {run_dir / 'by-device'}")
    return write_reports(dirs, run_dir)


def write_reports(run_dirs: list[Path], out: Path | None = None) -> int:
    """``bench report DIR [DIR ...]``: each run's own report; with several runs also a side-by-side report in
    ``out`` (default ``results/runs/report-<names>``): geometric-mean speed relative to cudnn per op and
    implementation, one column per run, the environments side by side, and each run's heatmap and roofline in a
    row. Every directory is checked before anything is written (exit 2 naming the first bad one)."""
    run_dirs = [Path(d) for d in run_dirs]
    frames = {}
    for d in run_dirs:
        try:
            if not d.is_dir():
                raise FileNotFoundError(f"{d} is not a directory")
            frames[d] = read_rows(d)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            print(f"convbench report: cannot read run {d}: {exc}", file=sys.stderr)
            return 2
    for d in run_dirs:
        if write_report(d) != 0:
            return 2
    if len(run_dirs) == 1:
        return 0
    expanded = []  # a run of several environments is compared through its by-device/ parts, never as one
    for d in run_dirs:
        parts = sorted((d / "by-device").glob("*/results.csv")) if (d / "by-device").is_dir() else []
        split = parts and len(env_groups(json.loads((d / "env.json").read_text()), frames[d])) > 1
        expanded += [p.parent for p in parts] if split else [d]
    for d in expanded:
        if d not in frames:
            frames[d] = read_rows(d)
    run_dirs = expanded
    names = [f"{d.parent.parent.name}:{d.name}" if d.parent.name == "by-device" else d.name for d in run_dirs]
    out = Path(out) if out else Path("results") / "runs" / ("report-" + "-vs-".join(names))[:120]
    out.mkdir(parents=True, exist_ok=True)
    col = f"geomean speedup vs {BASELINE}"
    table = pd.concat({n: speedups(frames[d]).set_index(["op", "impl"])[col] for n, d in zip(names, run_dirs)},
                      axis=1)
    envs = {}
    for n, d in zip(names, run_dirs):
        env = json.loads((d / "env.json").read_text()) if (d / "env.json").exists() else {}
        peaks = env.get("peaks") or {}
        envs[n] = {"device": env.get("device_name"), "suite": env.get("suite"), "threads": env.get("threads"),
                   "torch": env.get("torch"), "commit": (env.get("git") or {}).get("commit"),
                   "GEMM peak (GFLOP/s)": ", ".join(f"{k} {v / 1e9:.0f}" for k, v in
                                                   (peaks.get("gemm_flops") or {}).items()),
                   "copy (GB/s)": f"{peaks['copy_bytes_per_s'] / 1e9:.1f}" if peaks.get("copy_bytes_per_s") else ""}
    env_table = pd.DataFrame(envs)
    cases = per_case_medians(frames, names, run_dirs)
    md = [f"# convbench: {' vs '.join(names)}", "", f"## {col}, per run", "", table.round(3).to_markdown(), "",
          "## Environments", "", env_table.to_markdown(), "", "## Median time per case (ms), per run", "",
          cases.to_markdown(floatfmt=".4g") if len(cases) else "_no case timed in every run_", ""]
    cells = []
    for chart in ("speedup_heatmap.png", "roofline.png"):
        row = []
        for n, d in zip(names, run_dirs):
            png = d / "plots" / chart
            if png.exists():
                md += [f"![{n} {chart}]({png.resolve().as_posix()})", ""]
                row.append(f'<td><p>{html.escape(n)}</p><img src="data:image/png;base64,'
                           f'{base64.b64encode(png.read_bytes()).decode()}" alt="{html.escape(n + " " + chart)}"></td>')
        cells.append(f"<tr>{''.join(row)}</tr>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}img{max-width:100%}")
    page = _page(" vs ".join(names), style,
                 f"<h1>{html.escape(' vs '.join(names))}</h1><h2>{html.escape(col)}"
                 f"</h2>{table.to_html(float_format=lambda v: f'{v:.3g}', na_rep='')}<h2>Environments</h2>"
                 f"{env_table.to_html(na_rep='')}<table>{''.join(cells)}</table>"
                 f"<h2>Median time per case (ms), per run</h2>"
                 f"{cases.to_html(float_format=lambda v: f'{v:.4g}', na_rep='')}")
    atomic_write(out / "report.md", "\n".join(md))
    atomic_write(out / "report.html", page)
    print(f"side by side: {out / 'report.html'} and {out / 'report.md'}")
    return 0
