"""``bench compare BASE [NEW]``: per case and implementation, is NEW faster, slower, the same, or can we not tell?

Two stored runs saw two different machine states: on a shared VM identical code differs by a median 17% between
back-to-back runs, and whole cases (all implementations of one case together: its inputs, a neighbour during that
case) move by up to 60%, so a bare ratio of medians is not evidence. ``compare`` therefore

- normalises by the control implementation (``--normalize cudnn``, the default when both runs have its rows), timed
  in every round its subjects are (bench/measure/timing.py): each implementation's ratio is divided by its case's
  **shared factor**, the control's ratio on the same case — or, where the case has two or more other implementations,
  the median of the control's ratio and theirs (each less that implementation's typical change over all cases), so
  that one row's jump between runs, the control's included, cannot make a whole case look slower;
- carries every sample set's noise into the ratio (a bootstrap of each run's median, the control's and the other
  references' too), and adds the **between-run scatter** the normalised rows show around each implementation's
  typical change (a robust random-effects estimate, ``between_run_scatter``) and a share of the case's own move
  between the runs (``CASE_MOVE_SHARE``);
- judges a case without its control row **raw**, and says so: against the runs' overall shift or the move of its
  case's other implementations, whichever is larger, and the scatter between cases of every row's raw ratio;
- corrects for testing many pairs at once: the p-values of all judged pairs of one comparison are Holm-adjusted
  (``p_value``; ``p_unadjusted`` beside it), so identical code gives no verdict with probability ≥ 1 − alpha under
  this model;
- calls a pair ``slower``/``faster`` only when the adjusted p-value is below ``--alpha``, the interval excludes 1
  and the estimate is beyond ``--threshold`` (bench/runs/stats.py ``classify``).

A regression of a path every implementation runs — argument checks in kernels/base.py or reference/args.py, the
control included — moves the control and its subjects alike and is invisible to a normalised ``compare``; ``bench
ab`` judges each implementation on its own and sees it.

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

from .baseline import find
from .schema import FAILED, atomic_write, case_label, env_groups, fingerprint, read_env, read_rows
from .stats import BOOTSTRAP, Ratio, classify

CONTROL = "cudnn"
DEFAULT_THRESHOLD = {"time": 0.10, "instructions": 0.01}
TABLE_COLUMNS = ("case", "impl", "base", "new", "ratio", "ci_low", "ci_high", "p_value", "p_unadjusted", "verdict",
                 "note")
REGRESSIONS = ("slower", "broken")


#: the share of a case's own move between two runs (all its implementations together, against the machine's) that
#: its implementations do not share, as a standard deviation: on the 2-vCPU VM, normalised rows of cases that moved
#: by 5–20% scattered by ±4% (rms), of cases that moved by more than 20% by ±9%
CASE_MOVE_SHARE = 0.5


class CompareError(Exception):
    """Unreadable input: exit code 2."""


def _times(row) -> np.ndarray:
    return np.array([float(t) for t in str(row["times_ms"]).split()])


def _pct(log_value: float) -> str:
    return f"{math.expm1(log_value):.1%}" if math.isfinite(log_value) else "not estimated"


def _value(row, metric: str) -> float:
    v = row.get("instructions") if metric == "instructions" else row.get("median_ms")
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ---- statistics of two stored runs: between-run scatter, multiplicity --------------------------------------------
#: median of the χ² distribution with one degree of freedom: the median of z² for standard normal z
CHI2_1_MEDIAN = 0.454936423119572
#: mean of z² for standard normal z given |z| < 3
TRUNCATED_CHI2_1_MEAN = 1 - 6 * math.exp(-4.5) / math.sqrt(2 * math.pi) / math.erf(3 / math.sqrt(2))
#: fewest judged rows from which the between-run scatter is estimated (fewer: judged on the samples alone)
MIN_SCATTER_ROWS = 5
#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def boot_log_median(samples: np.ndarray, rng: np.random.Generator,
                    n_boot: int = BOOTSTRAP) -> tuple[float, np.ndarray]:
    """log of the median of ``samples`` and ``n_boot`` bootstrap replicates of it (every sample set is resampled on
    its own, so a ratio built from several sets carries the sampling noise of each)."""
    s = np.asarray(samples, float)
    return float(np.log(np.median(s))), np.log(np.median(s[rng.integers(0, len(s), (n_boot, len(s)))], axis=1))


def between_run_scatter(x: np.ndarray, se: np.ndarray, robust: bool = True, groups=None) -> float:
    """τ (log scale): the spread of the row-to-row variation between two runs that each row's own samples cannot
    see (a process's code and data placement, a neighbour during one case), estimated from the scatter of many rows'
    log ratios ``x`` around their median, given each row's sampling standard error ``se``. With ``groups`` (a label
    per row, e.g. the implementation), each row is taken relative to its group's median instead: a group's
    systematic change (an implementation that got slower everywhere) is not scatter.

    ``robust``: the τ for which the median of (x − median)² / (se² + τ²) is the median of χ²₁, then refined on the
    rows within 3 standard deviations to the τ at which their mean is that of a χ²₁ truncated there (a
    random-effects estimate that a minority of rows that really changed moves little). Otherwise a moment estimate,
    the mean of each row's (x − median)² in excess of its se², which every outlying row inflates (for raw times,
    where whole cases jump between runs and nothing else can tell). 0 when the samples explain the scatter; NaN with
    fewer than MIN_SCATTER_ROWS finite rows."""
    x, se = np.asarray(x, float), np.asarray(se, float)
    labels = np.zeros(len(x), int) if groups is None else np.unique(np.asarray(groups, str), return_inverse=True)[1]
    keep = np.isfinite(x) & np.isfinite(se)
    x, se, labels = x[keep], se[keep], labels[keep]
    n = len(x)
    if n < MIN_SCATTER_ROWS:
        return math.nan
    centre = np.zeros(n)
    for g in np.unique(labels):
        centre[labels == g] = np.median(x[labels == g])
    fitted = len(np.unique(labels))
    d2 = (x - centre) ** 2 * n / max(1, n - fitted)  # the medians are fitted: a small-sample correction
    if not robust:  # each row's excess over its own sampling variance (never negative: errs on the wide side)
        return math.sqrt(float(np.mean(np.maximum(0.0, d2 - se ** 2))))

    v = se ** 2
    tau2 = _solve_tau2(lambda t2: float(np.median(d2 / np.maximum(v + t2, 1e-300))) - CHI2_1_MEDIAN, float(d2.max()))
    for _ in range(20):  # refined on the rows within 3 sd (an efficient estimate that real changes do not move)
        inside = d2 / np.maximum(v + tau2, 1e-300) < 9.0
        if inside.sum() < MIN_SCATTER_ROWS:
            break
        d2i, vi = d2[inside], v[inside]
        new = _solve_tau2(lambda t2, d2i=d2i, vi=vi: float(np.mean(d2i / np.maximum(vi + t2, 1e-300)))
                          - TRUNCATED_CHI2_1_MEAN, float(d2i.max()))
        done = abs(new - tau2) <= 1e-9 * max(tau2, 1e-12)
        tau2 = new
        if done:
            break
    return math.sqrt(tau2)


def _solve_tau2(excess, top: float) -> float:
    """The τ² ≥ 0 at which the decreasing function ``excess`` crosses 0 (0 if it is not positive at 0)."""
    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, top / CHI2_1_MEDIAN + 1e-12
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return hi


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (valid under any dependence between them): reject the
    hypotheses whose adjusted p-value is below alpha and the chance of any false rejection in the family is at most
    alpha. NaN stays NaN and does not count in the family."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def judged_ratio(x: float, sd: float, n: int, shift: float = 0.0) -> Ratio:
    """A log-scale estimate ``x`` with standard deviation ``sd`` (sampling noise and between-run scatter) as a
    Ratio: 95% interval exp(x ± 1.96·sd), widened by ``shift`` (a log-scale offset the data cannot separate from
    the code, e.g. the whole machine's drift between two runs when no control row is there to cancel it); the
    two-sided p-value that the change is no larger than ``shift``."""
    if not (math.isfinite(x) and math.isfinite(sd)):
        return Ratio(math.nan, math.nan, math.nan, 1.0, n)
    beyond = max(0.0, abs(x) - shift)
    p = 1.0 if beyond == 0 else (0.0 if sd <= 0 else math.erfc(beyond / sd / math.sqrt(2)))
    half = Z95 * max(sd, 0.0) + shift
    return Ratio(math.exp(x), math.exp(x - half), math.exp(x + half), p, n)


def compare_frames(base: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.10, alpha: float = 0.01,
                   seed: int = 0, normalize: str = "none", metric: str = "time") -> pd.DataFrame:
    """One row per (case, implementation) of either run: values, ratio new/base, 95% interval, p-value, verdict.

    Time (see the module docstring): each ok row's log ratio of medians, with bootstrap replicates of every sample
    set involved; ``normalize=IMPL`` divides a subject's ratio by its case's shared factor (the control's ratio, or
    the median of the control's and the case's other implementations' where there are two or more others), and the
    control rows get the verdict ``control`` (the yardstick, not the subject). A row is judged against its own
    sampling noise plus the between-run scatter estimated across the rows of its family (normalised rows, raw
    rows), raw rows also against the runs' overall shift, and the p-values of all judged rows are Holm-adjusted
    (``p_value``; ``p_unadjusted`` beside it)."""
    rng = np.random.default_rng(seed)
    b = base.set_index(["case_key", "impl"])
    n = new.set_index(["case_key", "impl"])
    keys = b.index.union(n.index)
    ok = {k for k in keys
          if k in b.index and k in n.index and b.loc[k]["status"] == "ok" and n.loc[k]["status"] == "ok"}
    normalized = normalize != "none" and metric == "time"
    control = normalize if normalized else CONTROL

    rows: dict = {}
    raw: dict = {}  # ok time rows: (log ratio, its bootstrap replicates, samples it rests on)
    for key in keys:
        rb = b.loc[key] if key in b.index else None
        rn = n.loc[key] if key in n.index else None
        some = rn if rn is not None else rb
        row = {"case": case_label(some.to_dict() | {"op": key[0].split("|")[0]}), "impl": key[1], "case_key": key[0],
               "base": math.nan, "new": math.nan, "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "p_value": math.nan, "p_unadjusted": math.nan, "verdict": "", "note": ""}
        rows[key] = row
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
            row.update(base=_value(rb, metric), new=_value(rn, metric))
            tb, tn = _times(rb), _times(rn)
            if not (len(tb) and len(tn) and (tb > 0).all() and (tn > 0).all()):
                row["verdict"], row["note"] = "ambiguous", "no samples in one of the runs"
                continue
            (lb, bb), (ln, bn) = boot_log_median(tb, rng), boot_log_median(tn, rng)
            raw[key] = (ln - lb, bn - bb, min(len(tb), len(tn)))

    # each implementation's typical change against the control across the cases (log scale): an implementation that
    # got slower everywhere must not move the shared factor of the cases it is a reference of
    typical = {}
    if normalized:
        for impl in {k[1] for k in raw} - {control}:
            d = [raw[k][0] - raw[(k[0], control)][0] for k in raw if k[1] == impl and (k[0], control) in raw]
            typical[impl] = float(np.median(d)) if d else 0.0

    # each judged row: (family, log estimate, its bootstrap replicates, samples, the case's shared factor); control
    # rows show their raw ratio
    judged: dict = {}
    for key, (x, boot, size) in raw.items():
        case, impl = key
        if normalized and impl == control:
            lo, hi = np.percentile(boot, [2.5, 97.5])
            rows[key].update(ratio=math.exp(x), ci_low=math.exp(lo), ci_high=math.exp(hi), verdict="control",
                             note="the yardstick of --normalize (raw ratio shown)")
        elif normalized and (case, control) in raw:
            # the case's shared factor (the machine and the case's inputs, the same for every implementation): the
            # control's ratio, or with two or more other implementations on the case the median of the control's
            # and theirs (each less its typical change), so that one row's jump, the control's too, cannot move it
            refs = [(case, control)] + [k for k in raw if k[0] == case and k[1] not in (impl, control)]
            if len(refs) >= 3:
                ref_x = float(np.median([raw[k][0] - typical.get(k[1], 0.0) for k in refs]))
                ref_boot = np.median(np.stack([raw[k][1] - typical.get(k[1], 0.0) for k in refs]), axis=0)
            else:
                ref_x, ref_boot = raw[refs[0]][0], raw[refs[0]][1]
            judged[key] = ("normalised", x - ref_x, boot - ref_boot, min(size, raw[refs[0]][2]), ref_x)
        else:
            judged[key] = ("raw", x, boot, size, math.nan)

    # each judged row's own variance: its bootstrap's, and for a normalised row a share of its case's own move
    # between the runs (the shared factor's distance from the control's typical move: a neighbour or a frequency
    # change during that case does not move every implementation alike), added after the between-run scatter is
    # estimated, which it can only widen
    var = {k: float(np.var(v[2])) for k, v in judged.items()}
    norm_keys = [k for k, v in judged.items() if v[0] == "normalised"]
    tau_norm = between_run_scatter([judged[k][1] for k in norm_keys], [math.sqrt(var[k]) for k in norm_keys],
                                   groups=[k[1] for k in norm_keys])
    moves = {}
    if norm_keys:
        machine = float(np.median([v[0] for k, v in raw.items() if k[1] == control]))
        for key in norm_keys:
            moves[key] = abs(judged[key][4] - machine)
            var[key] += (CASE_MOVE_SHARE * moves[key]) ** 2
    raw_judged = [k for k, v in judged.items() if v[0] == "raw"]
    # raw rows: the scatter between cases of every row's raw log ratio (the control's too; not robust: whole cases
    # jump between runs, and without a control nothing else tells), and a shift that raw times cannot tell from the
    # code: the runs' overall shift (a machine slower across the board), or the move of the row's whole case (its
    # other implementations: they share its inputs, allocated once per case)
    tau_raw = (between_run_scatter([v[0] for v in raw.values()], [np.std(v[1]) for v in raw.values()], robust=False)
               if raw_judged else math.nan)
    run_shift = float(np.median([v[0] for v in raw.values()])) if raw_judged else 0.0
    shifts = {}
    for key in raw_judged:
        others = [v[0] for k, v in raw.items() if k[0] == key[0] and k != key]
        shifts[key] = max(abs(run_shift), abs(float(np.median(others))) if others else 0.0)

    keys_j = list(judged)
    ratios = []
    for key in keys_j:
        tau = tau_norm if judged[key][0] == "normalised" else tau_raw
        sd = math.sqrt(var[key] + (tau if math.isfinite(tau) else 0.0) ** 2)
        ratios.append(judged_ratio(judged[key][1], sd, judged[key][3], shifts.get(key, 0.0)))
    p_adj = holm([r.p_value for r in ratios])
    for key, r, p in zip(keys_j, ratios, p_adj):
        row = rows[key]
        adjusted = Ratio(r.ratio, r.ci_low, r.ci_high, float(p), r.n)
        row.update(ratio=r.ratio, ci_low=r.ci_low, ci_high=r.ci_high, p_value=float(p), p_unadjusted=r.p_value,
                   verdict=classify(adjusted, threshold, alpha))
        notes = []
        if judged[key][0] == "raw":
            notes.append(f"{f'no {control} row on this case: ' if normalized else ''}judged raw against a shift of "
                         f"±{math.expm1(shifts[key]):.1%} (the runs' or its case's) and the scatter between cases "
                         f"±{_pct(tau_raw)}")
        elif row["verdict"] == "ambiguous" and r.p_value >= alpha and moves[key] >= 0.05:
            notes.append(f"its case moved {math.expm1(moves[key]):.0%} as a whole between the runs")
        if row["verdict"] == "ambiguous" and r.p_value < alpha <= p:
            notes.append(f"significant alone (p={r.p_value:.2g}), not among {len(keys_j)} pairs (Holm)")
        row["note"] = "; ".join(notes)

    table = pd.DataFrame(list(rows.values()), columns=[*TABLE_COLUMNS, "case_key"])
    table.attrs.update(drift=abs(run_shift), scatter=tau_norm, raw_scatter=tau_raw,
                       normalize=control if normalized else "none", metric=metric, threshold=threshold, alpha=alpha,
                       pairs=len(keys_j), raw_rows=len(raw_judged), correction="holm" if keys_j else "none")
    return table


def describe(table: pd.DataFrame) -> str:
    """What a comparison table rests on, in one line: metric, threshold, normalisation, the scatter and shift its
    intervals were widened by, and the multiplicity correction."""
    a = table.attrs
    parts = [a["metric"], f"threshold ±{a['threshold']:.0%}"]
    if a["metric"] != "time":
        return ", ".join(parts)
    if a["normalize"] != "none":
        parts.append(f"normalised by each case's {a['normalize']} row (the median of it and the case's other "
                     f"implementations where there are two or more), between-run scatter ±{_pct(a['scatter'])}")
    if a["normalize"] == "none" or a["raw_rows"]:
        parts.append(f"{'NOT normalised: ' if a['normalize'] == 'none' else ''}{a['raw_rows']} row(s) judged raw "
                     f"against the runs' shift ±{math.expm1(a['drift']):.1%} (or their case's, when larger) and the "
                     f"scatter between cases ±{_pct(a['raw_scatter'])}")
    parts.append(f"p-values Holm-adjusted over {a['pairs']} pairs (α={a['alpha']:g})")
    return ", ".join(parts)


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
    if not (0 < alpha < 1):  # 0 flags nothing, 1 or more flags every pair
        print(f"convbench compare: --alpha must be in (0, 1), got {alpha}", file=sys.stderr)
        return 2
    try:
        if new_dir is None:  # one argument: the run against the baseline of its environment
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
            if metric == "time" and not all(has):
                lacking = " and ".join(name for name, h in zip(("BASE", "NEW"), has) if not h)
                print(f"warning: {lacking} has no ok {CONTROL} rows{f' on {key}' if key else ''}: nothing is "
                      "normalised, every row is judged raw against the runs' overall shift and the scatter between "
                      "cases (a slower machine and slower code look alike)", file=sys.stderr)
        elif control != "none" and not (control in set(b_rows["impl"]) and control in set(n_rows["impl"])):
            print(f"convbench compare: --normalize {control}: both runs need {control} rows", file=sys.stderr)
            return 2
        table = compare_frames(b_rows, n_rows, threshold, alpha, normalize=control, metric=metric)
        title = f"{new_dir} vs {base_dir}{f' on {key}' if key else ''}: {describe(table)}"
        if metric == "time" and table.attrs["normalize"] != "none" and table.attrs["raw_rows"]:
            print(f"warning: {table.attrs['raw_rows']} row(s) have no {control} row on their case: judged raw "
                  "(see their notes)", file=sys.stderr)
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
