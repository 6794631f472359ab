"""Issue 13's figures for `analysis.rank`, `analysis.steering` and `analysis.probes` (a benchmark, not a test).

Planted cases where the right answer is known:
- rank: adapters stored as dense fp32 factors (r = 64) whose deltas have rank 1 / 4 / 16;
- similarity: two such adapters (rank 4) that share their subspaces, and two that do not;
- verdict: a rank-1 delta on tiny-hybrid (a rank-1 gradient step, so it lowers the behavior loss);
- steering: pairs whose differences share a large common offset and vary along another direction;
- probes: how many pairs the cross-validation splits across train and test;
- sweeps: a U-shaped response to the coefficient;
- cost: the singular values of one 2048 x 2048 r = 64 delta from its factors vs a dense SVD.

    .venv/bin/python benchmarks/rank_steering.py

The pre-issue-13 code (commit b3fb5b0) lacks `probes.pair_folds` and `steering.monotonicity`; the script falls
back to what it had (`probes._folds`, `steering.slope`), so it gives the "before" figures too:

    mkdir -p /tmp/before/analysis && for f in __init__ rank steering probes; do
        git show b3fb5b0:analysis/$f.py > /tmp/before/analysis/$f.py; done
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/rank_steering.py
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from analysis import adapters, probes, rank, steering

R, SHAPE = 64, (512, 256)  # LoRA r, and each module's (out, in)
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj")


def write_adapter(path: Path, factors: dict, base: str = "none") -> Path:
    """A PEFT adapter directory holding fp32 factors {module: (B, A)} with scale alpha/r = 1."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (b, a) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.float().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.float().contiguous()
    save_file(tensors, str(path / adapters.ADAPTER_WEIGHTS))
    config = {"peft_type": "LORA", "r": R, "lora_alpha": R, "base_model_name_or_path": base,
              "target_modules": sorted({n.rsplit(".", 1)[-1] for n in factors})}
    (path / adapters.ADAPTER_CONFIG).write_text(json.dumps(config))
    return path


def planted_factors(left: torch.Tensor, right: torch.Tensor, gen: torch.Generator):
    """Dense, full-rank-r (B [out, r], A [r, in]) with B @ A = left · diag(σ) · rightᵀ, σ in [0.5, 1]: rank k."""
    k = left.shape[1]
    sigma = 0.5 + 0.5 * torch.rand(k, generator=gen, dtype=torch.float64)
    c = torch.randn(k, R, generator=gen, dtype=torch.float64)
    null = torch.linalg.qr(c.T, mode="complete")[0][:, k:]  # C @ null = 0: A's rows there add nothing to B @ A
    a = torch.linalg.pinv(c) @ torch.diag(sigma) @ right.T
    a = a + null @ torch.randn(R - k, right.shape[0], generator=gen, dtype=torch.float64) / math.sqrt(R)
    return left @ c, a


def basis(n: int, k: int, gen) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))[0]


