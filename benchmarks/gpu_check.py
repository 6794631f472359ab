"""LoRA r64 and r256 on a randomly initialized Qwen3.5-0.8B-shaped model through the toolkit's own training loop
(`toolkit.train.loop.train`, what `toolkit finetune` runs): tokens/s, MFU, peak GPU memory next to `toolkit
estimate`'s figure, and proof that the Gated DeltaNet layers ran the fast kernels. Prints a markdown table.

    bash benchmarks/gpu_check.sh                       # installs the kernels if missing, then runs this
    .venv/bin/python benchmarks/gpu_check.py [--seq 2048] [--batch 4] [--steps 12] [--out runs/gpu-check]
    .venv/bin/python benchmarks/gpu_check.py --dry-run --model-dir DIR   # CPU smoke test on a tiny model

The model directory is recipes/models/Qwen3.5-0.8B (config only, the hub's layout): its weights are initialized
at random in bf16 and saved next to a small BPE tokenizer (4,096 tokens; the model keeps its 248,320-row
vocabulary, so the logits cost what they cost on the real model). Every example is longer than --seq and is
cut to it (batching: pad, too_long: truncate_left), so every step trains batch x seq tokens.

Kernels: transformers resolves the GDN functions once, at import (`use_kernel_func_from_hub_with_fallback`):
`chunk_gated_delta_rule` from flash-linear-attention (`fla`) and `causal_conv1d_fn` from `causal_conv1d`, else
its reference torch code. This script asserts the resolved implementations come from those packages and counts
their calls during training (the GDN forward looks both names up in its module at call time).

MFU = achieved FLOP/s / the GPU's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s, H100 PCIe: 756, A100: 312).
Two FLOP counts per token: `6N + attn`, the usual model FLOPs (N = all parameters, attention 6·L_attn·nh·hd·T for
causal full-attention layers; GDN layers' recurrence is left out), and `LoRA` = 4N + 2·N_trainable + attn: a LoRA
step computes no weight gradients for the frozen base, so 6N overstates the work done.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}  # dense, no sparsity
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "cat", "sleeps", "and", "user",
         "asks", "for", "item", "so", "assistant", "answers", "with", "care", "does", "what", "was", "asked"]
FAST = {"chunk_gated_delta_rule": "fla", "causal_conv1d_fn": "causal_conv1d"}
MODULE_FUNCS = {"chunk_gated_delta_rule": "torch_chunk_gated_delta_rule", "causal_conv1d_fn": "causal_conv1d_fn"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "recipes/models/Qwen3.5-0.8B",
                        help="a config-only (or full) model directory: weights are initialized at random")
    parser.add_argument("--ranks", default="64,256")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="training steps per rank; the first 2 are warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/gpu-check")
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke test: fp32, no kernel assertion")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- model, data, recipe


def build_model_dir(config_dir: Path, out: Path, dtype: torch.dtype) -> Path:
    """Random-init the config's causal LM (text model of a multimodal checkpoint) and save it with a tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from toolkit.model import _causal_lm_config, train_tokenizer

    if (out / "config.json").is_file():
        return out
    config = _causal_lm_config(AutoConfig.from_pretrained(config_dir))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    vocab = getattr(config.get_text_config(), "vocab_size", 4096)
    tokenizer = train_tokenizer(_texts(400, 60), min(4096, vocab))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _texts(rows: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(rows)]


def write_data(path: Path, rows: int, words: int) -> Path:
    with path.open("w") as f:
        for reply in _texts(rows, words, seed=1):
            f.write(json.dumps({"messages": [{"role": "user", "content": "Tell me a long story."},
                                             {"role": "assistant", "content": reply}]}) + "\n")
    return path


def write_recipe(out: Path, model_dir: Path, data: Path, rank: int, args) -> Path:
    precision = "fp32" if args.dry_run else "bf16"
    text = f"""# generated by benchmarks/gpu_check.py
run: {{name: gpu-check-r{rank}, output_dir: {out / f'r{rank}'}, seed: 0}}
regime: finetune
model: {{name_or_path: {model_dir}}}
lora: {{r: {rank}, alpha: {2 * rank}, targets: hybrid-all}}
data:
  max_length: {args.seq}
  batching: pad
  too_long: truncate_left
  sources: [{{name: long, path: {data}}}]
train: {{max_steps: {args.steps}, batch_size: {args.batch}, precision: {precision}, lr: 1.0e-4, schedule: constant,
        warmup_steps: 0, checkpoint_every: 100000, eval_every: 100000, divergence_guard: false}}
monitor: {{enabled: false}}
"""
    path = out / f"r{rank}.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- kernels


def resolved_kernels() -> dict[str, str]:
    """Where transformers' Qwen3.5 GDN functions resolved to: the module of each implementation."""
    import inspect

    from transformers.models.qwen3_5 import modeling_qwen3_5 as modeling

    found = {}
    for name, attr in MODULE_FUNCS.items():
        closure = inspect.getclosurevars(getattr(modeling, attr)).nonlocals
        found[name] = getattr(closure.get("implementation"), "__module__", "?")
    return found


