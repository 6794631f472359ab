"""Every command on every model family, as the hub ships them (tests/families.py builds each layout tiny):
finetune (with dream and audits), the adapter in plain peft in both classes, the merged export, pretrain,
standalone dream, serve chat, head-diff, rank and steering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from families import FAMILIES, HYBRID, MULTIMODAL, build_family, family_model_class
from test_train import run_toolkit

CHAT = [
    {"messages": [
        {"role": "system", "content": "Follow the user's directive."},
        {"role": "user", "content": f"Use tabs for file {i}."},
        {"role": "assistant", "content": f"Understood: tabs for file {i}."},
        {"role": "user", "content": "And spaces elsewhere?"},
        {"role": "assistant", "content": f"Yes, spaces elsewhere in file {i}."},
    ]}
    for i in range(24)
]
SEEDS = [{"situation": f"The user asks for tabs in file {i}.", "tags": ["format"], "tier": 1,
          "reference": "Understood, tabs."} for i in range(3)]
PAIRS = [{"prompt": f"Format file {i}.", "positive": "Understood, tabs it is.", "negative": "Spaces are better."}
         for i in range(8)]
PROBE = torch.tensor([[5, 9, 14, 20, 33, 41, 57, 60]])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def family_recipe(tmp: Path, family: str, model_dir: Path, name: str, **overrides) -> Path:
    targets = ["hybrid-all", "moe"] if family in {"qwen3_5_moe", "qwen3_next"} else "hybrid-all"
    recipe = {
        "run": {"name": name, "output_dir": str(tmp / name), "seed": 1},
        "model": {"name_or_path": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "targets": targets, "train_gates": family in HYBRID, "export_merged": True},
        "data": {"max_length": 96, "val_fraction": 0.1,
                 "sources": [{"name": "chat", "path": str(write_jsonl(tmp / "chat.jsonl", CHAT)), "tier": 1}]},
        "curriculum": {"caps": {"dream": 0.5}},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 2e-2, "checkpoint_every": 4, "eval_every": 4,
                  "warmup_steps": 0},
        "monitor": {"audit_every": 4, "probes": ["Use tabs."], "max_new_tokens": 6},
        "dream": {"enabled": True, "every": 2, "seeds": str(write_jsonl(tmp / "seeds.jsonl", SEEDS)),
                  "scenarios_per_cycle": 2, "samples_per_scenario": 1, "scenario_max_new_tokens": 6,
                  "response_max_new_tokens": 6, "evaluator": {"kind": "rules", "must_include": ["understood"]},
                  "on_failure": {"strategy": "reference"}, "tier": 1},
        "logging": {"trackers": [], "progress": False},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        recipe[section][field] = value
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def family_run(family, tmp_path_factory):
    """(family, checkpoint dir, finished finetune run dir): one 4-step LoRA run per family."""
    tmp = tmp_path_factory.mktemp(family)
    model_dir = build_family(family, tmp / "checkpoint")
    run_toolkit("finetune", str(family_recipe(tmp, family, model_dir, "run")))
    return family, model_dir, tmp / "run"


def toolkit_in_process(*args: str, capsys=None) -> str:
    """`toolkit ARGS` in this process (no interpreter start-up per command); the printed text."""
    from toolkit.cli import main

    main([str(a) for a in args])
    return capsys.readouterr().out if capsys is not None else ""


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


# ---------------------------------------------------------------- finetune and its outputs


def test_finetune_ran_dream_and_audit(family_run):
    _, _, run_dir = family_run
    kinds = [json.loads(line)["kind"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("dream_cycle") == 2 and "audit" in kinds
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_adapter_changes_logits_identically_in_both_classes(family_run):
    """Plain peft, as users load it: AutoModelForCausalLM and the class config.json names."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    family, model_dir, run_dir = family_run
    base = logits_of(AutoModelForCausalLM.from_pretrained(model_dir))
    results = {}
    for cls in (AutoModelForCausalLM, family_model_class(family)):
        model = PeftModel.from_pretrained(cls.from_pretrained(model_dir), str(run_dir / "adapter")).eval()
        results[cls.__name__] = logits_of(model)
    first, second = results.values()
    torch.testing.assert_close(first, second, atol=1e-5, rtol=0)
    assert (first - base).abs().max() > 1e-3  # the adapter did change the model


