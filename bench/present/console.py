"""What ``bench run`` says while it runs and when it ends: one line per finished case with its numbers, and a
one-screen answer. Everything is plain text, one line per row, so that a CI log, ``| tee`` and a terminal read the
same; a terminal also gets a rich progress bar with an ETA below the lines (bench/commands/runner.py). Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..runs.schema import FAILED, case_label
from ..runs.summary import BASELINE, OP_ORDER, geomean, ratios

#: the dtype names of a console line (the results keep torch's names)
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
#: failed rows listed by name at the end; the rest are counted (results.csv has them all)
MAX_FAILURES = 8


def label(row) -> str:
    """A case as a person names it: ``conv2d 8×64×28×28 k3 s1 p1 →32 nchw fp32``."""
    text = case_label(row)
    dtype = str(row["dtype"])
    return text[: -len(dtype)] + SHORT_DTYPE.get(dtype, dtype) if text.endswith(dtype) else text


def duration(ms: float) -> str:
    """A time with the unit that keeps three significant digits readable: 830 ns, 43.9 µs, 1.27 ms, 2.4 s."""
    if ms < 1e-3:
        return f"{ms * 1e6:.3g} ns"
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    if ms < 1e3:
        return f"{ms:.3g} ms"
    return f"{ms / 1e3:.3g} s"


def _number(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _cost(row) -> tuple[float, str]:
    """What ranks a row and how it is written: its median time, or (``--metric instructions``) its count."""
    t = _number(row.get("median_ms"))
    if not math.isnan(t):
        return t, duration(t)
    n = _number(row.get("instructions"))
    return n, ("" if math.isnan(n) else f"{n / 1e6:.3g} M instr")


def reason(row, width: int = 60) -> str:
    """The first line of a row's error, cut to ``width`` characters."""
    text = str(row.get("error") or "").strip().splitlines()
    text = text[0] if text else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def case_line(rows: list[dict], hidden: frozenset[str] = frozenset(), baseline: str = BASELINE) -> str:
    """One finished case: its label, then each implementation's median and its speed relative to ``baseline``
    (baseline time / its time: above 1× is faster), the fastest marked ``best``; a failure with its status and
    short reason. ``hidden``: implementations named once at the start (not timed on this device), left out here
    unless they failed."""
    if not rows:
        return ""
    parts, ranked = [], []
    base = next((_cost(r)[0] for r in rows if r["impl"] == baseline and r["status"] == "ok"), math.nan)
    for r in rows:
        impl, status = r["impl"], r["status"]
        if status in ("unsupported", "skipped") and impl in hidden:
            continue
        if status == "unsupported":
            parts.append(f"{impl} n/a")
        elif status == "skipped":
            parts.append(f"{impl} skipped ({reason(r, 40)})")
        elif status in FAILED:
            parts.append(f"{impl} {status.upper()} ({reason(r)})")
        else:
            cost, text = _cost(r)
            ratio = base / cost if impl != baseline and base == base and cost == cost and cost > 0 else None
            parts.append(f"{impl} {text}" + (f" {ratio:.2f}×" if ratio else ""))
            if cost == cost:
                ranked.append((cost, impl))
    if len(ranked) > 1:
        parts.append(f"best {min(ranked)[1]}")
    return " · ".join([label(rows[0])] + parts)


def not_run_lines(reasons: dict[str, str], device: str) -> list[str]:
    """The implementations not timed on ``device`` at all, each named once with why (their rows say
    ``unsupported``, or ``skipped`` when only checked against the oracle; the case lines leave them out)."""
    return [f"not timed on {device}: {name} — {why}" for name, why in reasons.items()]


def _ratio_cell(values: pd.Series) -> str:
    if values.empty:
        return "–"
    g = geomean(values)
    lo, hi = values.min(), values.max()
    return f"{g:.2f}×" if len(values) == 1 or math.isclose(lo, hi, rel_tol=5e-3) else f"{g:.2f}× ({lo:.2g}–{hi:.2g})"


