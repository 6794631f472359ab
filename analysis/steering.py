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
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import torch

from analysis.directions import METHODS, compute_vector
from analysis.hooks import capturing, decoder_layers, steering  # noqa: F401 (steering's public hooks)
from analysis.stats import CONFIDENCE, cosine, mean_ci, monotonicity  # noqa: F401 (the sweep's statistics)
from toolkit.errors import ToolkitError
from toolkit.util.jsonl import jsonl_rows

POSITIONS = ("last", "mean")
VECTORS_FILE = "vectors.safetensors"
META_FILE = "meta.json"


# ---------------------------------------------------------------- inputs


def load_steer_model(path_or_run: str | Path, base: str | None = None, device: str | None = None):
    """(model, tokenizer, model dir) for a model dir, run dir or adapter dir of any causal LM; an adapter is
    loaded on its base and merged in memory (no copy on disk). A multimodal checkpoint gives its text model."""
    from analysis.capture import load_capture_model
    from toolkit.weights import resolve_weights

    model_dir, _ = resolve_weights(path_or_run, base=base)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_capture_model(path_or_run, base=base, device=device)
    return model, tokenizer, model_dir


def read_prompts(path: str | Path, fields: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Rows of a prompts JSONL, each with the non-empty string `fields`; a bad row names its file:line."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", where=str(path))
    rows = []
    for where, row, problem in jsonl_rows(path):
        missing = [f for f in fields if not isinstance((row or {}).get(f), str) or not row[f]]
        if problem or missing:
            raise ToolkitError(problem or f"each row needs a non-empty string '{missing[0]}'", where=where)
        rows.append(row)
    if not rows:
        raise ToolkitError("no rows", where=str(path))
    return rows


def read_pairs(path: str | Path) -> list[dict]:
    """Rows {"prompt", "positive", "negative"}; every field a non-empty string."""
    return read_prompts(path, ("prompt", "positive", "negative"))


def parse_layers(text: str | list[int], n_layers: int, option: str = "--layers") -> list[int]:
    """'2,3' (or '1-3', negative = from the end) -> sorted unique ints in [0, n_layers)."""
    if isinstance(text, (list, tuple)):
        items = [str(x) for x in text]
    else:
        items = [p.strip() for p in str(text).split(",") if p.strip()]
    layers: list[int] = []
    try:
        for item in items:
            if re.fullmatch(r"\d+-\d+", item):
                lo, hi = item.split("-")
                layers += list(range(int(lo), int(hi) + 1))
            else:
                value = int(item)
                layers.append(value + n_layers if value < 0 else value)
    except ValueError:
        raise ToolkitError(f"'{text}' is not a list of layer numbers", where=option, hint="e.g. --layers 2,3") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if not layers or bad:
        raise ToolkitError(f"layer {bad[0] if bad else text} out of range", where=option,
                           hint=f"the model has {n_layers} decoder layers: 0..{n_layers - 1}")
    return sorted(set(layers))


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ToolkitError(f"'{text}' is not a comma-separated list of numbers", where=option) from None
    if not values:
        raise ToolkitError("empty list", where=option)
    return values


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The user turn through the chat template with the generation prompt (the plain format without one),
    encoded as at inference (toolkit.chat)."""
    from toolkit.chat import chat_prompt, encode_prompt

    return encode_prompt(tokenizer, chat_prompt(tokenizer, [{"role": "user", "content": prompt}]))


def encode(tokenizer, prompt: str, completion: str | None) -> tuple[list[int], int]:
    """(token ids, index of the first completion token); without a completion the start is len(ids)."""
    ids = prompt_ids(tokenizer, prompt)
    start = len(ids)
    if completion:
        ids = ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids, start


# ---------------------------------------------------------------- hooks and forward passes


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def _right_pad(seqs: list[list[int]], pad: int, device):
    """Right padding: with a causal model (and GDN layers zeroing pads) real positions are unaffected."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return ids, mask


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def collect_activations(model, tokenizer, prompts: list[str], completions: list[str], layers: list[int],
                        position: str = "last", batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Per layer an (n, hidden) float32 CPU tensor read at `position` of each completion."""
    if position not in POSITIONS:
        raise ToolkitError(f"unknown position '{position}'", where="--position", hint=f"one of {', '.join(POSITIONS)}")
    encoded = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    pad = _pad_id(tokenizer)
    for lo in range(0, len(encoded), batch_size):
        batch = encoded[lo:lo + batch_size]
        ids, mask = _right_pad([e[0] for e in batch], pad, _device(model))
        with capturing(model, layers) as store:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        for layer in layers:
            hidden = store[layer].float()
            for row, (seq, start) in enumerate(batch):
                if position == "last":
                    out[layer].append(hidden[row, len(seq) - 1].cpu())
                else:
                    out[layer].append(hidden[row, start:len(seq)].mean(0).cpu())
    return {layer: torch.stack(vs) for layer, vs in out.items()}


def pair_activations(model, tokenizer, rows: list[dict], layers: list[int], position: str = "last",
                     batch_size: int = 8) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(positive, negative) activations per layer, each (n_pairs, hidden)."""
    prompts = [r["prompt"] for r in rows]
    pos = collect_activations(model, tokenizer, prompts, [r["positive"] for r in rows], layers, position, batch_size)
    neg = collect_activations(model, tokenizer, prompts, [r["negative"] for r in rows], layers, position, batch_size)
    return pos, neg


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


# ---------------------------------------------------------------- measuring


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 8) -> list[float]:
    """Mean log p(completion token | everything before) over each completion's tokens."""
    encoded = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    pad = _pad_id(tokenizer)
    result = []
    for lo in range(0, len(encoded), batch_size):
        batch = encoded[lo:lo + batch_size]
        ids, mask = _right_pad([e[0] for e in batch], pad, _device(model))
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        for row, (seq, start) in enumerate(batch):
            targets = ids[row, start:len(seq)]
            scores = logp[row, start - 1:len(seq) - 1].gather(-1, targets[:, None])[:, 0]
            result.append(float(scores.mean()))
    return result


