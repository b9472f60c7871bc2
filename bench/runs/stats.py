"""Statistics of timings, without torch: one sample set's median and its interval, and the verdicts of comparisons.

Two ways to compare BASE with NEW, for two kinds of evidence:

- **Paired** (``bench ab``): both sides are sampled in the same rounds, one sample each, back to back, the order
  alternating. The machine's state (frequency, neighbours, cache pollution) is shared within a round, so the
  per-round ratio new/base cancels it; the estimate is the median of the per-round log-ratios, its 95% interval the
  distribution-free one from their order statistics, its p-value Wilcoxon's signed-rank test. This is what
  survives a shared runner.
- **Unpaired** (``bench compare`` of two stored runs): the runs saw different machine states. The ratio of
  medians with a bootstrap interval and a Mann–Whitney test measures sampling noise only; ``bench/runs/compare.py``
  corrects it by each case's shared factor between the runs (its control's ratio, outvoted by the case's other
  implementations), carries the control's own noise and the between-run scatter into every interval, and
  Holm-adjusts the p-values over the pairs of one comparison (see its docstring).

Verdicts, one rule for both (``classify``):
``slower``/``faster`` — significant (p < alpha, the widened interval excludes 1) and the estimate beyond the
threshold; ``same`` — the widened interval lies inside 1 ± threshold; ``ambiguous`` — anything else, with the
reason in words from ``explain`` (``too few samples`` when the test cannot reach alpha on that many samples at
all, whatever the data: ``smallest_p``).

``bench ab`` measures every suspect again in fresh processes and fresh rounds; ``settle`` turns the verdicts of
those independent measurements into the gate's verdict: a change is flagged only when three measurements, each in
its own pair of processes and judged on its own rounds (no pooling of the rounds that made a pair a suspect), agree
on it and none contradicts; a confirmation that finds no change clears it; a failure of NEW in any measurement is
``broken``; what stays undecided is said to be inconclusive.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
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


@functools.cache
def _order_rank(n: int) -> int:
    """k (1-based) of the distribution-free 95% interval [x₍ₖ₎, x₍ₙ₊₁₋ₖ₎] of a median of n values: the largest k
    with P(Binomial(n, ½) ≤ k − 1) ≤ 2.5% (the interval that inverts the sign test); 0 when n is too small."""
    total, cum, k = 2 ** n, 0, 0
    for i in range(n):
        cum += math.comb(n, i)
        if cum * 40 > total:
            break
        k = i + 1
    return k


def paired_ratio(base: np.ndarray, new: np.ndarray, rng: np.random.Generator | None = None) -> Ratio:
    """Samples taken in pairs (``base[i]`` and ``new[i]`` in round i): median per-round ratio, its exact
    distribution-free 95% interval (order statistics of the per-round log-ratios, coverage ≥ 95% whatever their
    distribution; (0, inf) below 6 rounds), Wilcoxon signed-rank p-value of the log-ratios (1 below 5 rounds).
    ``rng`` is not used (the interval needs no resampling); it is accepted for callers that pass one."""
    base, new = np.asarray(base, float), np.asarray(new, float)
    d = np.sort(np.log(new) - np.log(base))
    n = len(d)
    if n == 0:
        return Ratio(math.nan, math.nan, math.nan, 1.0, 0)
    point = float(np.median(d))
    if n < 5:
        return Ratio(math.exp(point), 0.0, math.inf, 1.0, n)
    k = _order_rank(n)
    lo, hi = (math.exp(d[k - 1]), math.exp(d[n - k])) if k else (0.0, math.inf)
    from scipy.stats import wilcoxon  # imported here: scipy.stats alone takes a second to import

    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return Ratio(math.exp(point), lo, hi, p, n)


def paired_halfwidth(base, new) -> float:
    """Half the log-width of ``paired_ratio``'s interval, without the test: how precise the rounds so far are."""
    d = np.sort(np.log(np.asarray(new, float)) - np.log(np.asarray(base, float)))
    k = _order_rank(len(d)) if len(d) >= 6 else 0
    return float(d[len(d) - k] - d[k - 1]) / 2 if k else math.inf


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
    from scipy.stats import mannwhitneyu  # imported here: scipy.stats alone takes a second to import

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


def smallest_p(n: int, m: int | None = None) -> float:
    """The smallest two-sided p-value the test can give on that many samples, whatever the data: Wilcoxon's
    signed-rank test on ``n`` paired rounds (2/2ⁿ), or Mann–Whitney on ``n`` vs ``m`` unpaired samples
    (2/C(n+m, n): 0.1 for 3 vs 3). At or above alpha the test cannot decide, however large the change."""
    if n <= 0 or (m is not None and m <= 0):
        return 1.0
    return min(1.0, 2.0 / 2 ** n if m is None else 2.0 / math.comb(n + m, n))


def fewest_samples(alpha: float = 0.01, paired: bool = True) -> int:
    """The fewest rounds (paired) or samples per side (unpaired, equal sizes) at which the test can reach
    p < alpha at all: 8 rounds, or 5 vs 5, for alpha = 0.01."""
    n = 1
    while smallest_p(n, None if paired else n) >= alpha:
        n += 1
    return n


