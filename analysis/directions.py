"""Directions that separate positive from negative activations: one estimator shape (scikit-learn's) for
every steering method. `fit(pos, neg)` takes (n, hidden) activations, row i of each one contrast pair, and
sets `direction_`: a float32 vector scaled to the norm of the mean difference, so that one coefficient
means about the same push for every method.

- MeanDiff: mean(positive) - mean(negative), unnormalized (CAA style; what steering-vectors computes);
- PCADiff: repeng's pca_diff, the first principal component of the centered per-pair differences, signed so
  that positives project higher than their negatives in most pairs;
- LogRegDirection: scikit-learn LogisticRegression (random_state=0) on positive(1)/negative(0), its
  coefficient direction signed to point from the negative mean to the positive mean.
"""

from __future__ import annotations

import numpy as np
import torch

from toolkit.errors import ToolkitError


class _Direction:
    """fit(pos, neg) -> self, with direction_ set; subclasses give the unit direction in `_unit`."""

    direction_: torch.Tensor

    def fit(self, pos: torch.Tensor, neg: torch.Tensor):
        pos64, neg64 = pos.double(), neg.double()
        diff = pos64.mean(0) - neg64.mean(0)
        unit = self._unit(pos64, neg64, diff)
        self.direction_ = (diff if unit is None else unit * diff.norm()).float()
        return self

    def _unit(self, pos, neg, diff):
        raise NotImplementedError


class MeanDiff(_Direction):
    def _unit(self, pos, neg, diff):
        return None  # the mean difference itself


class PCADiff(_Direction):
    def _unit(self, pos, neg, diff):
        return pca_direction(pos, neg)


class LogRegDirection(_Direction):
    def _unit(self, pos, neg, diff):
        from sklearn.linear_model import LogisticRegression

        x = torch.cat([pos, neg]).numpy()
        y = np.array([1] * len(pos) + [0] * len(neg))
        clf = LogisticRegression(random_state=0, max_iter=5000).fit(x, y)
        direction = torch.from_numpy(clf.coef_[0].astype(np.float64))
        direction = direction / direction.norm().clamp_min(1e-12)
        return -direction if float(direction @ diff) < 0 else direction


ESTIMATORS = {"mean_diff": MeanDiff, "pca": PCADiff, "logreg": LogRegDirection}
METHODS = tuple(ESTIMATORS)


def compute_vector(pos: torch.Tensor, neg: torch.Tensor, method: str) -> torch.Tensor:
    """One layer's steering vector from (n, hidden) positive and negative activations, row i of each one pair."""
    if method not in ESTIMATORS:
        raise ToolkitError(f"unknown method '{method}'", where="--method", hint=f"one of {', '.join(METHODS)}")
    return ESTIMATORS[method]().fit(pos, neg).direction_


def pca_direction(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """repeng's pca_diff: the first principal component of the pairwise differences (centered, as sklearn's PCA
    centers), a unit vector signed so that in most pairs the positive projects higher (ties: on average).

    Centering removes what every pair shares, so this is the axis along which the pairs' differences vary most;
    when they differ mostly by one common offset, mean_diff is that offset and the two disagree."""
    from sklearn.decomposition import PCA

    diffs = (pos - neg).double().numpy()
    direction = torch.from_numpy(PCA(n_components=1, svd_solver="full").fit(diffs).components_[0].copy())
    gaps = (pos.double() - neg.double()) @ direction  # per pair: positive's projection minus negative's
    votes = int((gaps > 0).sum()) - int((gaps < 0).sum())
    if votes < 0 or (votes == 0 and float(gaps.sum()) < 0):
        direction = -direction
    return direction