def margins(model, tokenizer, rows: list[dict], batch_size: int = 8) -> list[float]:
    """Per row: mean log p(positive | prompt) - mean log p(negative | prompt)."""
    prompts = [r["prompt"] for r in rows]
    pos = completion_logprobs(model, tokenizer, prompts, [r["positive"] for r in rows], batch_size)
    neg = completion_logprobs(model, tokenizer, prompts, [r["negative"] for r in rows], batch_size)
    return [p - n for p, n in zip(pos, neg)]


@torch.no_grad()
def next_token_logprobs(model, tokenizer, prompts: list[str], batch_size: int = 8) -> list[torch.Tensor]:
    """Per prompt a (T, vocab) float32 CPU tensor of next-token log-probs at every real position."""
    encoded = [encode(tokenizer, p, None)[0] for p in prompts]
    pad = _pad_id(tokenizer)
    out = []
    for lo in range(0, len(encoded), batch_size):
        batch = encoded[lo:lo + batch_size]
        ids, mask = _right_pad(batch, pad, _device(model))
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        out += [logp[row, :len(seq)].cpu() for row, seq in enumerate(batch)]
    return out


def mean_kl(reference: list[torch.Tensor], steered: list[torch.Tensor]) -> float:
    """KL(reference || steered) per position, averaged over positions and then prompts."""
    values = [float((ref.exp() * (ref - st)).sum(-1).mean()) for ref, st in zip(reference, steered)]
    return float(np.mean(values)) if values else 0.0


def margin_row(margins_: list[float], baseline: list[float], seed: int = 0) -> dict:
    """Mean margin with its bootstrap CI, sample std (ddof=1), mean shift from unsteered with its paired CI."""
    if not margins_:
        return {key: None for key in ("mean_margin", "mean_margin_ci_low", "mean_margin_ci_high", "std_margin",
                                      "mean_margin_shift", "mean_margin_shift_ci_low", "mean_margin_shift_ci_high")}
    m, shift = np.asarray(margins_, float), np.asarray(margins_, float) - np.asarray(baseline, float)
    ci, shift_ci = mean_ci(m, seed) or (None, None), mean_ci(shift, seed) or (None, None)
    return {"mean_margin": float(m.mean()), "mean_margin_ci_low": ci[0], "mean_margin_ci_high": ci[1],
            "std_margin": float(m.std(ddof=1)) if len(m) > 1 else None,
            "mean_margin_shift": float(shift.mean()), "mean_margin_shift_ci_low": shift_ci[0],
            "mean_margin_shift_ci_high": shift_ci[1]}


def layer_summary(coefficients: list[float], by_coef: list[list[float]], seed: int = 0) -> dict:
    """Per layer: the margins, the monotonicity of the mean margin across coefficients, and per prompt the share
    whose margin changes direction somewhere and the share going the wrong way (Spearman rho ≤ 0)."""
    n_prompts = len(by_coef[0]) if by_coef else 0
    per_prompt = [[ms[i] for ms in by_coef] for i in range(n_prompts)]
    mono = [monotonicity(coefficients, ys, p_value=False) for ys in per_prompt]
    return {
        "coefficients": list(coefficients),
        "margins": by_coef,
        "monotonicity": monotonicity(coefficients, [float(np.mean(ms)) for ms in by_coef], seed) if n_prompts else None,
        "prompts_monotonic_share": float(np.mean([m["monotonic"] for m in mono])) if mono else None,
        "wrong_direction_share": float(np.mean([(m["spearman_rho"] or 0.0) <= 0 for m in mono])) if mono else None,
    }