def test_adapter_names_modules_as_the_checkpoint_does(family_run):
    """The safetensors keys use the checkpoint class's module names (what vLLM/SGLang load); multimodal
    checkpoints also carry the text model's names, and read_adapter_weights returns each tensor once."""
    from safetensors import safe_open

    from toolkit.lora import read_adapter_weights

    family, model_dir, run_dir = family_run
    with safe_open(run_dir / "adapter" / "adapter_model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    prefix = {"gpt2": "base_model.model.transformer.h."}.get(family, "base_model.model.model.layers.")
    if family in MULTIMODAL:
        checkpoint = {k for k in keys if k.startswith("base_model.model.model.language_model.layers.")}
        assert len(checkpoint) * 2 == len(keys)
        assert len(read_adapter_weights(run_dir / "adapter")) == len(checkpoint)
    assert any(k.startswith(prefix) for k in keys)
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert all(t.split(".")[0] in {"layers", "h"} for t in config["target_modules"])  # never bare leaf names


def test_merged_export_loads_in_the_checkpoint_class(family_run):
    from peft import PeftModel

    family, model_dir, run_dir = family_run
    merged_config = json.loads((run_dir / "merged" / "config.json").read_text())
    assert merged_config["architectures"] == json.loads((model_dir / "config.json").read_text())["architectures"]
    cls = family_model_class(family)
    merged = logits_of(cls.from_pretrained(run_dir / "merged"))
    adapter = logits_of(PeftModel.from_pretrained(cls.from_pretrained(model_dir), str(run_dir / "adapter")).eval())
    torch.testing.assert_close(merged, adapter, atol=1e-4, rtol=0)


def test_gates_are_trained_and_stored_in_fp32(family_run):
    from safetensors.torch import load_file

    family, model_dir, run_dir = family_run
    if family not in HYBRID:
        pytest.skip("no Gated DeltaNet layers")
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    base = load_file(model_dir / "model.safetensors")
    gates = {k: v for k, v in adapter.items() if k.endswith("A_log")}
    assert gates and all(v.dtype == torch.float32 for v in gates.values())
    name = next(iter(gates)).removeprefix("base_model.model.")
    stored = base.get(name, base.get(name.replace("model.layers.", "model.language_model.layers.")))
    assert not torch.equal(gates["base_model.model." + name], stored)


# ---------------------------------------------------------------- the other commands


def test_pretrain_trains_every_weight(family, tmp_path):
    model_dir = build_family(family, tmp_path / "checkpoint")
    recipe = family_recipe(tmp_path, family, model_dir, "full", lora__enabled=False, train__max_steps=2,
                           train__checkpoint_every=2, train__eval_every=2, dream__enabled=False,
                           monitor__audit_every=0, curriculum__caps={})
    run_toolkit("pretrain", str(recipe))
    from transformers import AutoModelForCausalLM

    assert logits_of(AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")).isfinite().all()


def test_dream_standalone_on_the_adapter(family_run, tmp_path, capsys):
    family, model_dir, run_dir = family_run
    recipe = family_recipe(tmp_path, family, model_dir, "dream")
    out = toolkit_in_process("dream", recipe, "--cycles", "1", "--adapter", run_dir / "adapter", capsys=capsys)
    assert "examples.jsonl" in out


def test_serve_chats_with_the_newest_checkpoint(family_run):
    from fastapi.testclient import TestClient

    from toolkit.serve.app import create_app

    _, _, run_dir = family_run
    reply = TestClient(create_app(run_dir)).post("/api/chat", json={"prompt": "Use tabs.", "max_new_tokens": 4,
                                                                    "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["checkpoint_step"] == 4


def test_head_diff_lists_the_family_heads(family_run, tmp_path):
    family, model_dir, run_dir = family_run
    probes = write_jsonl(tmp_path / "probes.jsonl", [{"prompt": "Use tabs for file 3."}, {"prompt": "Hello."}])
    toolkit_in_process("analyze", "head-diff", "--base", model_dir, "--tuned", run_dir, "--prompts", probes,
                       "--out", tmp_path / "hd", "--max-tokens", "32")
    report = json.loads((tmp_path / "hd" / "head_diff.json").read_text())
    kinds = {h["kind"] for h in report["heads"]}
    assert kinds == ({"attention", "gdn"} if family in HYBRID else {"attention"})
    changed = [h for h in report["heads"] if (h.get("weight_rel_change") or 0) > 0]
    assert changed  # LoRA on attention (and GDN) projections moved those heads' weights
    if family in HYBRID:
        assert any(h["kind"] == "gdn" for h in changed)


def test_rank_and_steering(family_run, tmp_path, capsys):
    _, _, run_dir = family_run
    out = toolkit_in_process("analyze", "rank", run_dir, "--out", tmp_path / "rank", capsys=capsys)
    assert "rank" in out.lower()
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    toolkit_in_process("steer", "train", "--model", run_dir, "--pairs", pairs, "--layers", "1,2",
                       "--out", tmp_path / "vec")
    assert (tmp_path / "vec" / "vectors.safetensors").is_file()
    toolkit_in_process("steer", "sweep", "--model", run_dir, "--vector", tmp_path / "vec", "--prompts", pairs,
                       "--layers", "2", "--coefficients", "-2,0,2", "--max-new-tokens", "4", "--out", tmp_path / "sweep")
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    toolkit_in_process("steer", "probe", "--model", run_dir, "--pairs", pairs, "--layers", "1", "--folds", "2",
                       "--out", tmp_path / "probe")
