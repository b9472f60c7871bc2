"""``bench compare BASE NEW``: per case and implementation, is NEW faster, slower, the same, or can we not tell?

For each (case, implementation) timed ok in both runs: the ratio of medians new/base, a 95% bootstrap confidence
interval of that ratio (resampling each run's raw samples), and a two-sided Mann–Whitney U test. Verdicts:

- slower / faster: the change is significant (p < alpha and the interval excludes 1) and beyond ``threshold``;
- same: the interval lies inside 1 ± threshold, or the change is neither significant nor beyond the threshold;
- ambiguous: anything else — too few or too noisy samples to say.

A case that was ok in BASE and fails in NEW is ``broken``. Exit: 0 no regression, 1 regression (slower or broken),
2 unreadable input, 3 the environments differ (device, threads, torch, CPU model) unless --allow-env-mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from .env import fingerprint
from .results import FAILED, case_label, read_rows

BOOTSTRAP = 2000


def ratio_interval(base: np.ndarray, new: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(new)/median(base)."""
    b = np.median(base[rng.integers(0, len(base), (BOOTSTRAP, len(base)))], axis=1)
    n = np.median(new[rng.integers(0, len(new), (BOOTSTRAP, len(new)))], axis=1)
    lo, hi = np.percentile(n / b, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(ratio: float, lo: float, hi: float, p: float, threshold: float, alpha: float) -> str:
    significant = p < alpha and (lo > 1.0 or hi < 1.0)
    if significant and ratio > 1 + threshold:
        return "slower"
    if significant and ratio < 1 - threshold:
        return "faster"
    if (lo >= 1 - threshold and hi <= 1 + threshold) or (not significant and 1 - threshold <= ratio <= 1 + threshold):
        return "same"
    return "ambiguous"


def compare_frames(base: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.10, alpha: float = 0.01,
                   seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    b = base.set_index(["case_key", "impl"])
    n = new.set_index(["case_key", "impl"])
    out = []
    for key in b.index.union(n.index):
        rb = b.loc[key] if key in b.index else None
        rn = n.loc[key] if key in n.index else None
        row = {"case": case_label((rn if rn is not None else rb).to_dict() | {"op": key[0].split("|")[0]}),
               "impl": key[1], "case_key": key[0], "base_ms": np.nan, "new_ms": np.nan, "ratio": np.nan,
               "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
        if rb is None or rn is None:
            row["verdict"] = "new case" if rb is None else "missing"
        elif rb["status"] != "ok" or rn["status"] != "ok":
            row["verdict"] = ("broken" if rb["status"] == "ok" and rn["status"] in FAILED
                              else "fixed" if rn["status"] == "ok" else f"{rb['status']}→{rn['status']}")
        else:
            tb = np.array([float(t) for t in str(rb["times_ms"]).split()])
            tn = np.array([float(t) for t in str(rn["times_ms"]).split()])
            ratio = float(np.median(tn) / np.median(tb))
            lo, hi = ratio_interval(tb, tn, rng)
            p = float(mannwhitneyu(tn, tb, alternative="two-sided").pvalue) if min(len(tb), len(tn)) >= 2 else 1.0
            row.update(base_ms=float(np.median(tb)), new_ms=float(np.median(tn)), ratio=ratio, ci_low=lo, ci_high=hi,
                       p_value=p, verdict=verdict(ratio, lo, hi, p, threshold, alpha))
        out.append(row)
    return pd.DataFrame(out)


def _load(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else None
    if env is None:
        raise FileNotFoundError(f"{env_path} is missing")
    return read_rows(run_dir), env


def compare_runs(base_dir: Path, new_dir: Path, threshold: float = 0.10, alpha: float = 0.01,
                 allow_env_mismatch: bool = False, out: Path | None = None) -> int:
    if not (0 < threshold < 1):
        print(f"convbench compare: --threshold must be in (0, 1), got {threshold}", file=sys.stderr)
        return 2
    try:
        base, base_env = _load(Path(base_dir))
        new, new_env = _load(Path(new_dir))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        print(f"convbench compare: cannot read the runs: {exc}", file=sys.stderr)
        return 2
    fb, fn = fingerprint(base_env), fingerprint(new_env)
    if fb != fn:
        diff = {k: (fb[k], fn[k]) for k in fb if fb[k] != fn[k]}
        msg = "the runs come from different environments: " + ", ".join(
            f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
        if not allow_env_mismatch:
            print(f"convbench compare: {msg} (pass --allow-env-mismatch to compare anyway)", file=sys.stderr)
            return 3
        print(f"warning: {msg}", file=sys.stderr)
    table = compare_frames(base, new, threshold, alpha)
    if out:
        table.to_csv(out, index=False)
    _print(table, threshold)
    regressions = table["verdict"].isin(["slower", "broken"]).sum()
    return 1 if regressions else 0


def _print(table: pd.DataFrame, threshold: float) -> None:
    from rich.console import Console
    from rich.table import Table

    colors = {"slower": "red", "broken": "red", "faster": "green", "same": "dim", "ambiguous": "yellow"}
    t = Table(title=f"new vs base (threshold ±{threshold:.0%}, 95% bootstrap interval of the median ratio)")
    for col in ("case", "impl", "base ms", "new ms", "ratio", "95% interval", "p", "verdict"):
        t.add_column(col, overflow="fold")
    for _, r in table.iterrows():
        fmt = (lambda v, f: "" if pd.isna(v) else format(v, f))  # noqa: E731
        interval = "" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        c = colors.get(r["verdict"], "")
        t.add_row(r["case"], r["impl"], fmt(r["base_ms"], ".4g"), fmt(r["new_ms"], ".4g"), fmt(r["ratio"], ".3f"),
                  interval, fmt(r["p_value"], ".2g"), f"[{c}]{r['verdict']}[/{c}]" if c else r["verdict"])
    console = Console()
    console.print(t)
    counts = table["verdict"].value_counts().to_dict()
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()))