def describe_layer(layer: str, info: dict) -> str | None:
    """One line for the CLI: the mean margin's monotonicity across coefficients."""
    mono = info.get("monotonicity")
    if mono is None:
        return None
    shape = (f"monotonic, {mono['direction']}" if mono["monotonic"]
             else f"NOT monotonic ({mono['sign_changes']} sign changes)")
    rho = "n/a" if mono["spearman_rho"] is None else f"{mono['spearman_rho']:.2f} (p {mono['spearman_p']:.3g})"
    return (f"layer {layer}: mean margin {shape}, spearman rho {rho}; prompts going the wrong way "
            f"{info['wrong_direction_share']:.0%}")


def sweep(model, tokenizer, vectors: dict[int, torch.Tensor], layers: list[int], coefficients: list[float],
          rows: list[dict], neutral: list[str], evaluator=None, max_new_tokens: int = 32, batch_size: int = 8,
          seed: int = 0) -> dict:
    """For each layer and coefficient: margins (mean, bootstrap CI over prompts, sample std), off-target KL on
    neutral prompts, evaluator pass rate; per layer the monotonicity of the response."""
    from toolkit.dream.generate import chat_prompt, generate

    behavior = [r for r in rows if r.get("positive") and r.get("negative")]
    reference = next_token_logprobs(model, tokenizer, neutral, batch_size) if neutral else []
    baseline = margins(model, tokenizer, behavior, batch_size) if behavior else []
    gen_prompts = [chat_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in behavior]
    table, per_layer = [], {}
    for layer in layers:
        if layer not in vectors:
            raise ToolkitError(f"the vector file has no layer {layer}", where="--layers",
                               hint=f"it has {sorted(vectors)}")
        by_coef = []
        for coef in coefficients:
            with steering(model, {layer: coef * vectors[layer]}):
                m = margins(model, tokenizer, behavior, batch_size) if behavior else []
                kl = mean_kl(reference, next_token_logprobs(model, tokenizer, neutral, batch_size)) if neutral else None
                pass_rate = None
                if evaluator is not None and behavior:
                    texts = generate(model, tokenizer, gen_prompts, temperature=0.0, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, seed=seed)
                    verdicts = evaluator.evaluate([r["prompt"] for r in behavior], texts)
                    pass_rate = float(np.mean([v.passed for v in verdicts]))
            table.append({"layer": layer, "coefficient": coef, **margin_row(m, baseline, seed), "kl": kl,
                          "pass_rate": pass_rate})
            by_coef.append(m)
        per_layer[str(layer)] = layer_summary(coefficients, by_coef, seed)
    return {"unsteered_margins": baseline, "confidence": CONFIDENCE, "rows": table, "layers": per_layer}


def write_sweep(out: str | Path, result: dict) -> dict:
    """DIR/sweep.json, DIR/sweep.csv, DIR/sweep.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    fields = ["layer", "coefficient", "mean_margin", "mean_margin_ci_low", "mean_margin_ci_high", "std_margin",
              "mean_margin_shift", "mean_margin_shift_ci_low", "mean_margin_shift_ci_high", "kl", "pass_rate"]
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in result["rows"]:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    panels = [("mean_margin", "log-prob margin (pos - neg)"), ("kl", "off-target KL"), ("pass_rate", "evaluator pass rate")]
    panels = [p for p in panels if any(r.get(p[0]) is not None for r in result["rows"])] or panels[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for layer in result["layers"]:
            rows = [r for r in result["rows"] if str(r["layer"]) == layer and r.get(key) is not None]
            xs, ys = [r["coefficient"] for r in rows], [r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=f"layer {layer}")
            if key == "mean_margin" and all(r["mean_margin_ci_low"] is not None for r in rows):
                ax.fill_between(xs, [r["mean_margin_ci_low"] for r in rows], [r["mean_margin_ci_high"] for r in rows],
                                alpha=0.2)  # the bootstrap CI over prompts
        ax.set_xlabel("coefficient")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)
    return {"json": str(out / "sweep.json"), "csv": str(out / "sweep.csv"), "png": str(out / "sweep.png")}


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


