"""Linear probes on contrastive pairs, per layer, and how their directions line up with a steering vector.

Per layer, on positive(1) / negative(0) activations (analysis.steering.pair_activations, same positions):
- logistic regression (scikit-learn, random_state=0) and difference of means (direction mean(pos) - mean(neg)
  on the training folds, threshold at the midpoint of the projected class means), each with out-of-fold
  accuracy and AUROC. The folds keep both sides of a pair together (StratifiedGroupKFold, one group per pair):
  the two sides share a prompt, so splitting them would let the probe see the test prompt in training.
- a permutation control per probe (sklearn permutation_test_score with the same groups: labels are swapped
  within pairs, the paired null): the p-value and the chance accuracy (the mean over permutations);
- directions fitted on all pairs; the cosine of each with the steering vector (`vectors`, optional);
- optional `finetune_shift`: the cosine between the steering vector and the mean activation shift a
  fine-tune causes on the same texts (tuned mean - base mean).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from analysis.stats import cosine

SEED = 0
PERMUTATIONS = 100


class DiffMeans(ClassifierMixin, BaseEstimator):
    """Difference-of-means probe: w = mean(x | 1) - mean(x | 0), threshold at the midpoint of the class means."""

    def fit(self, x, y):
        self.classes_ = np.array([0, 1])
        mu1, mu0 = x[y == 1].mean(0), x[y == 0].mean(0)
        self.coef_ = mu1 - mu0
        self.intercept_ = -float(self.coef_ @ (mu1 + mu0) / 2)
        return self

    def decision_function(self, x):
        return x @ self.coef_ + self.intercept_

    def predict(self, x):
        return (self.decision_function(x) > 0).astype(int)


def _logreg():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=SEED, max_iter=5000)


def pair_folds(y: np.ndarray, groups: np.ndarray, n_splits: int):
    """StratifiedGroupKFold splits, one group per pair: both sides of a pair are in the same fold."""
    return list(_splitter(groups, n_splits).split(np.zeros(len(y)), y, groups))


def _splitter(groups: np.ndarray, n_splits: int):
    """As many folds as asked, at most one per pair."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = max(2, min(n_splits, len(np.unique(groups))))
    return StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=SEED)