def explain(r: Ratio, threshold: float, alpha: float = 0.01, drift: float = 0.0, paired: bool = True) -> str:
    """In words, why ``classify`` finds ``r`` ambiguous ('' when it does not): too few samples for the test to
    decide at all, or an interval that reaches past the threshold. ``paired``: ``r`` is from ``paired_ratio``
    (``r.n`` rounds), else from ``unpaired_ratio`` (``r.n`` samples on the smaller side)."""
    if not math.isfinite(r.ratio):
        return "no samples to compare"
    if classify(r, threshold, alpha, drift) != "ambiguous":
        return ""
    need = fewest_samples(alpha, paired)
    if r.n < need:
        what = f"{r.n} rounds" if paired else f"{r.n} samples a side"
        test = "Wilcoxon's signed-rank test" if paired else "Mann–Whitney's test"
        return (f"too few samples: {what}, and {test} cannot reach p < {alpha:g} below {need} "
                f"(its smallest p is {smallest_p(r.n, None if paired else r.n):.2g})")
    w = r.widened(drift) if drift > 0 else r
    band = f"±{threshold:.0%}"
    interval = f"[{w.ci_low:.3f}, {w.ci_high:.3f}]"
    if r.p_value < alpha and (w.ci_low > 1 or w.ci_high < 1):
        return f"a change of {r.ratio - 1:+.1%}, within {band}, but its interval {interval} reaches past {band}"
    return f"not significant (p={r.p_value:.2g}) and its interval {interval} reaches past {band}"


#: verdicts of one timed measurement that make a pair a suspect worth confirming
SUSPECT = ("slower", "faster", "ambiguous")


@dataclass(frozen=True)
class Settled:
    """The gate's verdict on one pair after its measurements; ``done`` False: a further confirmation could still
    decide it (the verdict meanwhile is ``ambiguous``); ``why``: the reason in words when it is not plain."""

    verdict: str
    done: bool
    why: str = ""


def _named(i: int) -> str:
    return "the sweep" if i == 0 else f"confirmation {i}"


def settle(verdicts: Sequence[str], need: int = 3, passes: int = 3) -> Settled:
    """The verdict of a paired A/B from the verdicts of its independent measurements: ``verdicts[0]`` the sweep's,
    the rest those of confirmations, each in fresh processes and judged on its own fresh rounds only (the rounds that
    made the pair a suspect are never pooled in). At most ``passes`` confirmations; rules, in order:

    - NEW failed (``broken``) in any measurement, the confirmations included → ``broken``, a regression;
    - the sweep found nothing to confirm (``same``, or a status such as ``fixed``/``missing``) → that verdict;
    - a confirmation that finds no change (``same``) clears the suspicion → ``same``;
    - ``need`` measurements — each in its own process pair, the sweep counted — say ``slower`` (``faster``) and
      none says the opposite → ``slower`` (``faster``): by default the sweep and two confirmations, or three
      confirmations of an ambiguous sweep;
    - otherwise ``ambiguous``: not done while a confirmation pass is left (it may still flag or clear the pair),
      inconclusive after the last (measurements that contradict each other never flag).

    Why three: a per-process bias (one process pair's code placement, its core) makes a single measurement of an
    unchanged pair say ``slower`` with some probability q (≈ 5% for a bias of sd 3% against a 5% threshold); the
    gate flags it with probability ≈ q^need (tests/test_verdicts.py)."""
    if not verdicts:
        return Settled("ambiguous", False, "not measured yet")
    first, conf = verdicts[0], list(verdicts[1:])
    if "broken" in verdicts:
        i = verdicts.index("broken")
        return Settled("broken", True, "" if i == 0 else f"NEW failed in {_named(i)}, in fresh processes "
                                                         "(the sweep timed it)")
    if first not in SUSPECT:
        return Settled(first, True)
    if not conf:
        return Settled("ambiguous", False, "awaiting confirmation")
    if "same" in conf:
        return Settled("same", True, f"{_named(conf.index('same') + 1)}, in fresh processes, found no change")
    said = ", ".join(f"{_named(i)} {v}" for i, v in enumerate(verdicts))
    directions = {v for v in verdicts if v in ("slower", "faster")}
    if len(directions) == 1 and list(verdicts).count(next(iter(directions))) >= need:
        return Settled(directions.pop(), True)
    if len(conf) < passes:  # another confirmation may still flag it, or clear it
        return Settled("ambiguous", False, f"not settled yet ({said})")
    if len(directions) > 1:
        return Settled("ambiguous", True, f"inconclusive: the measurements contradict each other ({said})")
    return Settled("ambiguous", True, f"inconclusive: fewer than {need} of {len(verdicts)} measurements in separate "
                                      f"process pairs agree on a change ({said})")


def confirm(first: str, second: str) -> str:
    """Two measurements, the second a confirmation in fresh processes: a change is flagged only when both agree on
    it; a confirmation that finds no change clears the suspicion; a failure of NEW in either is ``broken``; anything
    else stays ambiguous. (``bench ab`` itself asks three measurements to agree: ``settle``.)"""
    if "broken" in (first, second):
        return "broken"
    if second == "same":
        return "same"
    return first if first == second else "ambiguous"


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
