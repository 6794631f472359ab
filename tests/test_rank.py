"""analysis/rank.py: spectra of known deltas, planted ranks in dense fp32 factors, subspace similarity against
chance, and a real tiny LoRA run (deltas against peft's merge, the truncation sweep, the `toolkit analyze rank`
command)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from test_train import run_toolkit, write_recipe

from analysis.rank import (
    _compare,
    adapter_profile,
    chance_similarity,
    dense_tolerance,
    lora_deltas,
    lora_factors,
    low_rank_svd,
    rank_profile,
    subspace_similarity,
    truncate_adapter,
    truncation_sweep,
    verdict,
)

RANK = 16
PLANTED_R, PLANTED_SHAPE = 64, (256, 192)
PLANTED_MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj")


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def test_a_rank_3_delta_has_effective_rank_at_most_3_and_all_energy_in_8():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(50, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 40, generator=g, dtype=torch.float64)
    p = rank_profile(delta)
    assert p["rank"] == 3 and len(p["singular_values"]) == 3
    assert 1.0 < p["effective_rank"] <= 3.0 + 1e-9
    assert 1.0 <= p["stable_rank"] <= 3.0 + 1e-9
    assert p["energy"] == {"8": pytest.approx(1.0), "16": pytest.approx(1.0), "32": pytest.approx(1.0),
                           "64": pytest.approx(1.0)}
    # equal singular values: the effective rank is exactly the rank
    u, v = _orthonormal(30, 3, 1), _orthonormal(20, 3, 2)
    assert rank_profile(u @ v.T)["effective_rank"] == pytest.approx(3.0)
    assert rank_profile(u @ v.T)["stable_rank"] == pytest.approx(3.0)


def test_a_rank_1_delta_has_effective_rank_1_and_energy_splits_by_sigma_squared():
    u, v = _orthonormal(30, 1, 3), _orthonormal(20, 1, 4)
    p = rank_profile(5.0 * u @ v.T)
    assert p["effective_rank"] == pytest.approx(1.0) and p["stable_rank"] == pytest.approx(1.0)
    assert p["singular_values"] == [pytest.approx(5.0)]
    s = torch.tensor([4.0, 3.0] + [0.0] * 8, dtype=torch.float64)
    u, v = _orthonormal(40, 10, 5), _orthonormal(30, 10, 6)
    p = rank_profile(u @ torch.diag(s) @ v.T)
    assert p["stable_rank"] == pytest.approx(25 / 16) and p["energy"]["8"] == pytest.approx(1.0)
    assert rank_profile(torch.zeros(4, 5))["effective_rank"] == 0.0


def test_low_rank_svd_matches_the_dense_svd():
    g = torch.Generator().manual_seed(7)
    b, a = torch.randn(64, 6, generator=g, dtype=torch.float64), torch.randn(6, 48, generator=g, dtype=torch.float64)
    u, s, vh = low_rank_svd(b, a)
    assert torch.allclose(s, torch.linalg.svdvals(b @ a)[:6])
    assert torch.allclose(u @ torch.diag(s) @ vh, b @ a)
    u, s, vh = low_rank_svd(b[:4], a)  # r = 6 > out = 4
    assert u.shape == (4, 4) and s.shape == (4,) and vh.shape == (4, 48)
    assert torch.allclose(u @ torch.diag(s) @ vh, b[:4] @ a)


def test_subspace_similarity_is_1_with_itself_and_0_with_an_orthogonal_delta():
    u, v = _orthonormal(40, 8, 8), _orthonormal(30, 8, 9)
    s = torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=torch.float64)
    a = u[:, :4] @ torch.diag(s) @ v[:, :4].T
    b = u[:, 4:] @ torch.diag(s) @ v[:, 4:].T
    same = subspace_similarity(a, a)
    assert same["k"] == 4 and same["left"] == pytest.approx(1.0) and same["right"] == pytest.approx(1.0)
    other = subspace_similarity(a, b)
    assert other["left"] == pytest.approx(0.0, abs=1e-12) and other["right"] == pytest.approx(0.0, abs=1e-12)
    assert other["chance_left"] == pytest.approx(4 / 40)
    half = subspace_similarity(a, u[:, 2:6] @ torch.diag(s) @ v[:, 2:6].T, k=4)
    assert half["left"] == pytest.approx(0.5)


def write_adapter(path, factors: dict, r: int, dtype=torch.float32, base: str = "none"):
    """A PEFT adapter directory storing {module: (B, A)} in `dtype`, lora_alpha = r (scale 1)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (b, a) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(dtype).contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": r,
                                                          "base_model_name_or_path": base}))
    return path