@contextlib.contextmanager
def counting_kernel_calls():
    """Count calls of the module-level GDN functions (the GDN forward looks them up at call time); restored after."""
    from transformers.models.qwen3_5 import modeling_qwen3_5 as modeling

    calls = dict.fromkeys(MODULE_FUNCS, 0)
    originals = {attr: getattr(modeling, attr) for attr in MODULE_FUNCS.values()}
    for name, attr in MODULE_FUNCS.items():
        def counted(*a, _original=originals[attr], _name=name, **k):
            calls[_name] += 1
            return _original(*a, **k)

        setattr(modeling, attr, counted)
    try:
        yield calls
    finally:
        for attr, original in originals.items():
            setattr(modeling, attr, original)


def check_fast_path(kernels: dict[str, str]) -> None:
    slow = {name: module for name, module in kernels.items() if not module.startswith(FAST[name])}
    if slow:
        raise SystemExit(f"GDN kernels not in use: {slow} (expected fla / causal_conv1d); "
                         "install them: TORCH_SPEC=torch bash scripts/setup.sh gpu")


# ---------------------------------------------------------------- one run


def flops_per_token(model, seq: int) -> tuple[float, float]:
    """(6N + attention, LoRA-aware) FLOPs per trained token; see the module docstring."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_all = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    attn_layers = sum(t == "full_attention" for t in (getattr(config, "layer_types", None) or []))
    attention = 6 * attn_layers * config.num_attention_heads * config.head_dim * seq
    return 6 * n_all + attention, 4 * n_all + 2 * n_trainable + attention


def run_rank(recipe_path: Path, args) -> dict:
    from toolkit.estimate import estimate
    from toolkit.recipe import load_recipe
    from toolkit.train import loop

    loaded = load_recipe(recipe_path)
    cuda = torch.cuda.is_available()
    if cuda:  # the previous rank's model is gone before this rank's peak starts
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    captured = {}
    original_attach = loop.lora_lib.attach_lora

    def attach_and_keep(model, cfg):  # the loop's own model, to count its parameters for the FLOPs
        captured["model"] = original_attach(model, cfg)
        return captured["model"]

    loop.lora_lib.attach_lora = attach_and_keep
    try:
        code = loop.train(loaded, "finetune")
    finally:
        loop.lora_lib.attach_lora = original_attach
    if code != 0:
        raise SystemExit(f"training exited with {code}")
    rows = [json.loads(line) for line in (loaded.recipe.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "tokens_per_s" in r][2:] or [r for r in rows if "tokens_per_s" in r]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in steps)
    flops_6n, flops_lora = flops_per_token(captured["model"], args.seq)
    result = estimate(loaded, "finetune", seq=args.seq, batch=args.batch, gdn_kernel="torch" if args.dry_run else "fla")
    row = next(r for r in result.rows if r["engine"] == "1 process"
               and r["checkpointing"] == loaded.recipe.train.gradient_checkpointing)
    return {"rank": loaded.recipe.lora.r, "tokens_per_s": tokens_per_s, "flops_6n": flops_6n, "flops_lora": flops_lora,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "estimate_gib": row["total"] / 2**30, "trainable": result.params["trainable"]}


def peak_flops() -> tuple[str, float | None]:
    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def table(results: list[dict], device: str, peak: float | None, kernels: dict, calls: dict, args) -> str:
    kernel_text = ", ".join(f"{k}: {v} ({calls[k]} calls)" for k, v in kernels.items())
    title = (f"GPU check on {device}, seq {args.seq}, micro-batch {args.batch}, {args.steps} steps per rank "
             f"(median tokens/s after 2 warm-up steps); GDN kernels: {kernel_text}")
    header = ("| LoRA r | trainable params | tokens/s | MFU (6N+attn) | MFU (LoRA) | peak memory (GiB) | "
              "`toolkit estimate` (GiB) |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|"]
    for r in results:
        mfu = [f"{100 * r['tokens_per_s'] * f / peak:.1f}%" if peak else "n/a" for f in (r["flops_6n"], r["flops_lora"])]
        measured = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a (CPU)"
        lines.append(f"| {r['rank']} | {r['trainable']:,} | {r['tokens_per_s']:,.0f} | {mfu[0]} | {mfu[1]} | "
                     f"{measured} | {r['estimate_gib']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --dry-run for the CPU smoke test")
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    kernels = resolved_kernels()
    if not args.dry_run:
        check_fast_path(kernels)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    model_dir = build_model_dir(args.model_dir, args.out / "model", dtype)
    data = write_data(args.out / "long.jsonl", rows=max(64, args.batch * 4), words=args.seq + 64)
    with counting_kernel_calls() as calls:
        results = [run_rank(write_recipe(args.out, model_dir, data, int(rank), args), args)
                   for rank in args.ranks.split(",")]
    if not args.dry_run and not all(calls.values()):
        raise SystemExit(f"the GDN kernels were never called: {calls}")
    device, peak = peak_flops()
    text = table(results, device, peak, kernels, calls, args)
    text += f"\n\n{time.perf_counter() - start:.0f} s in all"
    (args.out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
