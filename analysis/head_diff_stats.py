"""The statistics of head-diff: is a head's change beyond its null? Per head a one-sided Wilcoxon signed-rank
test on per-probe paired differences (change − null), or against a control run the log ratio of the changes
measured against its spread across heads; Benjamini-Hochberg over heads."""

from __future__ import annotations

import math
import warnings

import numpy as np

EPS = 1e-12
ALPHA = 0.05
SCORE_FLOOR = 1e-6  # an excess below this is fp32 round-off, never significant
MIN_FOLD = 1.5  # against a control: at least this many times the typical head's ratio to the control
TEST = "one-sided Wilcoxon signed-rank on per-probe paired differences (change - null)"
RUN_TEST = "log(change / control change) against its spread across heads (empirical null)"
CORRECTION = "Benjamini-Hochberg (false discovery rate)"


def excess_test(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p-value per row (head) that `observed` exceeds `null` on the same probes (columns): Wilcoxon
    signed-rank on the paired differences. A row of zero differences (an untouched head) gets p = 1."""
    from scipy.stats import wilcoxon

    diff = np.asarray(observed, dtype=np.float64) - np.asarray(null, dtype=np.float64)
    p = np.ones(diff.shape[0])
    moved = np.any(diff != 0, axis=1)
    if moved.any() and diff.shape[1] > 0:
        with warnings.catch_warnings():  # rows with many zero differences: the normal approximation warns
            warnings.simplefilter("ignore", RuntimeWarning)
            p[moved] = wilcoxon(diff[moved], alternative="greater", axis=1, zero_method="wilcox").pvalue
    return np.nan_to_num(p, nan=1.0)



def correct(p: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    return false_discovery_control(p, method="bh") if len(p) else p



def probes_needed(n_heads: int, alpha: float) -> int:
    """The fewest probes with which one changed head among `n_heads` can be significant."""
    return next(n for n in range(1, 64) if n_heads * smallest_p(n) < alpha or n == 63)



def smallest_p(n_probes: int) -> float:
    """The smallest one-sided p the test can give with this many probes (every difference positive)."""
    from scipy.stats import wilcoxon

    return float(wilcoxon(np.arange(1.0, n_probes + 1), alternative="greater").pvalue) if n_probes else 1.0



def run_to_run_test(observed_dist: np.ndarray, null_dist: np.ndarray) -> tuple[np.ndarray, dict]:
    """One-sided p per head that its change beats the control's by more than two runs differ per head by chance.

    One control is one draw: a head moves a bit more in one fine-tune than in another on every probe alike, so the
    per-probe test alone flags heads at random. The spread of log(change / control change) across all heads is the
    empirical null (Efron 2004: centre = median, scale = 1.4826 x MAD, robust to a minority of changed heads);
    a head is tested against it with a normal tail. Uses `matrix_distance` units (both kinds alike)."""
    from scipy.stats import median_abs_deviation, norm

    o, n = observed_dist.mean(axis=1), null_dist.mean(axis=1)
    both = (o > 0) & (n > 0)
    ratios = np.log(o[both] / n[both])
    centre = float(np.median(ratios)) if ratios.size else 0.0
    scale = max(float(median_abs_deviation(ratios, scale="normal")) if ratios.size > 1 else 0.0, 1e-3)
    z = np.zeros(len(o))
    z[both] = (ratios - centre) / scale
    z[(n == 0) & (o > 0)] = np.inf  # the control did not move this head at all
    return norm.sf(z), {"typical_ratio": math.exp(centre), "ratio_spread": math.exp(scale), "n_heads": int(both.sum())}



def versus_null(observed: np.ndarray, null: np.ndarray, observed_dist: np.ndarray, null_dist: np.ndarray) -> dict:
    diff = observed - null
    mean, null_mean = float(observed_dist.mean()), float(null_dist.mean())  # JSD would square the ratio
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    excess = float(diff.mean())
    if sd > 0:
        effect = excess / sd
    else:
        effect = 0.0 if excess == 0 else math.copysign(math.inf, excess)
    ratio = mean / null_mean if null_mean > 0 else (math.inf if mean > 0 else None)
    return {"null_score": float(null.mean()), "excess": excess,
            "excess_distance": float((observed_dist - null_dist).mean()),
            "ratio_to_null": ratio, "effect_size": effect}
