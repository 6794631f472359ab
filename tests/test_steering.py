"""Steering vectors and probes on tiny-hybrid: planted directions are recovered, vectors match HF
hidden_states, runs are deterministic, the steering hook acts on the cached decode path, probes separate.
Their statistics on synthetic data: centered pca (repeng's convention), pair-grouped probe folds and the
permutation control, bootstrap CIs and the monotonicity check of sweeps."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from analysis import probes, steering

PROMPTS = [f"User asked for item {i}; what did the assistant answer?" for i in range(20)]


def _pairs(n=20):
    return [{"prompt": PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)),
             "positive": "the quick brown fox", "negative": "the lazy dog"} for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    model.eval()
    return model, tok


def _direction(model, tok):
    """d = normalized (W_U[t] - W_U[t']) for two ordinary tokens t, t'."""
    t, t2 = tok(" fox", add_special_tokens=False)["input_ids"][-1], tok(" dog", add_special_tokens=False)["input_ids"][-1]
    w = model.get_output_embeddings().weight.detach()
    d = (w[t] - w[t2]).double()
    return (d / d.norm()).float(), t, t2


@contextmanager
def planted(model, tok, layer, d, scale=30.0, vary=False):
    """Add scale * d to block `layer`'s output in every row whose input contains the marker (' fox'); with `vary`
    the strength is 1, 2 or 3 times that, by row (centered pca sees only what varies across pairs)."""
    marker = tok(" fox", add_special_tokens=False)["input_ids"][-1]
    seen = {}
    h1 = model.get_input_embeddings().register_forward_pre_hook(lambda m, args: seen.__setitem__("ids", args[0]))

    def hook(module, args, output):
        rows = (seen["ids"] == marker).any(-1).to(output.dtype)[:, None, None]
        if vary:
            rows = rows * (1 + seen["ids"].sum(-1) % 3).to(output.dtype)[:, None, None]
        return output + scale * rows * d.to(output.dtype)

    h2 = steering.decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def test_planted_direction_recovered_and_steers_logits(tiny):
    model, tok = tiny
    d, t, t2 = _direction(model, tok)
    last = len(steering.decoder_layers(model)) - 1
    rows = _pairs()
    with planted(model, tok, last, d, vary=True):
        vec = steering.train_vectors(model, tok, rows, [last], "mean_diff")[last]
        for method in ("pca", "logreg"):
            other = steering.train_vectors(model, tok, rows, [last], method)[last]
            assert steering.cosine(other, d) >= 0.95, method
    assert steering.cosine(vec, d) >= 0.95
    # Steering with +c * v at the last block raises log p(t) - log p(t') monotonically (final norm between).
    ids = torch.tensor([steering.prompt_ids(tok, "User asked for item 3.")])
    gaps = []
    for c in (0.0, 0.05, 0.1, 0.2, 0.5):
        with steering.steering(model, {last: c * vec}), torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        gaps.append(float(logp[t] - logp[t2]))
    assert all(b > a for a, b in zip(gaps, gaps[1:])), gaps


def test_planted_at_middle_layer(tiny):
    model, tok = tiny
    d, _, _ = _direction(model, tok)
    with planted(model, tok, 1, d):
        vecs = steering.train_vectors(model, tok, _pairs(), [1, 2], "mean_diff", position="mean")
    assert steering.cosine(vecs[1], d) >= 0.95
    assert steering.cosine(vecs[2], d) >= 0.5  # later layers carry it approximately


@pytest.mark.parametrize("position", ["last", "mean"])
def test_mean_diff_matches_hf_hidden_states(tiny, position):
    model, tok = tiny
    rows = _pairs(6)
    # The last layer is left out: transformers 5 puts the final-norm output in hidden_states[-1], while
    # layer n-1 here is decoder block n-1's own output (where the steering hook adds).
    layers = list(range(len(steering.decoder_layers(model)) - 1))
    vecs = steering.train_vectors(model, tok, rows, layers, "mean_diff", position=position, batch_size=4)
    direct = {layer: [] for layer in layers}
    for sign, key in ((1, "positive"), (-1, "negative")):
        for r in rows:
            ids, start = steering.encode(tok, r["prompt"], r[key])
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            for layer in layers:
                h = hs[layer + 1][0]
                direct[layer].append(sign * (h[-1] if position == "last" else h[start:].mean(0)))
    for layer in layers:
        expected = torch.stack(direct[layer]).sum(0) / len(rows)
        torch.testing.assert_close(vecs[layer], expected, atol=1e-5, rtol=1e-4, msg=lambda m: f"layer {layer}: {m}")


def test_train_deterministic_and_files(tiny_model_dir, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(8))
    from safetensors import safe_open

    for method in steering.METHODS:
        a, b = tmp_path / f"{method}-a", tmp_path / f"{method}-b"
        steering.train_command(str(tiny_model_dir), pairs, "2,3", method, "last", a)
        steering.train_command(str(tiny_model_dir), pairs, "2,3", method, "last", b)
        va, ma = steering.load_vectors(a)
        vb, _ = steering.load_vectors(b)
        assert sorted(va) == [2, 3]
        for layer in va:
            assert torch.equal(va[layer], vb[layer]), method
        with safe_open(str(a / "vectors.safetensors"), framework="pt") as f:
            assert sorted(f.keys()) == ["layers.2", "layers.3"]
            raw = f.metadata()
        meta = json.loads((a / "meta.json").read_text())
        assert meta == ma
        assert meta["method"] == method and meta["layers"] == [2, 3] and meta["position"] == "last"
        assert meta["pairs"] == 8 and meta["model"] == str(tiny_model_dir)
        assert json.loads(raw["pairs"]) == 8 and json.loads(raw["method"]) == method


class _HasFox:
    def evaluate(self, scenarios, responses):
        from toolkit.dream.evaluators import Verdict

        return [Verdict(1.0, "fox" in r, "") for r in responses]


def test_sweep_zero_coefficient_and_files(tiny, tiny_model_dir, tmp_path):
    model, tok = tiny
    rows = _pairs(4)
    vec_dir = tmp_path / "vec"
    steering.train_command(str(tiny_model_dir), _write_jsonl(tmp_path / "pairs.jsonl", rows), "1,3", "mean_diff",
                           "last", vec_dir)
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", rows[:3] + [{"prompt": "Hello there"}, {"prompt": "the cat sleeps"}])
    result = steering.sweep_command(str(tiny_model_dir), vec_dir, None, "-2,0,2", prompts, tmp_path / "sweep")
    for name in ("sweep.json", "sweep.csv", "sweep.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    unsteered = steering.margins(model, tok, rows[:3])
    zero = [r for r in result["rows"] if r["coefficient"] == 0]
    assert len(zero) == 2
    for r in zero:
        assert r["mean_margin"] == pytest.approx(sum(unsteered) / 3, abs=1e-6)
        assert abs(r["kl"]) < 1e-7
    assert all(r["kl"] > 0 for r in result["rows"] if r["coefficient"] != 0)
    assert set(result["layers"]) == {"1", "3"}
    info = result["layers"]["3"]
    assert len(info["margins"]) == 3 and all(len(m) == 3 for m in info["margins"])
    assert set(info["monotonicity"]) == {"spearman_rho", "spearman_p", "sign_changes", "monotonic", "direction"}
    assert 0 <= info["wrong_direction_share"] <= 1 and 0 <= info["prompts_monotonic_share"] <= 1
    for r in result["rows"]:
        margins = result["layers"][str(r["layer"])]["margins"][[-2, 0, 2].index(r["coefficient"])]
        assert r["mean_margin_ci_low"] <= r["mean_margin"] <= r["mean_margin_ci_high"]
        assert r["std_margin"] == pytest.approx(float(np.std(margins, ddof=1)))
    assert (tmp_path / "sweep" / "sweep.csv").read_text().startswith("layer,coefficient,mean_margin")
    # the evaluator path (a stub evaluator) gives a pass rate per row
    vecs, _ = steering.load_vectors(vec_dir)
    res = steering.sweep(model, tok, vecs, [3], [0.0, 1.0], rows[:2], [], evaluator=_HasFox(), max_new_tokens=4)
    assert all(0.0 <= r["pass_rate"] <= 1.0 for r in res["rows"])


def test_batch_matches_single(tiny):
    model, tok = tiny
    rows = [{"prompt": p, "positive": "the quick brown fox", "negative": "dog"} for p in PROMPTS[:5]]
    rows[2]["prompt"] = "Hi"
    vec = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with steering.steering(model, {2: vec}):
        batched = steering.margins(model, tok, rows, batch_size=5)
        single = steering.margins(model, tok, rows, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)


def test_steering_acts_on_cached_decode(tiny):
    from toolkit.dream.generate import chat_prompt, generate

    model, tok = tiny
    prompt = chat_prompt(tok, [{"role": "user", "content": "User asked for item 2."}])
    vec = 40 * _direction(model, tok)[0]
    plain = generate(model, tok, [prompt], temperature=0.0, max_new_tokens=6, batch_size=1, seed=0)
    with steering.steering(model, {2: vec}):
        steered = generate(model, tok, [prompt], temperature=0.0, max_new_tokens=6, batch_size=1, seed=0)
        # the same greedy tokens recomputed without the cache, hook on the full sequence each step
        ids = steering.prompt_ids(tok, "User asked for item 2.")
        expected = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids + expected]), use_cache=False).logits[0, -1].argmax())
                expected.append(nxt)
    assert steered != plain
    from toolkit.dream.generate import eos_token_ids, generate_ids

    with steering.steering(model, {2: vec}):
        got = generate_ids(model, tok, [prompt], temperature=0.0, max_new_tokens=6, batch_size=1, seed=0)[0]
    stop = next((i + 1 for i, t in enumerate(got) if t in eos_token_ids(model, tok)), None)
    assert got and got == expected[:len(got)] and (len(got) == 6 or stop == len(got))  # full length, or ended at EOS


def test_probes_on_planted_pairs(tiny):
    model, tok = tiny
    d, _, _ = _direction(model, tok)
    rows = _pairs(20)
    with planted(model, tok, 2, d):
        vec = steering.train_vectors(model, tok, rows, [2])[2]
        result = probes.run_probes(model, tok, rows, [2], {2: vec}, n_permutations=20)["2"]
    assert result["logreg"]["accuracy"] >= 0.95 and result["logreg"]["auroc"] >= 0.99
    assert result["diff_means"]["accuracy"] >= 0.95
    for probe in ("logreg", "diff_means"):
        control = result[probe]["permutation"]
        assert control["p_value"] == pytest.approx(1 / 21) and control["chance_accuracy"] <= 0.75
    assert result["cosine_diff_means_vector"] >= 0.99


def test_cli_train_and_bad_layers(tiny_model_dir, tmp_path, capsys):
    from toolkit.cli import main

    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(4))
    out = tmp_path / "v"
    main(["steer", "train", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--layers", "1,2",
          "--method", "pca", "--out", str(out)])
    assert (out / "vectors.safetensors").is_file() and (out / "meta.json").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["steer", "train", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--layers", "1,9",
              "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "out of range" in err and len(err.splitlines()) == 1
    probe_out = tmp_path / "p"
    main(["steer", "probe", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--layers", "2",
          "--vector", str(out), "--out", str(probe_out), "--folds", "2", "--permutations", "5"])
    data = json.loads((probe_out / "probes.json").read_text())
    assert "2" in data["layers"] and "cosine_diff_means_vector" in data["layers"]["2"]
    assert data["meta"]["n_permutations"] == 5 and "chance" in capsys.readouterr().out
    sweep_out = tmp_path / "s"
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", _pairs(2) + [{"prompt": "Hello"}])
    main(["steer", "sweep", "--model", str(tiny_model_dir), "--vector", str(out), "--layers", "2",
          "--coefficients", "-1,0,1", "--prompts", str(prompts), "--out", str(sweep_out)])
    assert "spearman rho" in capsys.readouterr().out
    assert json.loads((sweep_out / "sweep.json").read_text())["meta"]["layers"] == [2]


def test_probe_compares_the_vector_with_the_finetune_shift(tiny_model_dir, tmp_path):
    """`steer probe --tuned RUN`: per layer, the cosine of the vector with the shift the LoRA caused."""
    import math

    from test_train import run_toolkit, write_recipe

    from analysis.probes import probe_command
    from analysis.steering import train_command

    recipe = write_recipe(tmp_path, tiny_model_dir, "tuned", max_steps=4, checkpoint_every=4, eval_every=4, lr=2e-2)
    run_toolkit("finetune", str(recipe))
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(12))
    train_command(str(tiny_model_dir), pairs, "1,2", "mean_diff", "last", tmp_path / "vec")
    result = probe_command(str(tiny_model_dir), pairs, "1,2", tmp_path / "probe", vector_dir=tmp_path / "vec",
                           tuned=tmp_path / "tuned", base=str(tiny_model_dir), n_permutations=0)
    shift = result["finetune_shift"]
    assert sorted(int(k) for k in shift) == [1, 2]
    for info in shift.values():
        assert info["shift_norm"] > 0  # the fine-tune moved the activations
        assert math.isfinite(info["cosine_vector_shift"]) and -1.0 <= info["cosine_vector_shift"] <= 1.0


# ---------------------------------------------------------------- statistics on synthetic data


def _repeng_pca_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """repeng's read_representations(method="pca_diff"), independently: PCA (centered) of h[::2] - h[1::2], sign by
    the majority of pairs in which the positive projects higher."""
    diffs = pos - neg
    direction = np.linalg.svd(diffs - diffs.mean(0), full_matrices=False)[2][0]
    smaller, larger = np.mean(pos @ direction < neg @ direction), np.mean(pos @ direction > neg @ direction)
    return -direction if smaller > larger else direction


def _offset_pairs(n=40, hidden=32, seed=0):
    """Differences = a common offset (norm 5, along e0) + t_i · e1 with t_i ~ N(1, 1), plus small noise."""
    rng = np.random.default_rng(seed)
    neg = rng.normal(size=(n, hidden))
    pos = neg + 5.0 * np.eye(hidden)[0] + rng.normal(1.0, 1.0, size=(n, 1)) * np.eye(hidden)[1]
    return pos + 0.05 * rng.normal(size=(n, hidden)), neg


def test_pca_is_centered_unlike_mean_diff_and_matches_repeng():
    pos, neg = _offset_pairs()
    pos_t, neg_t = torch.from_numpy(pos).float(), torch.from_numpy(neg).float()
    pca, mean_diff = steering.compute_vector(pos_t, neg_t, "pca"), steering.compute_vector(pos_t, neg_t, "mean_diff")
    assert steering.cosine(pca, torch.from_numpy(_repeng_pca_diff(pos, neg))) > 0.9999
    assert abs(steering.cosine(pca, mean_diff)) < 0.3  # mean_diff is mostly the offset, pca the varying axis
    assert steering.cosine(pca, torch.eye(32)[1]) > 0.99  # the sign: positives project higher
    assert float(pca.norm()) == pytest.approx(float(mean_diff.norm()), rel=1e-5)
    uncentered = torch.linalg.svd(pos_t - neg_t, full_matrices=False)[2][0]  # the old method: the offset again
    assert abs(steering.cosine(uncentered, mean_diff)) > 0.98


@pytest.mark.parametrize(("n_pairs", "n_splits"), [(5, 5), (20, 5), (7, 3)])
def test_probe_folds_keep_both_sides_of_a_pair_together(n_pairs, n_splits):
    y = np.r_[np.ones(n_pairs, int), np.zeros(n_pairs, int)]
    groups = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    splits = probes.pair_folds(y, groups, n_splits)
    assert len(splits) == min(n_splits, n_pairs)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(2 * n_pairs))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert sorted(y[test].tolist()) == [0] * (len(test) // 2) + [1] * (len(test) // 2)


def test_the_permutation_control_tells_a_planted_direction_from_random_labels(monkeypatch):
    rng = np.random.default_rng(0)
    neg = rng.normal(size=(20, 16))
    seen = []
    folds = probes.pair_folds
    monkeypatch.setattr(probes, "pair_folds", lambda *a: seen.append(folds(*a)) or seen[-1])
    random = probes.probe_layer(torch.from_numpy(rng.normal(size=(20, 16))), torch.from_numpy(neg), n_permutations=30)
    planted = probes.probe_layer(torch.from_numpy(neg + 5.0 * np.eye(16)[3] + 0.5 * rng.normal(size=(20, 16))),
                                 torch.from_numpy(neg), n_permutations=30)
    for probe in ("logreg", "diff_means"):
        assert random[probe]["permutation"]["p_value"] > 0.05, probe
        assert planted[probe]["permutation"]["p_value"] < 0.05 and planted[probe]["accuracy"] >= 0.9, probe
        assert 0.35 <= planted[probe]["permutation"]["chance_accuracy"] <= 0.65
    groups = np.r_[np.arange(20), np.arange(20)]
    assert seen and all(not set(groups[train]) & set(groups[test]) for splits in seen for train, test in splits)


def test_sweep_cis_cover_the_true_mean_and_monotonicity_flags_a_u_shape():
    rng = np.random.default_rng(0)
    coefficients = [-4.0, -2.0, 0.0, 2.0, 4.0]
    covered = []
    for rep in range(100):
        margins = rng.normal(1.0, 2.0, size=24)
        row = steering.margin_row(margins.tolist(), [0.0] * 24, seed=rep)
        covered.append(row["mean_margin_ci_low"] <= 1.0 <= row["mean_margin_ci_high"])
        assert row["std_margin"] == pytest.approx(float(np.std(margins, ddof=1)))
    assert 0.88 <= np.mean(covered) <= 1.0  # a 95% interval
    line = steering.monotonicity(coefficients, [0.5 * c for c in coefficients])
    assert line == {"spearman_rho": pytest.approx(1.0), "spearman_p": pytest.approx(2 / 120), "sign_changes": 0,
                    "monotonic": True, "direction": "increasing"}
    u_shape = steering.monotonicity(coefficients, [0.1 * c * c for c in coefficients])
    assert not u_shape["monotonic"] and u_shape["sign_changes"] == 1 and u_shape["direction"] is None
    assert abs(u_shape["spearman_rho"]) < 0.5 and u_shape["spearman_p"] > 0.05
    by_coef = [[0.1 * c * c + e for e in rng.normal(0, 0.01, size=8)] for c in coefficients]
    summary = steering.layer_summary(coefficients, by_coef)
    assert not summary["monotonicity"]["monotonic"] and summary["prompts_monotonic_share"] == 0.0