def planted_factors(left: torch.Tensor, right: torch.Tensor, seed: int, r: int = PLANTED_R):
    """Dense, full-rank-r factors (B [out, r], A [r, in]) with B @ A = left · diag(σ) · rightᵀ, σ in [0.5, 1]."""
    g = torch.Generator().manual_seed(seed)
    k = left.shape[1]
    sigma = 0.5 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64)
    c = torch.randn(k, r, generator=g, dtype=torch.float64)
    null = torch.linalg.qr(c.T, mode="complete")[0][:, k:]  # C @ null = 0
    a = torch.linalg.pinv(c) @ torch.diag(sigma) @ right.T
    a = a + null @ torch.randn(r - k, right.shape[0], generator=g, dtype=torch.float64) / math.sqrt(r)
    return left @ c, a


def _planted_adapter(path, k: int, seed: int, bases=None, dtype=torch.float32):
    out, inp = PLANTED_SHAPE
    bases = bases or {m: (_orthonormal(out, k, seed + i), _orthonormal(inp, k, seed + 50 + i))
                      for i, m in enumerate(PLANTED_MODULES)}
    factors = {m: planted_factors(*bases[m], seed=seed + 100 + i) for i, m in enumerate(PLANTED_MODULES)}
    return write_adapter(path, factors, PLANTED_R, dtype)


@pytest.mark.parametrize(("k", "dtype"), [(1, torch.float32), (4, torch.float32), (16, torch.float32),
                                          (4, torch.bfloat16)])
def test_the_measured_rank_is_the_planted_rank_of_dense_low_precision_factors(tmp_path, k, dtype):
    adapter = _planted_adapter(tmp_path / "a", k, seed=k, dtype=dtype)
    section, bases = adapter_profile(adapter)
    assert section["measured_rank"] == k and section["max_rank"] == PLANTED_R
    assert section["energy_in_measured_rank"] == pytest.approx(1.0, abs=1e-6 if dtype == torch.float32 else 1e-2)
    for name, module in section["modules"].items():
        assert (module["rank"], module["r"], module["dtype"]) == (k, PLANTED_R, str(dtype).removeprefix("torch.")), name
        assert len(module["singular_values"]) == k and bases[name][2] == k
    assert all(s["rank_max"] == k for s in section["summary"].values())
    # float64's tolerance, which the factors' rounding does not respect, sees the LoRA r instead
    b, a = next(iter(lora_factors(adapter).values()))
    s = torch.linalg.svdvals(b @ a)
    assert int((s > dense_tolerance(s[0], PLANTED_SHAPE)).sum()) == PLANTED_R


def test_shared_subspaces_score_far_above_chance_and_random_ones_at_chance(tmp_path):
    out, inp = PLANTED_SHAPE
    shared = {m: (_orthonormal(out, 4, 10 + i), _orthonormal(inp, 4, 20 + i)) for i, m in enumerate(PLANTED_MODULES)}
    _, a = adapter_profile(_planted_adapter(tmp_path / "a", 4, seed=1, bases=shared))
    _, b = adapter_profile(_planted_adapter(tmp_path / "b", 4, seed=2, bases=shared))  # other σ, other factors
    _, c = adapter_profile(_planted_adapter(tmp_path / "c", 4, seed=3))
    for row in _compare(a, b)["modules"].values():
        assert row["k"] == 4 and row["left"] > 0.999 and row["right"] > 0.999
        assert row["chance_left"] == pytest.approx(4 / out) and row["chance_right"] == pytest.approx(4 / inp)
    for row in _compare(a, c)["modules"].values():
        assert row["k"] == 4
        assert abs(row["left"] - row["chance_left"]) < 4 * row["chance_left_sd"]
        assert abs(row["right"] - row["chance_right"]) < 4 * row["chance_right_sd"]