def _columns(table: list[list[str]]) -> list[str]:
    """A plain text table, one line per row, columns as wide as their longest cell (never folded)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def speed_table(frame: pd.DataFrame, impls: list[str], baseline: str = BASELINE) -> list[str]:
    """Per op: each implementation's geometric-mean speed relative to ``baseline`` over the cases both ran ok, with
    the range of the per-case ratios, and the best share of the measured peak (roofline) among the ok rows."""
    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        return []
    counted = pd.to_numeric(ok.get("median_ms"), errors="coerce").isna().all()  # --metric instructions
    ok["cost"] = pd.to_numeric(ok.get("instructions" if counted else "median_ms"), errors="coerce")
    # a case measured on several machines or devices (run --executor ray --each-device) is one pair per place
    ok["where"] = ok["case_key"].astype(str) + "@" + ok.get("env_key", pd.Series("", index=ok.index)).astype(str)
    ok = ok[ok["cost"].abs() < math.inf]  # a number, and finite
    shown = [i for i in impls if i in set(ok["impl"]) and i != baseline]
    has_base = baseline in set(ok["impl"])
    head = ["op", "cases"] + shown + ["best % of peak"]
    table, over = [head], False
    for op in [o for o in OP_ORDER if o in set(ok["op"])] + sorted(set(ok["op"]) - set(OP_ORDER)):
        sub = ok[ok["op"] == op]
        row = [op, str(sub["where"].nunique())]
        for impl in shown:
            mine = sub[sub["impl"] == impl]["cost"]
            row.append(_ratio_cell(ratios(sub, impl, baseline, "cost", "where").dropna()) if has_base else
                       f"{geomean(mine):.3g}" if len(mine) else "–")
        peak = pd.to_numeric(sub.get("pct_peak", pd.Series(dtype=float)), errors="coerce")
        if peak.notna().any():
            best = sub.loc[peak.idxmax()]
            row.append(f"{peak.max():.3g}% {best['impl']}")
            over = over or peak.max() > 100
        else:
            row.append("–")
        table.append(row)
    what = "instructions" if counted else "time"
    title = (f"{'instructions' if counted else 'speed'} relative to {baseline} = {baseline}'s {what} / its {what} "
             f"(geometric mean over the cases both ran, min–max per case; above 1× "
             f"{'executes fewer' if counted else 'is faster'})" if has_base else
             f"geometric-mean {'instructions' if counted else 'time (ms)'} per case (no {baseline} row to compare)")
    note = ("above 100% of peak: the case beats the roof measured at the start — a memory-bound case whose data stays "
            "in cache, or fewer than the nominal FLOPs (e.g. Winograd); the report's roofline shows each")
    return [title] + _columns(table) + ([note] if over else [])


def closing_summary(rows: list[dict], env: dict, out: Path, impls: list[str], hidden: dict[str, str],
                    report: Path | None, log_note: str | None = None) -> list[str]:
    """The one-screen answer at the end of a run (≤ ~40 lines): what ran where, the speed table, what could not
    run, the failures (the first MAX_FAILURES named), the row counts, where the report is and what the log holds."""
    frame = pd.DataFrame(rows)
    cases = frame["case_key"].nunique() if not frame.empty else 0
    where = env.get("device_name") or env.get("device", "")
    n = env.get("threads")
    threads = f", {n} thread{'s' if n != 1 else ''}" if n else ""
    took = f" in {env['cases_s']:.0f} s" if isinstance(env.get("cases_s"), (int, float)) else ""
    lines = [f"== convbench {env.get('suite', '')}: {cases} case{'s' if cases != 1 else ''} × {len(impls)} "
             f"implementation{'s' if len(impls) != 1 else ''} on "
             f"{where}{threads}{took} =="]
    if not frame.empty:
        lines += speed_table(frame, impls)
    lines += not_run_lines(hidden, env.get("device", ""))
    failed = [r for r in rows if r["status"] in FAILED]
    for r in failed[:MAX_FAILURES]:
        lines.append(f"{r['status'].upper()} {r['impl']} {label(r)}: {reason(r, 100)}")
    if len(failed) > MAX_FAILURES:
        lines.append(f"… {len(failed) - MAX_FAILURES} more failed rows in {out / 'results.csv'}")
    counts = frame["status"].value_counts() if not frame.empty else pd.Series(dtype=int)
    lines.append(f"{len(rows)} rows: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
                 + f" → {out}")
    if report is not None:
        lines.append(f"report: {report}")
    if log_note:  # runlog.mention: what run.log holds
        lines.append(log_note)
    return lines
