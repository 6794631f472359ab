"""Steering vectors: read them off contrastive pairs, add them to the residual stream, measure the effect.

    model, tok, path = load_steer_model("runs/my-lora")      # model dir, run dir or adapter dir
    rows = read_pairs("pairs.jsonl")                           # {"prompt", "positive", "negative"}
    vectors = train_vectors(model, tok, rows, layers=[2, 3], method="mean_diff")
    save_vectors("out/vec", vectors, meta)                     # vectors.safetensors + meta.json
    with steering(model, {2: 4.0 * vectors[2]}):               # a hook on decoder block 2's output
        ...                                                    # every forward call, cached decode steps too

Convention (shared/DESIGN.md): layer L is the output of decoder block L, i.e. HF `hidden_states[L + 1]`.
Activations are read by a forward hook on the block, so for the LAST layer they are the block's own output
(pre final norm), where the steering hook adds; transformers 5 puts the final-norm output in
`hidden_states[-1]` instead, so only there the two differ.

Text: the prompt is the user turn through the chat template with the generation prompt (what the model
sees before it answers), the completion is appended as the assistant's text (no end-of-turn token). The
prompt and the completion are tokenized separately and concatenated, so the completion's tokens are exact.

Positions: `last` reads the last completion token, `mean` averages over the completion's tokens.

Methods (all deterministic): mean_diff, pca (repeng's pca_diff) and logreg, estimators in analysis/directions.py.

Sweeps: per coefficient the mean margin with a 95% bootstrap interval over prompts (scipy's BCa) and the sample
std (ddof=1); per layer whether the mean margin moves one way as the coefficient grows (Spearman's rho with its
exact permutation p-value, and the sign changes of successive differences) rather than one fitted slope, which
reads a U-shaped response as flat.

This module keeps the vector files and the `toolkit steer` commands; the inputs (pair and prompt files,
encoding) are in analysis/steering_data.py, the forward passes in analysis/steering_forward.py, the sweep
and its report in analysis/steering_sweep.py, all importable from here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from analysis.directions import METHODS, compute_vector
from analysis.hooks import capturing, decoder_layers, steering  # noqa: F401 (steering's public hooks)
from analysis.stats import CONFIDENCE, cosine, mean_ci, monotonicity  # noqa: F401 (the sweep's statistics)
from analysis.steering_data import (  # noqa: F401 (re-exported: tests and analysis.probes import them from here)
    encode, load_steer_model, parse_floats, parse_layers, prompt_ids, read_pairs, read_prompts)
from analysis.steering_forward import (  # noqa: F401 (re-exported: tests and analysis.probes import them from here)
    POSITIONS, collect_activations, completion_logprobs, margins, next_token_logprobs, pair_activations)
from analysis.steering_sweep import (  # noqa: F401 (re-exported: tests and toolkit.cli_analysis import them from here)
    describe_layer, layer_summary, margin_row, mean_kl, sweep, write_sweep)
from toolkit.errors import ToolkitError

VECTORS_FILE = "vectors.safetensors"
META_FILE = "meta.json"


# ---------------------------------------------------------------- vectors


def train_vectors(model, tokenizer, rows: list[dict], layers: list[int], method: str = "mean_diff",
                  position: str = "last", batch_size: int = 8) -> dict[int, torch.Tensor]:
    pos, neg = pair_activations(model, tokenizer, rows, layers, position, batch_size)
    return {layer: compute_vector(pos[layer], neg[layer], method) for layer in layers}


def save_vectors(out: str | Path, vectors: dict[int, torch.Tensor], meta: dict) -> Path:
    """DIR/vectors.safetensors (keys layers.{L}; metadata: every meta key, values as JSON strings) and
    DIR/meta.json."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"layers.{layer}": vectors[layer].detach().float().cpu().contiguous() for layer in sorted(vectors)}
    save_file(tensors, str(out / VECTORS_FILE), metadata={k: json.dumps(v) for k, v in meta.items()})
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out / VECTORS_FILE


