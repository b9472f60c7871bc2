"""Statistics of timings, without torch: one sample set's median and its interval, and the verdicts of comparisons.

Two ways to compare BASE with NEW, for two kinds of evidence:

- **Paired** (``bench ab``): both sides are sampled in the same rounds, one sample each, back to back, the order
  alternating. The machine's state (frequency, neighbours, cache pollution) is shared within a round, so the
  per-round ratio new/base cancels it; the estimate is the median of the per-round log-ratios, its 95% interval a
  bootstrap over rounds, its p-value Wilcoxon's signed-rank test. This is what survives a shared runner.
- **Unpaired** (``bench compare`` of two stored runs): the runs saw different machine states. The ratio of
  medians with a bootstrap interval and a Mann–Whitney test measures sampling noise only, so it is corrected by the
  **drift** that the control implementation (the library, measured in the same rounds) shows between the runs:
  with ``normalize`` the ratio is taken relative to the control's ratio on the same case, and the remaining
  case-to-case scatter of the control's ratios widens every interval (a change smaller than that drift is
  ``ambiguous``, never a regression).

Verdicts, one rule for both (``classify``):
``slower``/``faster`` — significant (p < alpha, the widened interval excludes 1) and the estimate beyond the
threshold; ``same`` — the widened interval lies inside 1 ± threshold; ``ambiguous`` — anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISY_IQR = 0.10  # an IQR above this fraction of the median earns the row a warning
BOOTSTRAP = 2000
VERDICTS = ("slower", "faster", "same", "ambiguous")


# ---- one set of samples ---------------------------------------------------------------------------------------------
def median_ci(samples: list[float]) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median from order statistics (normal approximation to
    the binomial); (−inf, inf) with fewer than 6 samples."""
    n = len(samples)
    if n < 6:
        return -math.inf, math.inf
    s = sorted(samples)
    half = 0.98 * math.sqrt(n)  # 1.96·√n / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[hi]


@dataclass(frozen=True)
class Stats:
    median_ms: float
    iqr_ms: float
    min_ms: float
    samples: int
    ci_low_ms: float
    ci_high_ms: float

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf


