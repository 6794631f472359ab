"""`toolkit estimate` against the real thing on CPU: exact parameter and state bytes, and the activation memory
of real training steps (`toolkit finetune`'s loop) measured as peak RSS, within 20%."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from families import build_family

from toolkit.estimate import count_parameters, estimate
from toolkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "cat", "sleeps", "user", "asked",
         "item", "assistant", "answered", "care"]

# Runs the real training loop (what `toolkit finetune` runs, 2 steps) for each recipe and set of overrides, and
# prints each run's peak RSS. The peak is reset before each run (Linux: /proc/self/clear_refs), and large
# allocations are mmapped and returned on free, so a run's peak is the fixed part (model, optimizer, libraries)
# plus what its micro-batch adds: activations and logits.
DRIVER = """
import gc, json, sys
from toolkit.recipe import load_recipe
from toolkit.train.loop import train
peaks = {}
for label, (recipe, sets) in json.loads(sys.argv[1]).items():
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    assert train(load_recipe(recipe, sets), "finetune") == 0
    status = open("/proc/self/status").read()
    peaks[label] = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps(peaks))
"""
SMALL, LARGE = (1, 64), (8, 512)  # (micro-batch, sequence)


def _write_data(path: Path, rows: int = 24, words: int = 700) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            reply = " ".join(rng.choice(WORDS) for _ in range(words))
            f.write(json.dumps({"messages": [{"role": "user", "content": "Tell me a story."},
                                             {"role": "assistant", "content": reply}]}) + "\n")
    return path


def _recipe(tmp_path: Path, model_dir: Path, lora: bool, precision: str = "fp32") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = _write_data(tmp_path / "long.jsonl")
    text = f"""
run: {{name: est, output_dir: {tmp_path / 'run'}, seed: 0}}
regime: finetune
model: {{name_or_path: {model_dir}}}
lora: {{enabled: {str(lora).lower()}, r: 8, alpha: 16, targets: hybrid-all}}
data:
  max_length: 64
  batching: pad
  too_long: truncate_left  # keep the reply's end: every row is max_length tokens, all trained
  sources: [{{name: long, path: {data}}}]
train: {{max_steps: 2, batch_size: 1, precision: {precision}, lr: 1.0e-4, checkpoint_every: 1000, eval_every: 1000,
        warmup_steps: 0, schedule: constant}}
monitor: {{enabled: false}}
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_family("llama", tmp_path_factory.mktemp("llama") / "model")


def _real_model(recipe, lora: bool):
    from toolkit.lora import attach_lora
    from toolkit.model import load_model

    model = load_model(recipe.model.name_or_path, recipe.model)
    return attach_lora(model, recipe.lora) if lora else model