def load_vectors(path: str | Path) -> tuple[dict[int, torch.Tensor], dict]:
    """(layer -> vector, meta) from a directory written by save_vectors (or the .safetensors file)."""
    from safetensors import safe_open

    path = Path(path)
    file = path / VECTORS_FILE if path.is_dir() else path
    if not file.is_file():
        raise ToolkitError(f"no {VECTORS_FILE} here", where=str(path), hint="run `toolkit steer train` first")
    vectors = {}
    with safe_open(str(file), framework="pt") as f:
        raw = f.metadata() or {}
        for key in f.keys():
            if key.startswith("layers."):
                vectors[int(key.split(".", 1)[1])] = f.get_tensor(key)
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return vectors, meta


def train_command(model_path, pairs_path, layers_text, method: str, position: str, out, batch_size: int = 8,
                  base: str | None = None) -> dict:
    """`toolkit steer train`: load, read activations, compute and save. Returns the meta."""
    if method not in METHODS:
        raise ToolkitError(f"unknown method '{method}'", where="--method", hint=f"one of {', '.join(METHODS)}")
    if position not in POSITIONS:
        raise ToolkitError(f"unknown position '{position}'", where="--position", hint=f"one of {', '.join(POSITIONS)}")
    rows = read_pairs(pairs_path)
    model, tokenizer, resolved = load_steer_model(model_path, base=base)
    layers = parse_layers(layers_text, len(decoder_layers(model)))
    vectors = train_vectors(model, tokenizer, rows, layers, method, position, batch_size)
    meta = {"model": str(model_path), "resolved_model": str(resolved), "layers": layers, "method": method,
            "position": position, "pairs": len(rows), "pairs_file": str(pairs_path),
            "norms": {str(layer): float(vectors[layer].norm()) for layer in layers}}
    save_vectors(out, vectors, meta)
    return meta


# ---------------------------------------------------------------- sweeping


def load_evaluator(recipe_path: str | Path, out: Path):
    """The evaluator in a recipe's dream.evaluator section."""
    from toolkit.dream.evaluators import build_evaluator
    from toolkit.recipe import load_recipe

    loaded = load_recipe(recipe_path)
    dream = getattr(loaded.recipe, "dream", None)
    cfg = getattr(dream, "evaluator", None) if dream is not None else None
    if cfg is None:
        raise ToolkitError("the recipe has no dream.evaluator section", where=str(recipe_path))
    try:
        return build_evaluator(cfg, Path(out), loaded.recipe.model)
    except ToolkitError as err:
        raise loaded.place(err) from None


def sweep_command(model_path, vector_dir, layers_text, coefficients_text: str, prompts_path, out,
                  neutral_path=None, evaluator_recipe=None, max_new_tokens: int = 32, batch_size: int = 8,
                  base: str | None = None) -> dict:
    """`toolkit steer sweep`."""
    vectors, meta = load_vectors(vector_dir)
    coefficients = parse_floats(coefficients_text, "--coefficients")
    rows = read_prompts(prompts_path)
    neutral = [r["prompt"] for r in rows if not (r.get("positive") and r.get("negative"))]
    if neutral_path is not None:
        neutral += [r["prompt"] for r in read_prompts(neutral_path)]
    behavior = [r for r in rows if r.get("positive") and r.get("negative")]
    if not behavior and not neutral:
        raise ToolkitError("no rows to score", where=str(prompts_path))
    out = Path(out)
    evaluator = load_evaluator(evaluator_recipe, out) if evaluator_recipe else None
    model, tokenizer, _ = load_steer_model(model_path, base=base)
    n_layers = len(decoder_layers(model))
    layers = parse_layers(layers_text if layers_text else sorted(vectors), n_layers)
    result = sweep(model, tokenizer, vectors, layers, coefficients, behavior, neutral, evaluator,
                   max_new_tokens=max_new_tokens, batch_size=batch_size)
    result["meta"] = {"model": str(model_path), "vector": str(vector_dir), "vector_meta": meta,
                      "coefficients": coefficients, "layers": layers, "behavior_prompts": len(behavior),
                      "neutral_prompts": len(neutral), "evaluator_recipe": str(evaluator_recipe) if evaluator_recipe else None}
    result["paths"] = write_sweep(out, result)
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
