"""Statistics the analysis reports share: bootstrap intervals of a mean, Spearman's rho with an exact
permutation p-value, monotonicity of a response, cosine similarity."""

from __future__ import annotations

import math

import numpy as np
import torch

CONFIDENCE = 0.95  # of the bootstrap intervals
BOOTSTRAP_RESAMPLES = 2000


def mean_ci(values, seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Bootstrap confidence interval of the mean, resampling prompts (scipy's BCa); None under two values."""
    from scipy.stats import bootstrap

    values = np.asarray(values, float)
    if len(values) < 2:
        return None
    if np.ptp(values) == 0:  # BCa is undefined when every resample is the same
        return float(values[0]), float(values[0])
    ci = bootstrap((values,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                   rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)



def spearman(xs, ys, seed: int = 0, p_value: bool = True) -> tuple[float | None, float | None]:
    """(Spearman's rho, its permutation p-value): exact over all orders up to 7 points, where scipy's
    t-approximation would call a perfect 5-point order p ≈ 1e-24 (exactly it is 2/120)."""
    from scipy.stats import PermutationMethod, pearsonr, rankdata

    x, y = rankdata(xs), rankdata(ys)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    if not p_value:
        return float(np.corrcoef(x, y)[0, 1]), None
    result = pearsonr(x, y, method=PermutationMethod(rng=np.random.default_rng(seed)))
    return float(result.statistic), float(result.pvalue)



def monotonicity(coefficients, values, seed: int = 0, p_value: bool = True) -> dict:
    """Does `values` move one way as the coefficient grows? Spearman's rho and its p-value across coefficients, and
    the sign changes of successive differences (a U-shaped response has rho ≈ 0 and one sign change)."""
    order = np.argsort(coefficients, kind="stable")
    x, y = np.asarray(coefficients, float)[order], np.asarray(values, float)[order]
    rho, p = spearman(x, y, seed, p_value)
    steps = np.sign(np.diff(y))
    steps = steps[steps != 0]
    changes = int((steps[1:] != steps[:-1]).sum())
    direction = None if changes or not len(steps) else ("increasing" if steps[0] > 0 else "decreasing")
    return {"spearman_rho": rho, "spearman_p": p, "sign_changes": changes, "monotonic": direction is not None,
            "direction": direction}



def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 and math.isfinite(denom) else 0.0
