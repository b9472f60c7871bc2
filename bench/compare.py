"""``bench compare BASE [NEW]``: per case and implementation, is NEW faster, slower, the same, or can we not tell?

Two stored runs saw two different machine states: on a shared VM identical code differs by a median 17% between
back-to-back runs, so a bare ratio of medians is not evidence. ``compare`` therefore

- normalises by the control implementation (``--normalize cudnn``, the default when both runs have its rows):
  each implementation's time relative to the library's, measured in the same interleaved rounds of the same run,
  so a machine that is 10% slower across the board cancels out;
- measures the **drift** the control rows still show between the runs (bench/stats.py ``control_drift``) and
  widens every interval by it: a change smaller than that drift is ``ambiguous``, never a regression;
- tests each difference (bootstrap interval of the ratio, Mann–Whitney p-value) against ``--threshold``.

With ``--metric instructions`` it compares Callgrind counts (deterministic: the verdict is the ratio against a
tight threshold, 1% by default). For a regression gate on a shared runner use ``bench ab`` (interleaved A/B in one
invocation) or instruction counts; ``compare`` is for stored runs.

A case that was ok in BASE and fails in NEW is ``broken``. Exit: 0 no regression, 1 regression (slower or broken),
2 bad usage or unreadable input, 3 the environments differ (device, threads, torch, CPU model) unless
--allow-env-mismatch. With one argument, NEW is compared with the baseline of its environment
(``results/baselines/<device-key>/``, see ``bench baseline promote``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import FAILED, atomic_write, case_label, env_groups, fingerprint, read_env, read_rows
from .stats import Ratio, classify, control_drift, unpaired_ratio

CONTROL = "cudnn"
DEFAULT_THRESHOLD = {"time": 0.10, "instructions": 0.01}
TABLE_COLUMNS = ("case", "impl", "base", "new", "ratio", "ci_low", "ci_high", "p_value", "verdict", "note")
REGRESSIONS = ("slower", "broken")


class CompareError(Exception):
    """Unreadable input: exit code 2."""


def _times(row) -> np.ndarray:
    return np.array([float(t) for t in str(row["times_ms"]).split()])


def _value(row, metric: str) -> float:
    v = row.get("instructions") if metric == "instructions" else row.get("median_ms")
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def compare_frames(base: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.10, alpha: float = 0.01,
                   seed: int = 0, normalize: str = "none", metric: str = "time") -> pd.DataFrame:
    """One row per (case, implementation) of either run: values, ratio new/base, 95% interval, p-value, verdict.

    ``normalize='cudnn'``: every non-control implementation's ratio is divided by the control's ratio on the same
    case; the control rows themselves get the verdict ``control`` (they are the yardstick, not the subject)."""
    rng = np.random.default_rng(seed)
    b = base.set_index(["case_key", "impl"])
    n = new.set_index(["case_key", "impl"])
    keys = b.index.union(n.index)
    ok = {k for k in keys
          if k in b.index and k in n.index and b.loc[k]["status"] == "ok" and n.loc[k]["status"] == "ok"}
    normalized = normalize != "none" and metric == "time"
    control = normalize if normalized else CONTROL

    # drift of the control rows between the runs (log scale), from every case both runs timed ok
    ctrl_logs = [math.log(_value(n.loc[k], "time") / _value(b.loc[k], "time")) for k in ok if k[1] == control]
    drift = control_drift(np.array(ctrl_logs), normalized) if metric == "time" else 0.0

    out = []
    for key in keys:
        rb = b.loc[key] if key in b.index else None
        rn = n.loc[key] if key in n.index else None
        some = rn if rn is not None else rb
        row = {"case": case_label(some.to_dict() | {"op": key[0].split("|")[0]}), "impl": key[1], "case_key": key[0],
               "base": math.nan, "new": math.nan, "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "p_value": math.nan, "verdict": "", "note": ""}
        if rb is None or rn is None:
            row["verdict"] = "new case" if rb is None else "missing"
        elif key not in ok:
            row["verdict"] = ("broken" if rb["status"] == "ok" and rn["status"] in FAILED
                              else "fixed" if rn["status"] == "ok" else rb["status"] if rb["status"] == rn["status"]
                              else f"{rb['status']}→{rn['status']}")
        elif metric == "instructions":
            vb, vn = _value(rb, metric), _value(rn, metric)
            if not (vb > 0 and vn > 0):
                row["verdict"], row["note"] = "ambiguous", "no instruction count in one of the runs"
            else:
                r = vn / vb
                row.update(base=vb, new=vn, ratio=r, ci_low=r, ci_high=r,
                           verdict="slower" if r > 1 + threshold else "faster" if r < 1 - threshold else "same")
        else:
            ctrl_key = (key[0], control)
            use_ctrl = normalized and key[1] != control and ctrl_key in ok
            r: Ratio = unpaired_ratio(_times(rb), _times(rn), rng,
                                      (_times(b.loc[ctrl_key]), _times(n.loc[ctrl_key])) if use_ctrl else None)
            row.update(base=_value(rb, metric), new=_value(rn, metric), ratio=r.ratio, ci_low=r.ci_low,
                       ci_high=r.ci_high, p_value=r.p_value)
            if normalized and key[1] == control:
                row["verdict"], row["note"] = "control", "the yardstick of --normalize (raw ratio shown)"
            elif normalized and not use_ctrl:
                row["verdict"] = classify(r, threshold, alpha, drift)
                row["note"] = f"no {control} row on this case: not normalised"
            else:
                row["verdict"] = classify(r, threshold, alpha, drift)
                if drift > 0 and row["verdict"] == "ambiguous" and abs(math.log(r.ratio)) <= drift:
                    row["note"] = f"change within the runs' drift (±{math.expm1(drift):.1%})"
        out.append(row)
    table = pd.DataFrame(out, columns=[*TABLE_COLUMNS, "case_key"])
    table.attrs.update(drift=drift, normalize=control if normalized else "none", metric=metric, threshold=threshold)
    return table


def _load(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    try:
        return read_rows(Path(run_dir)), read_env(Path(run_dir))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CompareError(f"cannot read {run_dir}: {exc}") from None


def env_mismatch(base_env: dict, new_env: dict) -> str | None:
    fb, fn = fingerprint(base_env), fingerprint(new_env)
    if fb == fn:
        return None
    return "the runs come from different environments: " + ", ".join(
        f"{k} {fb[k]!r} vs {fn[k]!r}" for k in fb if fb[k] != fn[k])


def compare_runs(base_dir: Path, new_dir: Path | None = None, threshold: float | None = None, alpha: float = 0.01,
                 allow_env_mismatch: bool = False, out: Path | None = None, normalize: str = "auto",
                 metric: str = "time", json_out: Path | None = None, markdown_out: Path | None = None) -> int:
    threshold = DEFAULT_THRESHOLD[metric] if threshold is None else threshold
    if not (0 < threshold < 1):
        print(f"convbench compare: --threshold must be in (0, 1), got {threshold}", file=sys.stderr)
        return 2
    try:
        if new_dir is None:  # one argument: the run against the baseline of its environment
            from .baseline import find

            new_dir = Path(base_dir)
            found = find(_load(new_dir)[1])
            if found is None:
                raise CompareError(f"no baseline for the environment of {new_dir} under results/baselines/ "
                                   "(promote one with `bench baseline promote RUN_DIR`)")
            base_dir = found
        base, base_env = _load(base_dir)
        new, new_env = _load(new_dir)
    except CompareError as exc:
        print(f"convbench compare: {exc}", file=sys.stderr)
        return 2
    if metric == "instructions" and not ({"instructions"} <= set(base.columns) & set(new.columns)):
        print("convbench compare: --metric instructions needs runs made with `run --metric instructions`",
              file=sys.stderr)
        return 2
    # rows are compared only with rows of the same environment: a run of several devices (run --executor ray)
    # is compared device by device, never one device's rows against another's
    gb, gn = env_groups(base_env, base), env_groups(new_env, new)
    if len(gb) == 1 and len(gn) == 1:
        (b_env, b_rows), (n_env, n_rows) = next(iter(gb.values())), next(iter(gn.values()))
        msg = env_mismatch(b_env, n_env)
        if msg:
            if not allow_env_mismatch:
                print(f"convbench compare: {msg} (pass --allow-env-mismatch to compare anyway)", file=sys.stderr)
                return 3
            print(f"warning: {msg}", file=sys.stderr)
        pairs = {"": (b_rows, n_rows)}
    else:
        shared = [k for k in gb if k in gn]
        for k in [k for k in gb if k not in gn] + [k for k in gn if k not in gb]:
            print(f"note: only {'BASE' if k in gb else 'NEW'} has rows of {k}: not compared", file=sys.stderr)
        if not shared:
            print(f"convbench compare: the runs share no environment (BASE: {', '.join(gb)}; NEW: {', '.join(gn)}); "
                  "rows of different devices are never compared", file=sys.stderr)
            return 3
        pairs = {k: (gb[k][1], gn[k][1]) for k in shared}
    tables = []
    for key, (b_rows, n_rows) in pairs.items():
        control = normalize
        if control == "auto":
            has = [CONTROL in set(f.loc[f["status"] == "ok", "impl"]) for f in (b_rows, n_rows)]
            control = CONTROL if all(has) and metric == "time" else "none"
        elif control != "none" and not (control in set(b_rows["impl"]) and control in set(n_rows["impl"])):
            print(f"convbench compare: --normalize {control}: both runs need {control} rows", file=sys.stderr)
            return 2
        table = compare_frames(b_rows, n_rows, threshold, alpha, normalize=control, metric=metric)
        title = (f"{new_dir} vs {base_dir}{f' on {key}' if key else ''}: {metric}, threshold ±{threshold:.0%}, "
                 f"normalised by {table.attrs['normalize']}, control drift ±{math.expm1(table.attrs['drift']):.1%}")
        print_table(table, title)
        tables.append((title, table.assign(env_key=key) if key else table))
    table = pd.concat([t for _, t in tables], ignore_index=True)
    write_outputs(table, "; ".join(t for t, _ in tables), out, json_out, markdown_out)
    return 1 if table["verdict"].isin(REGRESSIONS).any() else 0


# ---- output shared with bench ab ----------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def json_rows(table: pd.DataFrame) -> list[dict]:
    """The contract's JSON rows: case, impl, ratio, ci_low, ci_high, p_value, verdict (NaN → null), and more."""
    rows = []
    for r in table.to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return rows