def test_chance_similarity_matches_random_subspaces():
    g = torch.Generator().manual_seed(0)
    n, k = 30, 3
    fixed = _orthonormal(n, k, 1)
    random = torch.linalg.qr(torch.randn(3000, n, k, generator=g, dtype=torch.float64))[0]  # 3000 random subspaces
    draws = torch.linalg.svdvals(fixed.T @ random).square().mean(-1)
    mean, sd = chance_similarity(k, n)
    assert float(draws.mean()) == pytest.approx(mean, abs=3 * sd / math.sqrt(3000))
    assert float(draws.std()) == pytest.approx(sd, rel=0.1)


def test_the_verdict_reads_the_measured_rank_and_the_smallest_sufficient_k():
    sweep = [{"k": 1, "loss": 1.0, "retained": 1.0}, {"k": 8, "loss": 1.0, "retained": 1.0},
             {"k": 64, "loss": 1.0, "retained": 1.0}]
    result = verdict({"rank": 64, "measured_rank": 1, "energy_in_measured_rank": 1 - 1e-14, "loss_base": 2.0,
                      "loss_full": 1.0, "sweep": sweep})
    assert result["text"].startswith("Rank 1 of r = 64 carries 100.0% of the delta's energy")
    assert "r = 1 would have sufficed" in result["text"] and "already 64" not in result["text"]
    assert (result["measured_rank"], result["sufficient_rank"], result["suffices"]) == (1, 1, True)


def test_the_verdict_follows_the_threshold_at_rank_64():
    def sweep(retained_64):
        return {"rank": 256, "loss_base": 2.0, "loss_full": 1.0,
                "sweep": [{"k": 32, "loss": 1.5, "retained": 0.5}, {"k": 64, "loss": 2 - retained_64,
                                                                    "retained": retained_64},
                          {"k": 256, "loss": 1.0, "retained": 1.0}]}

    yes, no = verdict(sweep(0.95)), verdict(sweep(0.8))
    assert yes["suffices"] is True and "would have sufficed" in yes["text"] and "90%" in yes["text"]
    assert no["suffices"] is False and "would not have sufficed" in no["text"] and "256" in no["text"]
    assert yes["sufficient_rank"] == 64 and no["sufficient_rank"] == 256
    flat = verdict({"rank": 256, "loss_base": 2.0, "loss_full": 2.0, "sweep": []})
    assert flat["suffices"] is None and "Cannot tell" in flat["text"]


# ---------------------------------------------------------------- a real tiny LoRA run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("rank")
    recipe = write_recipe(work, tiny_model_dir, "r16", dropout=0.0, max_steps=10, checkpoint_every=10,
                          eval_every=10)
    data = json.loads(recipe.read_text())
    data["lora"].update(r=RANK, alpha=2 * RANK)
    recipe.write_text(json.dumps(data))
    run_toolkit("finetune", str(recipe))
    return work / "r16"


def test_deltas_are_the_merged_minus_base_weights(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from toolkit.lora import resolve_lora_targets

    deltas = lora_deltas(lora_run)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set(deltas) == set(resolve_lora_targets(base_model, "hybrid-all"))  # every adapted module
    assert set(lora_deltas(lora_run / "adapter")) == set(deltas)  # the adapter directory itself works too
    base = dict(base_model.named_parameters())
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                       lora_run / "adapter").merge_and_unload()
    merged = dict(merged.named_parameters())
    for name, delta in deltas.items():
        weight = f"{name}.weight"
        assert delta.dtype == torch.float64
        assert torch.allclose((merged[weight] - base[weight]).double(), delta, atol=1e-6), name
    assert any(d.abs().max() > 1e-4 for d in deltas.values()), "training left every delta at zero"
    full, truncated = truncate_adapter(lora_run, RANK), truncate_adapter(lora_run, 1)
    for name, delta in deltas.items():
        assert torch.allclose(full[name], delta, atol=1e-12)
        assert int(torch.linalg.matrix_rank(truncated[name])) <= 1