def measured_ranks(tmp: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    for k in (1, 4, 16):
        factors = {m: planted_factors(basis(SHAPE[0], k, gen), basis(SHAPE[1], k, gen), gen) for m in MODULES}
        section, _ = rank.adapter_profile(write_adapter(tmp / f"planted-{k}", factors))
        ranks = sorted({m["rank"] for m in section["modules"].values()})
        print(f"planted rank {k:>2} in r = {R}, fp32 factors {SHAPE}: measured rank {ranks}")


def factor_vs_dense_time() -> None:
    """One 2048 x 2048 module at r = 64: singular values from the factors (QR of B and Aᵀ) vs a dense SVD."""
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(2048, R, generator=gen, dtype=torch.float64)
    a = torch.randn(R, 2048, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    s_factors = rank.low_rank_svd(b, a)[1]
    factors_s = time.perf_counter() - start
    start = time.perf_counter()
    s_dense = torch.linalg.svdvals(b @ a)[:R]
    dense_s = time.perf_counter() - start
    assert torch.allclose(s_factors, s_dense)
    print(f"singular values of one 2048x2048 r = {R} delta: from the factors {factors_s * 1e3:.0f} ms, "
          f"dense SVD {dense_s * 1e3:.0f} ms")


def similarity(tmp: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    shared = {m: (basis(SHAPE[0], 4, gen), basis(SHAPE[1], 4, gen)) for m in MODULES}

    def profile(name, bases):
        return rank.adapter_profile(write_adapter(tmp / name, {m: planted_factors(*bases[m], gen) for m in MODULES}))

    _, bases_a = profile("a", shared)
    _, bases_b = profile("b", shared)
    _, bases_c = profile("c", {m: (basis(SHAPE[0], 4, gen), basis(SHAPE[1], 4, gen)) for m in MODULES})
    for label, other in (("shared subspace", bases_b), ("random subspaces", bases_c)):
        rows = list(rank._compare(bases_a, other)["modules"].values())
        k = sorted({row["k"] for row in rows})
        left, right = np.mean([row["left"] for row in rows]), np.mean([row["right"] for row in rows])
        chance_l = np.mean([row["chance_left"] for row in rows])
        chance_r = np.mean([row["chance_right"] for row in rows])
        print(f"similarity, {label} (planted rank 4 in r = {R}): k = {k}, left {left:.3f} / right {right:.3f}, "
              f"chance {chance_l:.3f} / {chance_r:.3f}")


def rank_1_verdict(tmp: Path) -> None:
    """A rank-1 gradient step on tiny-hybrid's layer-3 o_proj, stored as dense fp32 r = 64 factors."""
    from toolkit.model import build_tiny_hybrid, load_model, load_tokenizer
    from toolkit.recipe import ModelConfig, TinyHybridConfig

    texts = [f"User asked for item {i % 7}; the assistant answered with care and did what was asked."
             for i in range(64)]
    model_dir = build_tiny_hybrid(TinyHybridConfig(vocab_size=512), iter(texts * 4), tmp / "tiny", seed=0)
    cfg = ModelConfig(name_or_path=str(model_dir))
    model, tokenizer = load_model(str(model_dir), cfg), load_tokenizer(str(model_dir), cfg)
    ids = tokenizer(texts[:16], return_tensors="pt", padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    model(**ids, labels=labels).loss.backward()
    name = "model.layers.3.self_attn.o_proj"
    u, _, vh = torch.linalg.svd(dict(model.named_modules())[name].weight.grad.double())
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(R, generator=gen, dtype=torch.float64)
    c = c / c.norm()
    b = -0.5 * u[:, :1] * c[None, :]  # B = -η u₁ cᵀ: dense
    a = torch.randn(R, vh.shape[1], generator=gen, dtype=torch.float64) * 0.01
    a = a + c[:, None] * (vh[:1] - c @ a)  # dense and full rank, with cᵀA = v₁ᵀ: B @ A = -η u₁ v₁ᵀ
    adapter = write_adapter(tmp / "rank-1", {name: (b, a)}, base=str(model_dir))
    data = tmp / "behavior.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:16]))
    report = rank.rank_report(adapter, data=data, out=tmp / "report")
    print(f"verdict for a rank-1 delta in r = {R}: {report['verdict']['text']}")


def pca_vs_mean_diff() -> None:
    """Differences = a common offset (norm 5) + t_i · d with t_i ~ N(0, 1), d ⟂ offset, plus small noise."""
    rng = np.random.default_rng(0)
    n, hidden = 40, 64
    offset, d = np.eye(hidden)[0] * 5.0, np.eye(hidden)[1]
    neg = rng.normal(size=(n, hidden))
    pos = neg + offset + rng.normal(size=(n, 1)) * d + 0.1 * rng.normal(size=(n, hidden))
    pos_t, neg_t = torch.from_numpy(pos).float(), torch.from_numpy(neg).float()
    pca, mean_diff = steering.compute_vector(pos_t, neg_t, "pca"), steering.compute_vector(pos_t, neg_t, "mean_diff")
    print(f"pca vs mean_diff on offset data: cosine {steering.cosine(pca, mean_diff):.4f}; "
          f"pca vs the varying direction: {abs(steering.cosine(pca, torch.from_numpy(d))):.4f}")


def probe_folds() -> None:
    n_pairs, folds = 20, 5
    y, groups = np.r_[np.ones(n_pairs, int), np.zeros(n_pairs, int)], np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    if hasattr(probes, "pair_folds"):
        splits = probes.pair_folds(y, groups, folds)
    else:  # before issue 13
        splits = probes._folds(y, folds)
    split = {int(g) for train, test in splits for g in set(groups[train]) & set(groups[test])}
    print(f"probe folds ({n_pairs} pairs, {folds} folds): pairs split across train/test: {len(split)} "
          f"({'yes' if split else 'no'})")


def u_shaped_sweep() -> None:
    coefficients = [-4, -2, 0, 2, 4]
    rng = np.random.default_rng(0)
    margins = [[0.1 * c * c + e for e in rng.normal(0, 0.1, size=16)] for c in coefficients]
    per_prompt = [[ms[i] for ms in margins] for i in range(16)]
    if hasattr(steering, "monotonicity"):
        mono = steering.monotonicity(coefficients, [float(np.mean(m)) for m in margins])
        print(f"U-shaped sweep: spearman rho {mono['spearman_rho']:.2f} (p {mono['spearman_p']:.2f}), "
              f"sign changes {mono['sign_changes']}, monotonic {mono['monotonic']}")
    else:  # before issue 13: one least-squares slope per prompt
        slopes = [steering.slope(coefficients, ys) for ys in per_prompt]
        print(f"U-shaped sweep: mean slope {np.mean(slopes):.3f} (no monotonicity check)")


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        measured_ranks(tmp)
        factor_vs_dense_time()
        similarity(tmp)
        rank_1_verdict(tmp)
    pca_vs_mean_diff()
    probe_folds()
    u_shaped_sweep()


if __name__ == "__main__":
    main()
