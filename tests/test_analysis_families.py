"""The analysis commands on every model family as the hub ships it (tests/families.py): head-diff finds exactly the
head whose weights were perturbed (attention heads; GDN heads on hybrids, Qwen3-Next's fused projections
included), rank reads each family's adapters (GPT-2's Conv1D LoRA, an adapter saved for a multimodal base with
every tensor under two names), head-diff takes an adapter trained on the text model of a multimodal checkpoint,
and steer train / sweep / probe run on each family."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from families import FAMILIES, HYBRID, MULTIMODAL, build_family, family_model_class

ATTN = {"qwen3_5": 3, "qwen3_5_moe": 3, "qwen3_next": 3, "llama": 1, "gpt2": 1}  # the layer of the perturbed head
ATTN_HEAD = 1
GDN_LAYER, GDN_HEAD = 1, 2
PROBES = [{"text": "Line 3: the quick brown fox jumps over the lazy dog while the cat sleeps."},
          {"prompt": "Use tabs for file 4, please."},
          {"text": "User asked for item 5; the assistant answered with care."}]
PAIRS = [{"prompt": f"Format file {i}.", "positive": "Understood, tabs it is.", "negative": "Spaces are better."}
         for i in range(4)]
PLANTED_RANK = 3


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """family -> its hub-shaped checkpoint, built once per module on first use."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_family(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("probes") / "probes.jsonl", PROBES)


# ---------------------------------------------------------------- head-diff on a perturbed copy


def _perturb(family: str, model) -> None:
    """Move the weights only ATTN_HEAD of layer ATTN[family] owns, and on hybrids those only GDN_HEAD of layer
    GDN_LAYER owns (its v/z/a/b rows, conv channels, out_proj columns and gates; not the q/k rows it shares
    with the other value heads of its key-head group), in the checkpoint's own class."""
    from analysis.capture import (
        _attention_module,
        attention_head_slices,
        gdn_head_slices,
    )
    from toolkit.layout import decoder_layers

    gen = torch.Generator().manual_seed(3)
    layers = decoder_layers(model)
    attn = attention_head_slices(_attention_module(layers[ATTN[family]]), ATTN_HEAD)  # views into the weights
    keys = ["q_proj", "k_proj", "v_proj", "o_proj"] if family == "gpt2" else ["q_proj", "o_proj"]  # GQA shares k/v
    with torch.no_grad():
        for key in keys:
            attn[key].add_(torch.randn(attn[key].shape, generator=gen) * attn[key].std() * 2)
        if family in HYBRID:
            gdn = gdn_head_slices(layers[GDN_LAYER].linear_attn, GDN_HEAD)
            for key in ("in_proj_v", "in_proj_z", "in_proj_a", "in_proj_b", "conv_v", "out_proj"):
                gdn[key].add_(torch.randn(gdn[key].shape, generator=gen) * 0.5)
            gdn["A_log"].sub_(3.0)
            gdn["dt_bias"].add_(0.5)


