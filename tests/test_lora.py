"""LoRA presets, attach, adapter round-trip through plain peft (with and without GDN gates), merged export."""

from __future__ import annotations

import re

import pytest
import torch

from toolkit.errors import ToolkitError
from toolkit.lora import (
    LORA_PRESETS,
    attach_lora,
    export_merged,
    gate_parameters,
    linear_module_names,
    load_adapter,
    load_trainable_state_dict,
    portable_name,
    resolve_lora_targets,
    split_targets,
    save_adapter,
    trainable_state_dict,
)
from toolkit.recipe import LoraConfig

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
GDN = ["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def fresh(model_dir):
    """A new copy of the base model: attach_lora modifies the model it wraps."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return fresh(tiny_model_dir)  # read-only: only resolve_lora_targets / linear_module_names touch it


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 24), generator=g)  # below any vocabulary used here


def logits(model, tokens):
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits


def train_steps(model, tokens, steps=4, lr=1e-2):
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model


# ---------------------------------------------------------------- presets and targets


def expected(layers, block, leaves):
    return sorted(f"model.layers.{i}.{block}.{leaf}" for i in layers for leaf in leaves)


def test_presets_select_exactly_the_expected_modules(base):
    assert sorted(resolve_lora_targets(base, "attention")) == expected([3], "self_attn", ATTN)
    assert sorted(resolve_lora_targets(base, "gdn")) == expected([0, 1, 2], "linear_attn", GDN)
    assert sorted(resolve_lora_targets(base, "mlp")) == expected(range(4), "mlp", MLP)
    everything = expected([3], "self_attn", ATTN) + expected([0, 1, 2], "linear_attn", GDN) + expected(range(4), "mlp", MLP)
    assert sorted(resolve_lora_targets(base, "hybrid-all")) == sorted(everything)
    assert set(LORA_PRESETS) == {"attention", "gdn", "mlp", "moe", "hybrid-all"}


def test_explicit_targets(base):
    assert resolve_lora_targets(base, ["q_proj"]) == ["model.layers.3.self_attn.q_proj"]
    assert sorted(resolve_lora_targets(base, ["out_proj", "self_attn.o_proj"])) == sorted(
        expected([0, 1, 2], "linear_attn", ["out_proj"]) + ["model.layers.3.self_attn.o_proj"]
    )
    regex = r"model\.layers\.[01]\.linear_attn\.in_proj_(a|b)"
    assert sorted(resolve_lora_targets(base, [regex])) == expected([0, 1], "linear_attn", ["in_proj_a", "in_proj_b"])
    assert sorted(resolve_lora_targets(base, ["attention", "down_proj"])) == sorted(
        expected([3], "self_attn", ATTN) + expected(range(4), "mlp", ["down_proj"])
    )


def test_linear_module_names(base):
    assert linear_module_names(base) == sorted(ATTN + GDN + MLP)  # conv1d and lm_head are not listed


def test_bad_target_lists_linear_modules(base):
    with pytest.raises(ToolkitError) as err:
        resolve_lora_targets(base, ["q_proj", "qkv_proj_nope"])
    assert err.value.key == "lora.targets"
    assert "qkv_proj_nope" in err.value.message
    for leaf in ATTN + GDN + MLP:
        assert leaf in err.value.message


def test_preset_typo_suggests_the_preset(base):
    with pytest.raises(ToolkitError) as err:
        resolve_lora_targets(base, "atention")
    assert err.value.key == "lora.targets"
    assert "did you mean 'attention'?" in str(err.value)


def test_presets_on_a_plain_model():
    """On a non-hybrid model gdn matches nothing (an error alone), hybrid-all still works."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    assert len(resolve_lora_targets(model, "hybrid-all")) == 2 * (4 + 3)
    with pytest.raises(ToolkitError, match="gate_proj"):
        resolve_lora_targets(model, "gdn")
    with pytest.raises(ToolkitError) as err:
        attach_lora(model, LoraConfig(r=4, targets="attention", train_gates=True))
    assert err.value.key == "lora.train_gates"


def tiny_qwen3_next():
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    cfg = Qwen3NextConfig(
        vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, num_experts=2, num_experts_per_tok=1,
        moe_intermediate_size=16, shared_expert_intermediate_size=16, mlp_only_layers=[1],
        layer_types=["linear_attention"] * 3 + ["full_attention"],
    )
    torch.manual_seed(0)
    return Qwen3NextForCausalLM(cfg)


def test_qwen3_next_gdn_preset_hits_fused_projections():
    model = tiny_qwen3_next()
    gdn = resolve_lora_targets(model, "gdn")
    assert sorted(gdn) == expected([0, 1, 2], "linear_attn", ["in_proj_qkvz", "in_proj_ba", "out_proj"])
    assert sorted(resolve_lora_targets(model, "attention")) == expected([3], "self_attn", ATTN)


def test_qwen3_next_mlp_targets_adapt_the_shared_expert_not_every_routed_expert():
    """peft (transformers v5) rewrites *_proj module targets on Qwen3-Next into LoRA on every routed expert;
    the shared expert's (and the dense layer's) projections go to peft as parameters instead, so LoRA lands on
    exactly them, and the router (not an nn.Linear) is reachable through the moe preset."""
    model = tiny_qwen3_next()
    mlp = resolve_lora_targets(model, "mlp")
    assert sorted(mlp) == sorted(expected([0, 2, 3], "mlp.shared_expert", MLP) + expected([1], "mlp", MLP))
    modules, parameters = split_targets(model, mlp)
    assert modules == [] and parameters == [portable_name(n) + ".weight" for n in mlp]
    moe = resolve_lora_targets(model, "moe")
    assert {n.rsplit(".", 1)[-1] for n in moe} == {"gate_proj", "up_proj", "down_proj", "shared_expert_gate", "gate"}
    peft_model = attach_lora(model, LoraConfig(r=4, targets=["hybrid-all", "moe"], train_gates=True))
    lora_params = [n for n, p in peft_model.named_parameters() if "lora_" in n]
    assert not any(".experts." in n for n in lora_params)  # no routed-expert LoRA
    assert any(".mlp.gate.lora_A" in n for n in lora_params) and any("shared_expert.down_proj.lora_B" in n
                                                                        for n in lora_params)
    assert len(gate_parameters(peft_model)) == 3 * 2


def test_qwen3_next_adapter_with_gates_round_trips(tmp_path, tokens):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tiny_qwen3_next().save_pretrained(tmp_path / "base")
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)  # noqa: E731
    model = attach_lora(load(), LoraConfig(r=8, targets="gdn", train_gates=True))
    trained = logits(train_steps(model, tokens), tokens)
    save_adapter(model, tmp_path / "adapter")
    plain = PeftModel.from_pretrained(load(), tmp_path / "adapter")
    torch.testing.assert_close(logits(plain, tokens), trained, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- attach


def test_attach_wraps_exactly_the_targets_and_freezes_the_base(tiny_model_dir):
    model = attach_lora(fresh(tiny_model_dir), LoraConfig(r=4, alpha=8, targets="attention"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 * 2
    assert all(re.search(r"layers\.3\.self_attn\.[qkvo]_proj\.lora_[AB]\.default\.weight$", n) for n in trainable)
    q = model.base_model.model.model.layers[3].self_attn.q_proj
    assert q.r["default"] == 4 and q.scaling["default"] == pytest.approx(8 / 4)


def test_rslora_and_dora_reach_peft(tiny_model_dir):
    rs = attach_lora(fresh(tiny_model_dir), LoraConfig(r=16, alpha=8, targets="attention", rslora=True))
    assert rs.base_model.model.model.layers[3].self_attn.q_proj.scaling["default"] == pytest.approx(8 / 16**0.5)
    dora = attach_lora(fresh(tiny_model_dir), LoraConfig(r=4, targets="gdn", dora=True))
    magnitudes = [n for n, p in dora.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 3 * 5
    assert set(magnitudes) <= set(trainable_state_dict(dora))


def test_train_gates_makes_only_gates_trainable_beyond_lora(tiny_model_dir):
    model = attach_lora(fresh(tiny_model_dir), LoraConfig(r=4, targets="mlp", train_gates=True))
    extra = sorted(n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n)
    assert extra == sorted(f"base_model.model.model.layers.{i}.linear_attn.{g}" for i in range(3) for g in ("A_log", "dt_bias"))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("train_gates", [False, True])
def test_adapter_round_trips_through_plain_peft(tiny_model_dir, tmp_path, tokens, train_gates):
    from peft import PeftModel

    base_logits = logits(fresh(tiny_model_dir), tokens)
    model = attach_lora(fresh(tiny_model_dir), LoraConfig(r=8, alpha=16, targets="hybrid-all", train_gates=train_gates))
    gates_before = {n: p.detach().clone() for n, p in gate_parameters(model).items()}
    train_steps(model, tokens)
    lora_b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert all(p.abs().sum() > 0 for p in lora_b)
    gates_changed = any(not torch.equal(p, gates_before[n]) for n, p in gate_parameters(model).items())
    assert gates_changed == train_gates
    trained = logits(model, tokens)
    assert not torch.allclose(trained, base_logits, atol=1e-3)

    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    plain = PeftModel.from_pretrained(fresh(tiny_model_dir), tmp_path / "adapter")  # plain peft, nothing of ours
    torch.testing.assert_close(logits(plain, tokens), trained, atol=1e-5, rtol=0)
    for name, param in gate_parameters(plain).items():
        assert torch.equal(param, gate_parameters(model)[name])

    ours = load_adapter(fresh(tiny_model_dir), tmp_path / "adapter", is_trainable=True)
    torch.testing.assert_close(logits(ours, tokens), trained, atol=1e-5, rtol=0)
    assert sorted(trainable_state_dict(ours)) == sorted(trainable_state_dict(model))


def test_trainable_state_dict_round_trips_bitwise(tiny_model_dir, tokens):
    cfg = LoraConfig(r=8, targets="hybrid-all", train_gates=True, dora=True)
    model = train_steps(attach_lora(fresh(tiny_model_dir), cfg), tokens, steps=2)
    state = trainable_state_dict(model)
    assert state.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith("A_log") for n in state) and any("lora_magnitude_vector" in n for n in state)

    other = attach_lora(fresh(tiny_model_dir), cfg)
    load_trainable_state_dict(other, state)
    for name, value in trainable_state_dict(other).items():
        assert torch.equal(value, state[name]), name
    assert torch.equal(logits(other, tokens), logits(model, tokens))

    with pytest.raises(ToolkitError, match="missing"):
        load_trainable_state_dict(other, {k: v for k, v in state.items() if "A_log" not in k})
    with pytest.raises(ToolkitError, match="unexpected"):
        load_trainable_state_dict(other, {**state, "bogus.weight": torch.zeros(1)})


def test_export_merged_loads_as_a_plain_model(tiny_model_and_tokenizer, tiny_model_dir, tmp_path, tokens):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, tokenizer = tiny_model_and_tokenizer
    model = train_steps(attach_lora(fresh(tiny_model_dir), LoraConfig(r=8, targets="hybrid-all", train_gates=True)), tokens)
    trained = logits(model, tokens)
    export_merged(model, tokenizer, tmp_path / "merged")

    torch.testing.assert_close(logits(model, tokens), trained, atol=0, rtol=0)  # training model untouched
    assert any(".lora_A." in n for n, _ in model.named_parameters())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, tokens), trained, atol=1e-4, rtol=0)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "merged")) == len(tokenizer)


def test_gates_train_in_fp32_on_a_bf16_base(tiny_model_dir, tmp_path, tokens):
    """An AdamW step of 2e-4 is below bf16's resolution at A_log ~ 1: kept in bf16 the gates never move."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in gate_parameters(bf16).items()}
    model = attach_lora(bf16, LoraConfig(r=4, targets="attention", train_gates=True))
    gates = gate_parameters(model)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in gates.values())
    assert next(p for n, p in model.named_parameters() if n.endswith("q_proj.base_layer.weight")).dtype == torch.bfloat16
    train_steps(model, tokens, steps=3, lr=2e-4)
    moved = [n for n, p in gates.items() if not torch.equal(p.detach(), before[n.removeprefix("base_model.model.")])]
    assert len(moved) == len(gates)
    save_adapter(model, tmp_path / "adapter")
    stored = {k: v for k, v in load_file(tmp_path / "adapter" / "adapter_model.safetensors").items()
              if k.endswith(("A_log", "dt_bias"))}
    assert len(stored) == len(gates) and all(v.dtype == torch.float32 for v in stored.values())
