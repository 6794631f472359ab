"""Linear probes on contrastive pairs, per layer, and how their directions line up with a steering vector.

Per layer, on positive(1) / negative(0) activations (analysis.steering.pair_activations, same positions):
- logistic regression (scikit-learn, random_state=0), StratifiedKFold(shuffle, random_state=0) out-of-fold
  accuracy and AUROC, plus the same with shuffled labels (a control: ~0.5 when there is nothing to find
  beyond chance);
- difference of means: direction = mean(pos) - mean(neg) on the training folds, threshold at the midpoint of
  the projected class means; cross-validated the same way;
- directions fitted on all pairs; the cosine of each with the steering vector (`vectors`, optional);
- optional `finetune_shift`: the cosine between the steering vector and the mean activation shift a
  fine-tune causes on the same texts (tuned mean - base mean).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from analysis.steering import cosine

SEED = 0


def _folds(y: np.ndarray, n_splits: int):
    from sklearn.model_selection import StratifiedKFold

    k = max(2, min(n_splits, int(np.bincount(y).min())))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=SEED).split(np.zeros(len(y)), y))


def _auroc(y, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if len(set(y.tolist())) == 2 else None


def _logreg():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=SEED, max_iter=5000)


def cv_logreg(x: np.ndarray, y: np.ndarray, n_splits: int = 5) -> dict:
    scores = np.zeros(len(y))
    for train, test in _folds(y, n_splits):
        clf = _logreg().fit(x[train], y[train])
        scores[test] = clf.decision_function(x[test])
    return {"accuracy": float(np.mean((scores > 0).astype(int) == y)), "auroc": _auroc(y, scores)}


def cv_diff_means(x: np.ndarray, y: np.ndarray, n_splits: int = 5) -> dict:
    scores = np.zeros(len(y))
    for train, test in _folds(y, n_splits):
        mu1, mu0 = x[train][y[train] == 1].mean(0), x[train][y[train] == 0].mean(0)
        w = mu1 - mu0
        scores[test] = x[test] @ w - float(w @ (mu1 + mu0) / 2)
    return {"accuracy": float(np.mean((scores > 0).astype(int) == y)), "auroc": _auroc(y, scores)}


def probe_layer(pos: torch.Tensor, neg: torch.Tensor, vector: torch.Tensor | None = None, n_splits: int = 5) -> dict:
    """Probes for one layer's (n, hidden) positive and negative activations."""
    x = torch.cat([pos, neg]).double().numpy()
    y = np.array([1] * len(pos) + [0] * len(neg))
    shuffled = np.random.default_rng(SEED).permutation(y)
    logreg_dir = torch.from_numpy(_logreg().fit(x, y).coef_[0].copy())
    dm_dir = pos.double().mean(0) - neg.double().mean(0)
    result = {
        "logreg": cv_logreg(x, y, n_splits),
        "logreg_shuffled": cv_logreg(x, shuffled, n_splits),
        "diff_means": cv_diff_means(x, y, n_splits),
        "diff_means_shuffled": cv_diff_means(x, shuffled, n_splits),
        "cosine_logreg_diff_means": cosine(logreg_dir, dm_dir),
    }
    if vector is not None:
        result["cosine_logreg_vector"] = cosine(logreg_dir, vector)
        result["cosine_diff_means_vector"] = cosine(dm_dir, vector)
    return result


def run_probes(model, tokenizer, rows: list[dict], layers: list[int], vectors: dict | None = None,
               position: str = "last", n_splits: int = 5, batch_size: int = 8) -> dict:
    from analysis.steering import pair_activations

    pos, neg = pair_activations(model, tokenizer, rows, layers, position, batch_size)
    return {str(layer): probe_layer(pos[layer], neg[layer], (vectors or {}).get(layer), n_splits) for layer in layers}


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
                  n_splits: int = 5, batch_size: int = 8, tuned=None, base: str | None = None) -> dict:
    """`toolkit steer probe`: writes DIR/probes.json. With `tuned` (a run or adapter dir whose base is
    `model_path`), also the steering-vector vs fine-tune shift cosines."""
    from analysis.steering import decoder_layers, load_steer_model, load_vectors, parse_layers, read_pairs

    rows = read_pairs(pairs_path)
    vectors, vmeta = load_vectors(vector_dir) if vector_dir else ({}, None)
    model, tokenizer, _ = load_steer_model(model_path, base=base)
    layers = parse_layers(layers_text, len(decoder_layers(model)))
    result = {"meta": {"model": str(model_path), "pairs": len(rows), "layers": layers, "position": position,
                       "n_splits": n_splits, "seed": SEED, "vector": str(vector_dir) if vector_dir else None,
                       "vector_meta": vmeta},
              "layers": run_probes(model, tokenizer, rows, layers, vectors, position, n_splits, batch_size)}
    if tuned is not None:
        tuned_model, _, _ = load_steer_model(tuned, base=base)
        result["finetune_shift"] = finetune_shift(model, tuned_model, tokenizer, rows, layers, vectors, position, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