@pytest.fixture(scope="module")
def perturbed_dirs(family_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("perturbed")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from transformers import AutoTokenizer

            src = family_dirs(family)
            model = family_model_class(family).from_pretrained(str(src), dtype=torch.float32)
            _perturb(family, model)
            model.save_pretrained(root / family)
            AutoTokenizer.from_pretrained(str(src)).save_pretrained(root / family)
            built[family] = root / family
        return built[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_head_diff_finds_exactly_the_perturbed_heads(family, family_dirs, perturbed_dirs, probes, tmp_path):
    from analysis.capture import MERGED_PREFIX
    from analysis.head_diff import run_head_diff

    before = set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*"))
    result = run_head_diff(family_dirs(family), perturbed_dirs(family), probes, tmp_path, plot=False)
    assert set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*")) == before
    heads = {h["name"]: h for h in result["heads"]}
    kinds = {h["kind"] for h in result["heads"]}
    if family in HYBRID:
        assert kinds == {"attention", "gdn"} and len(heads) == 3 * 4 + 4
    else:
        assert kinds == {"attention"} and len(heads) == 4 * 4
    attn_name = f"L{ATTN[family]}.H{ATTN_HEAD}"
    changed = {attn_name} | ({f"L{GDN_LAYER}.H{GDN_HEAD}"} if family in HYBRID else set())
    for name, h in heads.items():
        w = h["weight_rel_change"]
        assert w is not None, name
        assert (w > 1e-3) if name in changed else (w == 0.0), (name, w, h["weight_rel_change_parts"])
        assert h["direct"] == (name in changed), name
        if name not in changed:  # whatever moved it came from below: exactly its null, never significant
            assert h["direct_score"] == 0.0 and h["score"] == h["propagated_score"] and h["excess"] == 0.0, name
            assert not h["significant"], name
    # behavior: the perturbed heads move; the other heads of their layers and every earlier head do not
    for name in changed:
        assert heads[name]["score"] > 1e-4 and heads[name]["direct_score"] > 1e-4, (name, heads[name]["score"])
    first = min(heads[name]["layer"] for name in changed)
    for name, h in heads.items():
        if name not in changed and h["layer"] <= first:
            assert h["score"] <= 1e-6, (name, h["score"])
    if family in HYBRID:
        gates = heads[f"L{GDN_LAYER}.H{GDN_HEAD}"]["gates"]
        assert abs(gates["A_log"]["delta"] + 3.0) < 1e-5 and abs(gates["dt_bias"]["delta"] - 0.5) < 1e-5
    assert (tmp_path / "head_diff.md").is_file()


def test_qwen3_next_fused_slices_are_the_heads_the_forward_reads(family_dirs):
    """Perturbing value head h's slices of in_proj_qkvz / in_proj_ba changes exactly head h's v, z, b, a in
    transformers' own fix_query_key_value_ordering (and a key head's q/k rows exactly that key head)."""
    from analysis.capture import gdn_head_slices
    from toolkit.model import load_model
    from toolkit.recipe import ModelConfig

    path = str(family_dirs("qwen3_next"))
    gdn = load_model(path, ModelConfig(name_or_path=path)).model.layers[0].linear_attn
    x = torch.randn(1, 5, gdn.hidden_size, generator=torch.Generator().manual_seed(0))

    def parts():
        with torch.no_grad():
            return gdn.fix_query_key_value_ordering(gdn.in_proj_qkvz(x), gdn.in_proj_ba(x))  # q k v z b a

    base = parts()
    r = gdn.num_v_heads // gdn.num_k_heads
    checks = {"in_proj_q": 0, "in_proj_k": 1, "in_proj_v": 2, "in_proj_z": 3, "in_proj_b": 4, "in_proj_a": 5}
    for head in range(gdn.num_v_heads):
        for key, index in checks.items():
            sl = gdn_head_slices(gdn, head)[key]  # a view into the fused weight
            saved = sl.detach().clone()
            with torch.no_grad():
                sl.add_(1.0)
            after = parts()[index]
            with torch.no_grad():
                sl.copy_(saved)
            diff = (after - base[index]).abs()
            diff = diff.amax(dim=(0, 1, 3)) if diff.dim() == 4 else diff.amax(dim=(0, 1))  # per head
            owner = head // r if key in ("in_proj_q", "in_proj_k") else head
            assert [bool(d > 0) for d in diff] == [h == owner for h in range(len(diff))], (head, key, diff)


# ---------------------------------------------------------------- adapters: rank and head-diff


def _lora_targets(family: str) -> list[str]:
    if family == "gpt2":
        return ["c_attn"]
    targets = ["q_proj", "v_proj"]
    if family == "qwen3_next":
        targets += ["in_proj_qkvz", "in_proj_ba", "out_proj"]
    elif family in HYBRID:
        targets += ["in_proj_qkv", "in_proj_z", "out_proj"]
    return targets


@pytest.fixture(scope="module")
def adapters(family_dirs, tmp_path_factory):
    """family -> a PEFT adapter with every delta of rank PLANTED_RANK (r = 8), saved by toolkit.lora.save_adapter
    from the text model load_model gives (for a multimodal base: every tensor under two names)."""
    root = tmp_path_factory.mktemp("adapters")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from peft import LoraConfig, get_peft_model

            from toolkit.lora import save_adapter
            from toolkit.model import load_model
            from toolkit.recipe import ModelConfig

            path = str(family_dirs(family))
            model = load_model(path, ModelConfig(name_or_path=path))
            peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=_lora_targets(family),
                                                          init_lora_weights=False))
            gen = torch.Generator().manual_seed(5)
            with torch.no_grad():
                for name, module in peft_model.named_modules():
                    if name.endswith("lora_B.default"):
                        b = torch.zeros_like(module.weight)  # exactly rank 3 in any float rounding
                        b[:, :PLANTED_RANK] = torch.randn(b.shape[0], PLANTED_RANK, generator=gen) * 0.05
                        module.weight.copy_(b)
            save_adapter(peft_model, root / family)
            built[family] = root / family
        return built[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_rank_reads_the_planted_rank_and_deltas_fit_the_merged_weights(family, family_dirs, adapters, tmp_path):
    from safetensors import safe_open

    from analysis.rank import _match_names, lora_deltas, rank_report
    from toolkit.lora import load_adapter
    from toolkit.model import load_model
    from toolkit.recipe import ModelConfig

    adapter = adapters(family)
    data = _write_jsonl(tmp_path / "data.jsonl", [{"text": p["text"]} for p in PROBES if "text" in p])
    report = rank_report(adapter, data=data, out=tmp_path / "report")
    modules = report["run_a"]["modules"]
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        n_keys = sum(".lora_A." in k for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert len(modules) == n_keys // (2 if family in MULTIMODAL else 1)  # an aliased adapter is read once
    assert all(m["rank"] == PLANTED_RANK and m["r"] == 8 for m in modules.values()), \
        {n: m["rank"] for n, m in modules.items()}
    assert all(m["type"] in (("attention", "gdn") if family in HYBRID else ("attention",)) for m in modules.values())
    assert (tmp_path / "report" / "rank.md").is_file() and report["truncation"]["rank"] == 8

    path = str(family_dirs(family))
    base = load_model(path, ModelConfig(name_or_path=path))
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    merged = load_adapter(base, adapter).merge_and_unload()
    weights = {n.removesuffix(".weight"): p.detach() for n, p in merged.named_parameters()}
    deltas = lora_deltas(adapter)
    names = _match_names(deltas, weights)
    assert len(names) == len(deltas)
    for name, delta in deltas.items():
        real = weights[names[name]] - before[names[name] + ".weight"]
        assert torch.allclose(delta.float(), real, atol=1e-5), name  # GPT-2: (B @ A)^T in Conv1D's [in, out]


@pytest.mark.parametrize("family", ["qwen3_5", "gpt2"])
def test_head_diff_takes_an_adapter_on_the_checkpoint_dir(family, family_dirs, adapters, probes, tmp_path):
    """The adapter was trained on the text model; the base named is the hub checkpoint (multimodal for qwen3_5)."""
    from analysis.capture import MERGED_PREFIX
    from analysis.head_diff import run_head_diff

    before = set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*"))
    result = run_head_diff(family_dirs(family), adapters(family), probes, tmp_path, base_model=str(family_dirs(family)),
                           plot=False)
    assert set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*")) == before
    heads = result["heads"]
    attention = [h for h in heads if h["kind"] == "attention"]
    assert attention and all(h["weight_rel_change"] > 0 for h in attention)  # q (or c_attn) of every head
    if family in HYBRID:
        assert all(h["weight_rel_change"] > 0 for h in heads if h["kind"] == "gdn")
    assert any(h["score"] > 1e-6 for h in heads)


# ---------------------------------------------------------------- steering


@pytest.mark.parametrize("family", FAMILIES)
def test_steer_train_sweep_probe_on_each_family(family, family_dirs, tmp_path, capsys):
    from analysis.steering import load_vectors
    from toolkit.cli import main

    model = str(family_dirs(family))
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    vec = tmp_path / "vec"
    main(["steer", "train", "--model", model, "--pairs", str(pairs), "--layers", "1,3", "--out", str(vec)])
    vectors, meta = load_vectors(vec)
    assert sorted(vectors) == [1, 3] and meta["layers"] == [1, 3]
    assert all(v.shape == (64,) and torch.isfinite(v).all() and v.norm() > 0 for v in vectors.values())
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", PAIRS[:2] + [{"prompt": "Hello there"}])
    main(["steer", "sweep", "--model", model, "--vector", str(vec), "--layers", "3", "--coefficients", "-1,0,1",
          "--prompts", str(prompts), "--out", str(tmp_path / "sweep")])
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    zero = [r for r in sweep["rows"] if r["coefficient"] == 0]
    assert len(sweep["rows"]) == 3 and abs(zero[0]["kl"]) < 1e-6
    assert all(r["kl"] > 0 for r in sweep["rows"] if r["coefficient"] != 0)
    main(["steer", "probe", "--model", model, "--pairs", str(pairs), "--layers", "1", "--vector", str(vec),
          "--out", str(tmp_path / "probe"), "--folds", "2"])
    probe = json.loads((tmp_path / "probe" / "probes.json").read_text())
    assert "cosine_diff_means_vector" in probe["layers"]["1"]
    capsys.readouterr()