def markdown(table: pd.DataFrame, title: str) -> str:
    counts = table["verdict"].value_counts().to_dict()
    lines = [f"### {title}", "", ", ".join(f"**{n}** {v}" for v, n in counts.items()), "",
             "| verdict | ratio | 95% interval | p | impl | case | note |", "|---|---|---|---|---|---|---|"]
    order = {"broken": 0, "slower": 1, "ambiguous": 2, "faster": 3}
    for r in sorted(table.to_dict("records"), key=lambda r: (order.get(r["verdict"], 9), r["case"], r["impl"])):
        interval = "" if not math.isfinite(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lines.append(f"| {r['verdict']} | {_fmt(r['ratio'], '.3f')} | {interval} | {_fmt(r['p_value'], '.2g')} | "
                     f"{r['impl']} | {r['case']} | {r['note']} |")
    return "\n".join(lines) + "\n"


def write_outputs(table: pd.DataFrame, title: str, csv: Path | None, json_out: Path | None,
                  markdown_out: Path | None) -> None:
    if csv:
        table.to_csv(csv, index=False)
    if json_out:
        atomic_write(Path(json_out), json.dumps(json_rows(table), indent=1) + "\n")
    if markdown_out:
        atomic_write(Path(markdown_out), markdown(table, title))


def print_table(table: pd.DataFrame, title: str, file=None) -> None:
    """One plain line per row (readable in a CI log, nothing folded), then the verdict counts."""
    file = file or sys.stdout
    print(title, file=file)
    width = max([len(str(i)) for i in table["impl"]] + [4])
    for r in table.to_dict("records"):
        interval = "" if not math.isfinite(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        p = f"p={r['p_value']:.2g}" if math.isfinite(r["p_value"]) else ""
        note = f"  ({r['note']})" if r["note"] else ""
        print(f"{r['verdict']:<10} {_fmt(r['ratio'], '.3f'):>6} {interval:<16} {p:<9} {r['impl']:<{width}} "
              f"{r['case']}{note}", file=file)
    counts = table["verdict"].value_counts().to_dict()
    print(", ".join(f"{n} {v}" for v, n in counts.items()), file=file, flush=True)