def _auroc(y, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if len(set(y.tolist())) == 2 else None


def cross_validate(probe, x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int = 5,
                   n_permutations: int = PERMUTATIONS) -> dict:
    """Out-of-fold accuracy and AUROC over pair-grouped folds, and the permutation control: permutation_test_score
    on the same folds, labels swapped within pairs; its `score` is the mean accuracy over folds."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # hundreds of small fits: BLAS/OpenMP threads only contend (10x slower on 2 cores)
        return _cross_validate(probe, x, y, groups, n_splits, n_permutations)


def _cross_validate(probe, x, y, groups, n_splits, n_permutations) -> dict:
    from sklearn.base import clone
    from sklearn.model_selection import permutation_test_score

    scores = np.zeros(len(y))
    for train, test in pair_folds(y, groups, n_splits):
        scores[test] = clone(probe).fit(x[train], y[train]).decision_function(x[test])
    result = {"accuracy": float(np.mean((scores > 0).astype(int) == y)), "auroc": _auroc(y, scores)}
    if n_permutations:
        score, permuted, p = permutation_test_score(clone(probe), x, y, groups=groups, cv=_splitter(groups, n_splits),
                                                    n_permutations=n_permutations, random_state=SEED)
        result["permutation"] = {"score": float(score), "chance_accuracy": float(permuted.mean()),
                                 "p_value": float(p), "n_permutations": n_permutations}
    return result


def probe_layer(pos: torch.Tensor, neg: torch.Tensor, vector: torch.Tensor | None = None, n_splits: int = 5,
                n_permutations: int = PERMUTATIONS) -> dict:
    """Probes for one layer's (n, hidden) positive and negative activations; row i of each is pair i."""
    x = torch.cat([pos, neg]).double().numpy()
    y = np.array([1] * len(pos) + [0] * len(neg))
    groups = np.r_[np.arange(len(pos)), np.arange(len(neg))]
    logreg_dir = torch.from_numpy(_logreg().fit(x, y).coef_[0].copy())
    dm_dir = pos.double().mean(0) - neg.double().mean(0)
    result = {
        "logreg": cross_validate(_logreg(), x, y, groups, n_splits, n_permutations),
        "diff_means": cross_validate(DiffMeans(), x, y, groups, n_splits, n_permutations),
        "cosine_logreg_diff_means": cosine(logreg_dir, dm_dir),
    }
    if vector is not None:
        result["cosine_logreg_vector"] = cosine(logreg_dir, vector)
        result["cosine_diff_means_vector"] = cosine(dm_dir, vector)
    return result


def run_probes(model, tokenizer, rows: list[dict], layers: list[int], vectors: dict | None = None,
               position: str = "last", n_splits: int = 5, batch_size: int = 8,
               n_permutations: int = PERMUTATIONS) -> dict:
    from analysis.steering import pair_activations

    pos, neg = pair_activations(model, tokenizer, rows, layers, position, batch_size)
    return {str(layer): probe_layer(pos[layer], neg[layer], (vectors or {}).get(layer), n_splits, n_permutations)
            for layer in layers}


def finetune_shift(base_model, tuned_model, tokenizer, rows: list[dict], layers: list[int], vectors: dict,
                   position: str = "last", batch_size: int = 8) -> dict:
    """Per layer: cosine(steering vector, tuned mean - base mean) over the pairs' positive and negative texts."""
    from analysis.steering import pair_activations

    result = {}
    acts = [pair_activations(m, tokenizer, rows, layers, position, batch_size) for m in (base_model, tuned_model)]
    for layer in layers:
        base_mean = torch.cat([acts[0][0][layer], acts[0][1][layer]]).double().mean(0)
        tuned_mean = torch.cat([acts[1][0][layer], acts[1][1][layer]]).double().mean(0)
        shift = tuned_mean - base_mean
        result[str(layer)] = {"shift_norm": float(shift.norm()),
                              "cosine_vector_shift": cosine(vectors[layer], shift) if layer in vectors else None}
    return result


def probe_command(model_path, pairs_path, layers_text, out, vector_dir=None, position: str = "last",
                  n_splits: int = 5, batch_size: int = 8, tuned=None, base: str | None = None,
                  n_permutations: int = PERMUTATIONS) -> dict:
    """`toolkit steer probe`: writes DIR/probes.json. With `tuned` (a run or adapter dir whose base is
    `model_path`), also the steering-vector vs fine-tune shift cosines."""
    from analysis.hooks import decoder_layers
    from analysis.steering import load_steer_model, load_vectors, parse_layers, read_pairs

    rows = read_pairs(pairs_path)
    vectors, vmeta = load_vectors(vector_dir) if vector_dir else ({}, None)
    model, tokenizer, _ = load_steer_model(model_path, base=base)
    layers = parse_layers(layers_text, len(decoder_layers(model)))
    result = {"meta": {"model": str(model_path), "pairs": len(rows), "layers": layers, "position": position,
                       "n_splits": n_splits, "folds": "StratifiedGroupKFold, one group per pair",
                       "n_permutations": n_permutations, "seed": SEED,
                       "vector": str(vector_dir) if vector_dir else None, "vector_meta": vmeta},
              "layers": run_probes(model, tokenizer, rows, layers, vectors, position, n_splits, batch_size,
                                   n_permutations)}
    if tuned is not None:
        tuned_model, _, _ = load_steer_model(tuned, base=base)
        result["finetune_shift"] = finetune_shift(model, tuned_model, tokenizer, rows, layers, vectors, position, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def describe_layer(layer: str, info: dict) -> str:
    """One line for the CLI: each probe's accuracy beside its permutation control."""
    def one(name, probe):
        perm = probe.get("permutation")
        control = f" (chance {perm['chance_accuracy']:.2f}, p {perm['p_value']:.3g})" if perm else ""
        return f"{name} acc {probe['accuracy']:.2f}{control}"

    return f"layer {layer}: {one('logreg', info['logreg'])}, {one('diff-means', info['diff_means'])}"