def test_the_truncation_sweep_retains_everything_at_full_rank(lora_run):
    result = truncation_sweep(lora_run)
    assert result["measured_rank"] == adapter_profile(lora_run)[0]["measured_rank"]
    assert result["rank"] == RANK
    assert [row["k"] for row in result["sweep"]] == sorted({8, result["measured_rank"], RANK})
    assert result["loss_full"] < result["loss_base"]
    assert result["sweep"][-1]["retained"] == pytest.approx(1.0, abs=1e-6)
    assert result["sweep"][0]["retained"] is not None


def test_the_cli_prints_a_verdict_and_writes_the_report(lora_run, tmp_path):
    data = tmp_path / "behavior.jsonl"
    data.write_text("".join((lora_run.parent / "chat.jsonl").read_text().splitlines(keepends=True)[:8]))
    out = run_toolkit("analyze", "rank", str(lora_run), str(lora_run / "adapter"), "--out", str(tmp_path),
                      "--data", str(data))
    assert f"of r = {RANK}" in out.stdout and "sufficed" in out.stdout and str(tmp_path / "rank.json") in out.stdout
    report = json.loads((tmp_path / "rank.json").read_text())
    assert report["verdict"]["suffices"] is True and report["threshold"] == 0.9
    assert set(report["run_a"]["summary"]) == {"attention", "gdn", "mlp"}
    module = next(iter(report["run_a"]["modules"].values()))
    assert set(module["energy"]) == {"8", "16", "32", "64"} and module["r"] == RANK
    assert all(s["left_mean"] == pytest.approx(1.0) for s in report["similarity"]["summary"].values())
    truncation = report["truncation"]
    assert truncation["data"].endswith("behavior.jsonl") and truncation["examples"] + truncation["skipped"] == 8
    assert "| gdn |" in (tmp_path / "rank.md").read_text()


def test_a_rank_1_delta_in_dense_fp32_factors_gets_a_rank_1_verdict(lora_run, tiny_model_dir, tmp_path):
    """The trained adapter's top direction per module, stored as dense fp32 r = 16 factors."""
    g = torch.Generator().manual_seed(0)
    factors = {}
    for name, (b, a) in lora_factors(lora_run).items():
        u, s, vh = low_rank_svd(b, a)
        c = torch.randn(RANK, generator=g, dtype=torch.float64)
        c = c / c.norm()
        dense_a = torch.randn(RANK, a.shape[1], generator=g, dtype=torch.float64) * a.std()
        factors[name] = (s[0] * u[:, :1] * c[None, :], dense_a + c[:, None] * (vh[:1] - c @ dense_a))  # cᵀA = v₁ᵀ
    adapter = write_adapter(tmp_path / "rank-1", factors, RANK, base=str(tiny_model_dir))
    data = tmp_path / "behavior.jsonl"
    data.write_text("".join((lora_run.parent / "chat.jsonl").read_text().splitlines(keepends=True)[:8]))
    result = truncation_sweep(adapter, data)
    assert (result["rank"], result["measured_rank"]) == (RANK, 1)
    assert [row["k"] for row in result["sweep"]] == [1, 8, RANK]
    assert result["sweep"][0]["retained"] == pytest.approx(1.0, abs=1e-3)
    text = verdict(result)["text"]
    assert text.startswith(f"Rank 1 of r = {RANK} carries 100.0%") and "r = 1 would have sufficed" in text


def test_a_directory_without_an_adapter_is_a_one_line_error(tmp_path):
    out = run_toolkit("analyze", "rank", str(tmp_path), check=False)
    assert out.returncode == 2 and "no LoRA adapter" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
