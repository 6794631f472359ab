"""analysis.capture and analysis.head_diff on tiny-hybrid (3 GDN layers x 4 value heads, 1 attention layer x 4
heads): hook shapes and names, the exact GDN implicit matrix, self-diff = 0, a planted change found, q_proj
interleaving, and a real LoRA run dir end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from analysis.capture import (MERGED_PREFIX, attention_head_slices, boot_bridge, capture, capture_bridge, list_heads,
                              load_for_capture)
from analysis.head_diff import run_head_diff

ATTN_LAYER = 3  # tiny-hybrid: layers 0-2 GDN, layer 3 full attention
PROBES = [
    {"text": "Line 3: the quick brown fox jumps over the lazy dog while the cat sleeps."},
    {"prompt": "Use tabs for file 4, please."},
    {"messages": [{"role": "user", "content": "User asked for item 2"},
                  {"role": "assistant", "content": "the assistant answered with care"}]},
    {"text": "User asked for item 5; the assistant answered with care and did what was asked."},
    {"prompt": "the lazy dog sleeps while the quick brown fox jumps"},
    {"text": "Line 9: the cat sleeps. Line 10: the fox jumps over the dog."},
]


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probes") / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _save_variant(tiny_model_dir, out: Path, edit) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(out)
    return out


def test_capture_gives_every_head_with_the_expected_shapes(tiny_model_dir, tokenizer):
    caps = capture(str(tiny_model_dir), PROBES[:2], tokenizer)
    assert len(caps) == 2
    for cap in caps:
        T = len(cap["tokens"])
        assert sorted(cap["attention"]) == [f"L3.H{h}" for h in range(4)]
        assert sorted(cap["gdn"]) == [f"L{layer}.H{h}" for layer in range(3) for h in range(4)]
        for pattern in cap["attention"].values():
            assert pattern.shape == (T, T) and pattern.dtype == torch.float32
            assert torch.allclose(pattern.sum(-1), torch.ones(T), atol=1e-5)
            assert torch.all(pattern.triu(1) == 0)  # causal
        for head in cap["gdn"].values():
            assert head["beta"].shape == (T,) and head["log_decay"].shape == (T,)
            assert head["implicit"].shape == (T, T) and torch.all(head["implicit"].triu(1).abs() < 1e-6)
            assert torch.all((head["beta"] > 0) & (head["beta"] < 1)) and torch.all(head["log_decay"] <= 0)
    names = [(h.name, h.kind) for h in list_heads(__import__("transformers").AutoConfig.from_pretrained(
        str(tiny_model_dir)))]
    assert names[:4] == [(f"L0.H{h}", "gdn") for h in range(4)] and names[-1] == ("L3.H3", "attention")


def test_implicit_matrix_reproduces_the_real_gdn_layer(tiny_model_dir, tokenizer):
    """A @ V equals the bridge's core output and, through the layer's own gated norm and out_proj, the output of
    the unmodified transformers GatedDeltaNet layer."""
    from transformers import AutoModelForCausalLM

    bridge = boot_bridge(str(tiny_model_dir))
    cap = capture_bridge(bridge, [PROBES[0]["text"] * 2], tokenizer, keep_raw=True)[0]
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    outputs = {}
    hooks = [hf.model.layers[layer].linear_attn.register_forward_hook(
        lambda mod, args, out, layer=layer: outputs.__setitem__(layer, out)) for layer in range(3)]
    with torch.no_grad():
        hf(torch.tensor([cap["tokens"]]), use_cache=False)
    for h in hooks:
        h.remove()
    for layer in range(3):
        raw, gdn = cap["gdn_raw"][layer], hf.model.layers[layer].linear_attn
        A = torch.stack([cap["gdn"][f"L{layer}.H{h}"]["implicit"] for h in range(4)])  # [H, T, T]
        core = torch.einsum("hij,jhd->ihd", A, raw["v"][0])  # [T, H, dv]
        ref = raw["recurrence_out"][0]
        assert (core - ref).abs().max() <= 1e-4 * ref.abs().max(), layer  # relative: random-init values are ~1e-3
        with torch.no_grad():
            normed = gdn.norm(core.reshape(-1, core.shape[-1]), raw["gate_input"][0].reshape(-1, core.shape[-1]))
            out = gdn.out_proj(normed.reshape(core.shape[0], -1))
        real = outputs[layer][0]
        assert torch.allclose(out, real, atol=1e-4 * max(1.0, real.abs().max().item())), \
            (layer, (out - real).abs().max().item())


def test_q_proj_slicing_follows_the_interleaved_query_and_gate_rows(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    attn = model.model.layers[ATTN_LAYER].self_attn
    d = attn.head_dim
    for h in range(4):
        assert torch.equal(attention_head_slices(attn, h)["q_proj"], attn.q_proj.weight[2 * d * h:2 * d * (h + 1)])

    def perturb_query_of_head_2(m):
        w = attention_head_slices(m.model.layers[ATTN_LAYER].self_attn, 2)["q_proj"]  # a view
        w[:d] += torch.randn(d, w.shape[1], generator=torch.Generator().manual_seed(1)) * 0.5

    def perturb_gate_of_head_2(m):
        attention_head_slices(m.model.layers[ATTN_LAYER].self_attn, 2)["q_proj"][d:] += 0.5

    before = capture(str(tiny_model_dir), PROBES[:2], tokenizer)
    query = capture(str(_save_variant(tiny_model_dir, tmp_path / "q", perturb_query_of_head_2)), PROBES[:2],
                    tokenizer)
    gate = capture(str(_save_variant(tiny_model_dir, tmp_path / "g", perturb_gate_of_head_2)), PROBES[:2], tokenizer)
    for b, q, g in zip(before, query, gate):
        for h in range(4):
            name = f"L{ATTN_LAYER}.H{h}"
            changed = (q["attention"][name] - b["attention"][name]).abs().max().item()
            assert (changed > 1e-3) if h == 2 else (changed == 0.0), (h, changed)
            assert torch.equal(g["attention"][name], b["attention"][name])  # gate rows do not touch the pattern


def test_a_model_against_itself_changes_nothing(tiny_model_dir, probes, tmp_path):
    result = run_head_diff(tiny_model_dir, tiny_model_dir, probes, tmp_path)
    assert len(result["heads"]) == 16 and result["n_prompts"] == len(PROBES)
    for h in result["heads"]:
        assert h["score"] <= 1e-6 and h["matrix_distance"] <= 1e-6 and not h["above_noise"], h["name"]
        assert h["weight_rel_change"] == 0.0
    assert "No head changed" in result["summary"]["concentration"]
    assert (tmp_path / "head_diff.json").is_file() and (tmp_path / "head_diff.md").is_file()


def test_a_planted_change_ranks_at_the_top_of_its_kind(tiny_model_dir, probes, tmp_path):
    def plant(m):
        attn = m.model.layers[ATTN_LAYER].self_attn
        d = attn.head_dim
        w = attention_head_slices(attn, 1)["q_proj"]
        w[:d] = torch.randn(d, w.shape[1], generator=torch.Generator().manual_seed(2)) * w[:d].std() * 3
        m.model.layers[1].linear_attn.A_log[1] -= 6.0  # L1.H1 decays ~400x slower: a long memory

    planted = _save_variant(tiny_model_dir, tmp_path / "planted", plant)
    result = run_head_diff(tiny_model_dir, planted, probes, tmp_path / "out")
    heads = {h["name"]: h for h in result["heads"]}
    top = result["summary"]["by_kind"]
    assert top["attention"]["top"][0]["name"] == "L3.H1", top["attention"]["top"]
    assert top["gdn"]["top"][0]["name"] == "L1.H1", top["gdn"]["top"]
    assert heads["L3.H1"]["above_noise"] and heads["L1.H1"]["above_noise"]
    gate = heads["L1.H1"]["gates"]["A_log"]
    assert gate["changed"] and abs(gate["delta"] + 6) < 1e-5 and not heads["L1.H1"]["gates"]["dt_bias"]["changed"]
    tau = heads["L1.H1"]["decay_timescale"]
    assert tau["mean_after"] > 100 * tau["mean_before"] and tau["ks_stat"] == 1.0
    assert heads["L3.H1"]["weight_rel_change_parts"]["q_proj"] > 0.5
    assert heads["L3.H0"]["weight_rel_change"] == 0.0
    for name in ("L0.H0", "L0.H3", "L1.H0", "L1.H2"):  # same or earlier layer, untouched: exactly unchanged
        assert heads[name]["score"] <= 1e-6 and not heads[name]["above_noise"], name
    md = (tmp_path / "out" / "head_diff.md").read_text()
    assert "L3.H1" in md and ("concentrated" in md or "distributed" in md)


def test_a_lora_run_dir_as_tuned_end_to_end(tiny_model_dir, probes, tmp_path):
    import tempfile

    from test_train import run_toolkit, write_recipe

    recipe = write_recipe(tmp_path, tiny_model_dir, "hd-lora", max_steps=4, checkpoint_every=4, eval_every=4)
    run_toolkit("finetune", str(recipe))
    run_dir = tmp_path / "hd-lora"
    merged = load_for_capture(run_dir)
    assert Path(merged, "config.json").is_file() and Path(merged, "tokenizer_config.json").is_file()
    shutil.rmtree(merged)
    before = set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*"))
    run_head_diff(tiny_model_dir, run_dir, probes, tmp_path / "report")
    assert set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*")) == before  # the merged copy is removed
    data = json.loads((tmp_path / "report" / "head_diff.json").read_text())
    assert len(data["heads"]) == 16 and {h["kind"] for h in data["heads"]} == {"attention", "gdn"}
    assert any(h["score"] > 1e-6 for h in data["heads"]), "LoRA training changed no head"
    assert any(h["weight_rel_change"] > 0 for h in data["heads"])
    s = data["summary"]
    assert abs(s["share_of_change"]["attention"] + s["share_of_change"]["gdn"] - 1) < 1e-6
    assert (tmp_path / "report" / "head_diff.md").read_text().startswith("# Head diff")


def test_finetune_runs_head_diff_when_the_analysis_section_asks(tmp_path, tiny_model_dir):
    import json as _json

    from test_train import run_toolkit, write_recipe

    from toolkit.journal import read_jsonl

    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(_json.dumps({"prompt": f"Use tabs for file {i}."}) + "\n" for i in range(4)))
    recipe = write_recipe(tmp_path, tiny_model_dir, "analysed", max_steps=4, checkpoint_every=4, eval_every=4)
    data = _json.loads(recipe.read_text())
    data["analysis"] = {"head_diff": True, "probes": str(probes)}
    recipe.write_text(_json.dumps(data))
    out = run_toolkit("finetune", str(recipe))
    run_dir = tmp_path / "analysed"
    assert (run_dir / "reports" / "head_diff.md").is_file() and "head_diff" in out.stdout
    event = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "head_diff"]
    assert event and event[0]["data"]["summary"]["concentration"]
    cli = run_toolkit("analyze", "head-diff", "--base", str(tiny_model_dir), "--tuned", str(run_dir),
                      "--prompts", str(probes), "--out", str(tmp_path / "cli"))
    assert "report:" in cli.stdout and (tmp_path / "cli" / "head_diff.json").is_file()
    missing = run_toolkit("analyze", "head-diff", "--base", str(tiny_model_dir), "--tuned", str(run_dir),
                          "--prompts", str(tmp_path / "nope.jsonl"), check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_a_tuned_path_that_is_no_model_is_a_one_line_error(tmp_path, tiny_model_dir):
    from test_train import run_toolkit

    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"prompt": "Use tabs."}\n')
    (tmp_path / "empty").mkdir()
    out = run_toolkit("analyze", "head-diff", "--base", str(tiny_model_dir), "--tuned", str(tmp_path / "empty"),
                      "--prompts", str(probes), "--out", str(tmp_path / "out"), check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a model dir, adapter dir or run dir" in out.stderr