def summarize(samples_ms: list[float]) -> Stats:
    a = np.asarray(samples_ms, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    lo, hi = median_ci(samples_ms)
    return Stats(float(med), float(q3 - q1), float(a.min()), len(a), lo, hi)


# ---- comparisons ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ratio:
    """new/base: the estimate, its 95% interval, the test's p-value, and how many samples (or rounds) it rests on."""

    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int

    def widened(self, drift: float) -> Ratio:
        """The interval widened by a multiplicative drift ``e^±drift`` that the samples cannot see."""
        f = math.exp(drift)
        return Ratio(self.ratio, self.ci_low / f, self.ci_high * f, self.p_value, self.n)


def paired_ratio(base: np.ndarray, new: np.ndarray, rng: np.random.Generator) -> Ratio:
    """Samples taken in pairs (``base[i]`` and ``new[i]`` in round i): median per-round ratio, bootstrap interval
    over rounds, Wilcoxon signed-rank p-value of the log-ratios."""
    base, new = np.asarray(base, float), np.asarray(new, float)
    d = np.log(new) - np.log(base)
    n = len(d)
    if n == 0:
        return Ratio(math.nan, math.nan, math.nan, 1.0, 0)
    point = float(np.median(d))
    if n < 5:
        return Ratio(math.exp(point), 0.0, math.inf, 1.0, n)
    meds = np.median(d[rng.integers(0, n, (BOOTSTRAP, n))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    from scipy.stats import wilcoxon  # imported here: scipy.stats alone takes a second to import

    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return Ratio(math.exp(point), math.exp(lo), math.exp(hi), p, n)


def unpaired_ratio(base: np.ndarray, new: np.ndarray, rng: np.random.Generator,
                   control: tuple[np.ndarray, np.ndarray] | None = None) -> Ratio:
    """Samples from two separate runs: ratio of medians (divided by the control's ratio of medians on the same
    case when ``control`` = (control base, control new) is given), percentile-bootstrap interval resampling every
    sample set, two-sided Mann–Whitney p-value (on the control-scaled samples when normalised)."""
    sets = [np.asarray(base, float), np.asarray(new, float)]
    if control is not None:
        sets += [np.asarray(control[0], float), np.asarray(control[1], float)]
    if min(len(s) for s in sets) == 0:
        return Ratio(math.nan, math.nan, math.nan, 1.0, 0)

    def est(meds):
        r = meds[1] / meds[0]
        return r / (meds[3] / meds[2]) if control is not None else r

    point = float(est([np.median(s) for s in sets]))
    boot = est([np.median(s[rng.integers(0, len(s), (BOOTSTRAP, len(s)))], axis=1) for s in sets])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    b, nw = sets[0], sets[1]
    if control is not None:  # put both runs on the control's scale before testing
        b, nw = b / np.median(sets[2]), nw / np.median(sets[3])
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(nw, b, alternative="two-sided").pvalue) if min(len(b), len(nw)) >= 2 else 1.0
    return Ratio(point, float(lo), float(hi), p, min(len(b), len(nw)))


def classify(r: Ratio, threshold: float, alpha: float = 0.01, drift: float = 0.0) -> str:
    """slower / faster / same / ambiguous (see the module docstring); ``drift`` is a log-scale uncertainty the
    samples cannot see (between-run drift), added to both ends of the interval."""
    if not math.isfinite(r.ratio):
        return "ambiguous"
    w = r.widened(drift) if drift > 0 else r
    significant = r.p_value < alpha and (w.ci_low > 1.0 or w.ci_high < 1.0)
    if significant and r.ratio > 1 + threshold:
        return "slower"
    if significant and r.ratio < 1 - threshold:
        return "faster"
    if w.ci_low >= 1 - threshold and w.ci_high <= 1 + threshold:
        return "same"
    return "ambiguous"


def confirm(first: str, second: str) -> str:
    """The verdict after a confirmation re-measurement: a change is flagged only when two independent
    measurements agree on it; a confirmation that finds no change clears the suspicion; anything else stays
    ambiguous."""
    if second == "same":
        return "same"
    if first == second:
        return first
    return "ambiguous"


def settle(first: str, second: str, first_rounds, second_rounds, threshold: float, rng: np.random.Generator,
           alpha: float = 0.01) -> tuple[str, Ratio | None]:
    """The verdict of a paired A/B after its confirmation, and the pooled ratio when pooling decided it.

    Two measurements that agree, or a confirmation that finds no change, settle it (``confirm``). Where one of them
    is ambiguous and the other is not contradicted, all rounds of both are judged together: a change is flagged only
    when the pooled rounds say the same as the measurement that was not ambiguous (two ambiguous measurements take
    the pooled verdict). ``*_rounds`` are (base, new) sample lists."""
    pair = {first, second}
    if "ambiguous" not in pair or not pair <= {"ambiguous", "slower", "faster"}:
        return confirm(first, second), None
    base = np.asarray([*first_rounds[0], *second_rounds[0]], float)
    new = np.asarray([*first_rounds[1], *second_rounds[1]], float)
    pooled = paired_ratio(base, new, rng)
    verdict = classify(pooled, threshold, alpha)
    wanted = (pair - {"ambiguous"}) or {verdict}
    return (verdict if verdict in wanted else "ambiguous"), pooled


def control_drift(log_ratios: np.ndarray, normalized: bool) -> float:
    """Between-run drift seen in the control rows (log scale): without normalisation, how far the control moved
    (median |log ratio|); with it, how unevenly it moved across cases (median absolute deviation of the log
    ratios), which normalising by the control cannot remove. 0 without control rows."""
    v = np.asarray([x for x in log_ratios if math.isfinite(x)], float)
    if len(v) == 0:
        return 0.0
    if normalized:
        return float(np.median(np.abs(v - np.median(v)))) if len(v) >= 3 else float(np.max(np.abs(v - v.mean())))
    return float(np.median(np.abs(v)))