@pytest.mark.parametrize("family,lora", [("tiny-hybrid", True), ("llama", False)])
def test_parameters_and_state_bytes_are_exact(family, lora, tmp_path, tiny_model_dir, llama_dir):
    from toolkit.train.loop import _adamw

    model_dir = tiny_model_dir if family == "tiny-hybrid" else llama_dir
    loaded = load_recipe(_recipe(tmp_path, model_dir, lora))
    result = estimate(loaded, "finetune")
    model = _real_model(loaded.recipe, lora)
    real = count_parameters(model)
    assert (result.params["trainable"], result.params["frozen"]) == (real.trainable, real.frozen)
    assert result.params["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # one real AdamW step: the gradient and optimizer bytes the 1-process row counts
    optimizer = _adamw(model, loaded.recipe.train)
    ids = torch.randint(0, 100, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    states = sum(t.nbytes for s in optimizer.state.values() for t in s.values() if t.dim())  # m, v; not `step`
    weights = sum(p.nbytes for p in model.parameters())
    row = next(r for r in result.rows if r["engine"] == "1 process" and not r["checkpointing"])
    assert (row["weights"], row["grads"], row["optimizer"]) == (weights, grads, states)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe", "qwen3_next", "gpt2"])
def test_parameter_counts_exact_on_hub_layouts(family, tmp_path_factory):
    """Multimodal Qwen3.5 (text_config), MoE with LoRA on the router and shared expert, fused Qwen3-Next, GPT-2."""
    model_dir = build_family(family, tmp_path_factory.mktemp(family) / "model")
    targets = "[attention]" if family == "gpt2" else "[attention, gdn, mlp, moe]"
    loaded = load_recipe(ROOT / "recipes/lora-r64.yaml", [f"model.name_or_path={model_dir}", f"lora.targets={targets}"])
    result = estimate(loaded, "finetune", seq=64)
    real = count_parameters(_real_model(loaded.recipe, lora=True))
    assert (result.params["trainable"], result.params["frozen"]) == (real.trainable, real.frozen)
    assert real.trainable > 0 and real.frozen > 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_activation_memory_within_20_percent_of_measured(tmp_path, tiny_model_dir, llama_dir):
    # fp32 as on CPU; bf16 (CPU autocast) checks the dtype bookkeeping of GPU runs: a LoRA run's bf16 base and
    # fp32 adapters, a full fine-tune's fp32 weights and residual stream under autocast
    cases = {f"{name} {precision}": (model_dir, lora, precision)
             for name, model_dir, lora in (("tiny-hybrid LoRA", tiny_model_dir, True), ("llama full", llama_dir, False))
             for precision in ("fp32", "bf16")}
    recipes = {name: _recipe(tmp_path / name.replace(" ", "-"), model_dir, lora, precision)
               for name, (model_dir, lora, precision) in cases.items()}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONPATH": str(ROOT)}
    peaks = {}
    for precision in ("fp32", "bf16"):  # one process each: accelerate keeps one mixed-precision state per process
        runs = {f"{name}/{label}": (str(recipe), [f"train.batch_size={b}", f"data.max_length={t}",
                                                  f"run.output_dir={recipe.parent / label}"])
                for name, recipe in recipes.items() if name.endswith(precision)
                for label, (b, t) in (("small", SMALL), ("large", LARGE))}
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    for name, recipe in recipes.items():
        measured = peaks[f"{name}/large"] - peaks[f"{name}/small"]
        predicted = _growth(recipe, *LARGE) - _growth(recipe, *SMALL)
        print(f"{name}: estimated {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB "
              f"({100 * (predicted - measured) / measured:+.1f}%)")
        assert measured > 50 * 2**20  # activations dominate the difference (not noise)
        assert abs(predicted - measured) / measured < 0.20, (name, predicted, measured)


def _growth(recipe: Path, batch: int, seq: int) -> int:
    """What grows with the micro-batch, estimated: activations and the loss's logits (1 process, no checkpointing)."""
    result = estimate(load_recipe(recipe), "finetune", seq=seq, batch=batch, gdn_kernel="torch")
    row = next(r for r in result.rows if r["engine"] == "1 process" and not r["checkpointing"])
    return row["activations"] + row["logits_loss"]


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_trains_both_ranks_through_the_loop(tmp_path):
    """benchmarks/gpu_check.py end to end on CPU: a hub-layout Qwen3.5 (ForConditionalGeneration + text_config)
    random-initialized, LoRA r8 and r16 through the training loop, the table with the estimate beside it."""
    gpu_check = _gpu_check()
    model_dir = build_family("qwen3_5", tmp_path / "q35")
    text = gpu_check.main(["--dry-run", "--model-dir", str(model_dir), "--ranks", "8,16", "--seq", "48",
                           "--batch", "2", "--steps", "3", "--out", str(tmp_path / "out")])
    rows = [line for line in text.splitlines() if line.startswith(("| 8 ", "| 16 "))]
    assert len(rows) == 2 and all("n/a (CPU)" in row for row in rows)
    assert "(0 calls)" not in text  # the GDN functions ran (here: transformers' torch fallback)
    assert (tmp_path / "out" / "gpu_check.md").read_text().strip() == text.strip()


def test_gpu_check_refuses_the_torch_fallback():
    gpu_check = _gpu_check()
    kernels = gpu_check.resolved_kernels()
    try:
        import causal_conv1d  # noqa: F401
        import fla  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="not in use"):
            gpu_check.check_fast_path(kernels)
    else:
        gpu_check.check_fast_path(kernels)
    gpu_check.check_fast_path({"chunk_gated_delta_rule": "fla.ops.gated_delta_rule.chunk",
                               "causal_conv1d_fn": "causal_conv1d.causal_conv1d_interface"})


def test_cli_estimate_json_on_the_shipped_qwen3_5_config(capsys):
    """`toolkit estimate --json` on recipes/models/Qwen3.5-0.8B (hub layout, no weights): LoRA r64 on every
    projection has r·(in + out) parameters per adapted linear, and a sharded run never needs fewer GPUs."""
    from toolkit.cli import main

    main(["estimate", str(ROOT / "recipes/lora-r64.yaml"), "--set", "model.name_or_path=recipes/models/Qwen3.5-0.8B",
          "--seq", "2048", "--gpu-memory", "24", "--json"])
    result = json.loads(capsys.readouterr().out)
    config = json.loads((ROOT / "recipes/models/Qwen3.5-0.8B/config.json").read_text())["text_config"]
    h, i, v = config["hidden_size"], config["intermediate_size"], config["linear_num_value_heads"]
    kd, vd = config["linear_num_key_heads"] * config["linear_key_head_dim"], v * config["linear_value_head_dim"]
    qd, kvd = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    mlp = [(h, i), (h, i), (i, h)]
    gdn = [(h, 2 * kd + vd), (h, vd), (h, v), (h, v), (vd, h)] + mlp
    attention = [(h, 2 * qd), (h, kvd), (h, kvd), (qd, h)] + mlp
    kinds = config["layer_types"]
    lora = sum(64 * (a + b) for kind in kinds for a, b in (gdn if kind == "linear_attention" else attention))
    assert result["model_class"] == "Qwen3_5ForCausalLM" and result["params"]["trainable"] == lora
    rows = {(r["engine"], r["checkpointing"]): r for r in result["rows"]}
    for ckpt in (False, True):
        one = rows[("1 process", ckpt)]
        assert all(r["gpus"] is None or one["gpus"] is None or r["gpus"] <= one["gpus"]
                   for (engine, c), r in rows.items() if c == ckpt)
    assert rows[("1 process", True)]["activations"] < rows[("1 process", False)]["activations"]
