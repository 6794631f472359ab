"""The toolkit against TRL's SFTTrainer and a bare torch + peft loop: same model, data, template, LoRA, steps.

    .venv/bin/pip install -e '.[bench]'          # trl, py-spy: benchmark-only, never runtime dependencies
    .venv/bin/python benchmarks/vs_trl.py [--rounds 3] [--steps 60] [--quick] [--model DIR]

Every run is a fresh process, and the runs are interleaved (toolkit, trl, trl-grouped, bare-pad,
bare-toolkit-batches, then again), so load from other work on the machine hits every variant alike; the
ratios are medians over rounds of each round's own ratio. Round r runs every variant with seed r (data
draws, shuffle, LoRA init), so the spread of held-out losses across rounds shows what "within noise" means.

What is held equal. The model is the demo's pretrained tiny-hybrid (runs/demo-pretrain/model) when it
exists, else a tiny-hybrid built here (the choice is printed). LoRA r16 / alpha 32 / dropout 0 on the
toolkit's `hybrid-all` modules (resolved once here and passed to TRL and the bare loop by name), batch 8,
lr 1e-3 constant without warmup, AdamW (0.9, 0.95) without weight decay, grad-norm clip 1, fp32, `--steps`
steps. The data: the toolkit trains through its curriculum (one source per step, tiers 1-3 of the directive
data with the system prompt stripped, `weighted` sampler, `data.group_by_length` over 50 batches as TRL's
length-grouped sampler; `--group-batches 0` turns it off); the same draws are replayed here (checked step by
step against the toolkit's metrics.jsonl) and the very same examples, one epoch of them in a shuffled order,
are what TRL and the bare loop train on. So all variants see the same tokens and the same supervised tokens
(checked: TRL's assistant masks equal the toolkit's labels, example by example; counts printed).

Measured. "Non-pad tokens/s": every non-pad token of the training batches (prompt and reply) / the wall time
from the start of the first training step to the end of the last one (start-up, validation, saving are
outside it). "Tokens / CPU-s": the same tokens of steps 2..N / the process's CPU time over those steps; on a
shared machine wall time measures the neighbours as much as the code, CPU time much less so (run with
OMP_NUM_THREADS=1 there). Start-up: process launch to the first step. Wall: the whole process. Peak RSS of the process.
Final train loss: mean of the last 10 steps. Held-out loss: the trained adapter of every run on
recipes/data/directive-heldout.jsonl (supervised tokens only), computed here the same way for all.

Variants. trl: SFTTrainer, assistant_only_loss, padding_free off, activation checkpointing off (TRL turns it
on by default; with it TRL is slower still). trl-grouped: the same with train_sampling_strategy
group_by_length, TRL's fastest correct setting on a CPU. Left out, and why: padding_free (probed once below:
on a Gated DeltaNet hybrid without the causal-conv1d / fla kernels it does not keep examples apart) and Liger
kernels (Triton, GPU only). bare-pad: a plain loop over shuffled, right-padded batches. bare-toolkit-batches:
the same loop fed the toolkit's own batches, so toolkit / bare-toolkit-batches is the cost of the loop itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIERS = [REPO / "recipes/data" / f"directive-tier{t}.jsonl" for t in (1, 2, 3)]
HELDOUT = REPO / "recipes/data/directive-heldout.jsonl"
PRETRAINED = REPO / "runs/demo-pretrain/model"
VARIANTS = ("toolkit", "trl", "trl-grouped", "bare-pad", "bare-toolkit-batches")
MAX_LENGTH, LORA_R, LORA_ALPHA, SEED, IGNORE = 256, 16, 32, 0, -100
LAST = 10  # final train loss: mean of the last this many steps
# `toolkit finetune` through its real CLI, with one measurement added: each metrics row also gets the process's
# CPU time, so CPU-seconds per step can be read like the other variants' (wall time is at the mercy of the load)
TOOLKIT_WITH_CPU_CLOCK = """import sys, time
from toolkit.journal import JsonlWriter
write = JsonlWriter.write
JsonlWriter.write = lambda self, row: write(self, {**row, "cpu_time": time.process_time()} if "loss" in row else row)
from toolkit.cli import main
main(sys.argv[1:])
"""


# ---------------------------------------------------------------- the parent: set up, run, report


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker, Path(args.job), Path(args.result))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vs_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    shared = prepare_shared(args, work)
    warm_bytecode(work)
    rows = {v: [] for v in args.variants}
    probe = None
    for r in range(args.rounds):
        job = prepare_round(shared, args, work, seed=SEED + r)  # each round its own seed: held-out loss spread
        if r == 0 and any(v.startswith("trl") for v in args.variants) and not args.quick:
            probe = run_padding_free_probe(job)
        for variant in args.variants:
            rows[variant].append(run_variant(variant, job, work / f"r{r}-{variant}"))
            print(f"round {r + 1}/{args.rounds} {variant:>21}: {rows[variant][-1]['tokens_per_s']:7.0f} tok/s, "
                  f"{rows[variant][-1]['tokens_per_cpu_s']:7.0f} tok/CPU-s, "
                  f"held-out {rows[variant][-1]['heldout_loss']:.4f}, load {rows[variant][-1]['load']:.1f}",
                  flush=True)
    print(report(job, rows, args, probe))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--group-batches", type=int, default=50,
                   help="the toolkit's data.group_by_length window, in batches (TRL's group_by_length: 50); 0: off")
    p.add_argument("--quick", action="store_true", help="1 round of 10 steps, no padding_free probe")
    p.add_argument("--model", help="model directory (default: runs/demo-pretrain/model, else a built tiny-hybrid)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--workdir", help="where runs and results go (default: a new temporary directory)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 10
    return args


def prepare_shared(args, work: Path) -> dict:
    """What every round shares: the model, its LoRA target names, the held-out rows, the pad id."""
    model_dir, model_note = choose_model(args.model, work)
    heldout, pad = heldout_examples(model_dir)
    return {"model_dir": model_dir, "model_note": model_note, "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "targets": lora_targets(model_dir), "heldout": heldout, "pad_id": pad}


def prepare_round(shared: dict, args, work: Path, seed: int) -> dict:
    """One round's recipe (run.seed = `seed`), the toolkit's draws under it and the same examples for the others,
    written to WORK/job-s{seed}.json for the workers."""
    recipe_path = write_recipe(work / f"recipe-s{seed}.yaml", shared["model_dir"], args, seed)
    draws, messages = replay_toolkit_draws(recipe_path, args.steps, args.batch)
    flat = [i for step in draws for i in step]
    order = list(range(len(flat)))
    random.Random(seed).shuffle(order)  # what a shuffled DataLoader over these examples would give
    examples = [[e["input_ids"], e["labels"]] for e in flat]
    job = {
        **shared, "seed": seed, "recipe": str(recipe_path), "job_path": str(work / f"job-s{seed}.json"),
        "toolkit_steps": [[len(e["input_ids"]) for e in step] for step in draws],
        "toolkit_batches": [[[e["input_ids"], e["labels"]] for e in sorted(step, key=lambda e: len(e["input_ids"]))]
                            for step in draws],
        "pad_batches": [[examples[j] for j in order[i:i + args.batch]] for i in range(0, len(order), args.batch)],
        "messages": [messages[tuple(e["input_ids"])] for e in flat],
        "examples": examples,
    }
    job["supervised"] = sum(supervised(labels) for _, labels in examples)
    Path(job["job_path"]).write_text(json.dumps(job))
    return job


def choose_model(model: str | None, work: Path) -> tuple[str, str]:
    if model:
        return model, f"{model} (--model)"
    if (PRETRAINED / "config.json").is_file():
        return str(PRETRAINED), f"{PRETRAINED.relative_to(REPO)} (the demo's pretrained tiny-hybrid)"
    from toolkit.data.sources import source_texts
    from toolkit.model import build_tiny_hybrid
    from toolkit.recipe import DataConfig, TinyHybridConfig

    texts = source_texts(DataConfig(sources=[{"name": p.stem, "path": str(p)} for p in TIERS]))
    path = build_tiny_hybrid(TinyHybridConfig(), texts, work / "tiny-hybrid", SEED)
    return str(path), f"{path} (builtin tiny-hybrid, random init: runs/demo-pretrain/model not found)"


def write_recipe(path: Path, model_dir: str, args, seed: int) -> Path:
    """The toolkit's side: dream, monitor, head-diff and eval off; everything else as a user gets it."""
    sources = "\n".join(f"    - {{name: tier{t}, path: {p}, tier: {t}, strip_instructions: true}}"
                        for t, p in enumerate(TIERS, 1))
    far = args.steps + 1  # no checkpoint or validation inside the run (the last step still does both)
    path.write_text(f"""run: {{name: vs-trl, output_dir: {path.parent / 'toolkit-run'}, seed: {seed}}}
regime: finetune
model: {{name_or_path: {model_dir}}}
lora: {{r: {LORA_R}, alpha: {LORA_ALPHA}, dropout: 0.0, targets: hybrid-all}}
data:
  max_length: {MAX_LENGTH}
  group_by_length: {args.group_batches * args.batch}
  sources:
{sources}
train: {{max_steps: {args.steps}, batch_size: {args.batch}, lr: {args.lr}, schedule: constant, warmup_steps: 0,
        precision: fp32, checkpoint_every: {far}, eval_every: {far}}}
curriculum: {{sampler: weighted}}
monitor: {{enabled: false}}
dream: {{enabled: false}}
analysis: {{head_diff: false}}
""")
    return path


def replay_toolkit_draws(recipe_path: Path, steps: int, batch: int):
    """The examples `toolkit finetune` draws at each step (its curriculum and sources, same seed), and each
    example's conversation (system prompt stripped, as the toolkit trains on it) keyed by its token ids."""
    from toolkit.curriculum import Curriculum, CurriculumPlan
    from toolkit.data.formatting import record_conversation, supervised_example
    from toolkit.data.sources import load_sources
    from toolkit.model import load_tokenizer
    from toolkit.recipe import load_recipe

    recipe = load_recipe(recipe_path, None).recipe
    tokenizer = load_tokenizer(recipe.model.name_or_path, recipe.model)
    sources = load_sources(recipe.data, tokenizer, recipe.run.seed)
    curriculum = Curriculum(CurriculumPlan.from_recipe(recipe), sources, recipe.run.seed)
    draws = []
    for step in range(steps):
        source = curriculum.pick(step)
        examples = source.next_examples(batch)
        curriculum.observe(source, 1.0, examples, step)  # the weighted sampler does not read the reward
        draws.append([{"input_ids": list(e.input_ids), "labels": list(e.labels), "source": source.name}
                      for e in examples])
    messages = {}
    for path in TIERS:
        for line in path.read_text().splitlines():
            conv = record_conversation(json.loads(line), fmt="auto", text_field="text", strip_instructions=True,
                                       where=str(path))
            ids, _ = supervised_example(tokenizer, conv)
            messages[tuple(ids[:MAX_LENGTH])] = conv
    return draws, messages


def lora_targets(model_dir: str) -> list[str]:
    """The module names the toolkit's `hybrid-all` preset puts LoRA on, for TRL and the bare loop to use."""
    from toolkit.lora import resolve_lora_targets, split_targets
    from toolkit.model import load_model
    from toolkit.recipe import ModelConfig

    model = load_model(model_dir, ModelConfig(name_or_path=model_dir))
    modules, parameters = split_targets(model, resolve_lora_targets(model, "hybrid-all"))
    assert not parameters, parameters
    return modules


def heldout_examples(model_dir: str) -> tuple[list, int]:
    from toolkit.data.formatting import example_from_record
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    tokenizer = load_tokenizer(model_dir, ModelConfig(name_or_path=model_dir))
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    examples = [example_from_record(r, tokenizer, fmt="auto", text_field="text", strip_instructions=True,
                                    max_length=MAX_LENGTH, source="heldout", tier=None, where=f"{HELDOUT}:{i + 1}")
                for i, r in enumerate(rows)]
    return [[e.input_ids, e.labels] for e in examples if e is not None], tokenizer.pad_token_id


def supervised(labels: list[int]) -> int:
    """Target tokens of an example: labels after the first (the model predicts token t from tokens < t)."""
    return sum(1 for label in labels[1:] if label != IGNORE)


def run_variant(variant: str, job: dict, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a reused --workdir: the toolkit refuses a run dir with checkpoints
    out.mkdir(parents=True)
    result_path = out / "result.json"
    if variant == "toolkit":
        cmd = [sys.executable, "-c", TOOLKIT_WITH_CPU_CLOCK, "finetune", job["recipe"], "--set",
               f"run.output_dir={out / 'run'}"]
    else:
        cmd = [sys.executable, __file__, "--worker", variant, "--job", job["job_path"], "--result", str(result_path)]
    env = child_env(out.parent)
    load = os.getloadavg()[0]
    launch = time.time()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    end = time.time()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} failed (exit {os.waitstatus_to_exitcode(status)}); see {out / 'log.txt'}")
    res = toolkit_result(out / "run", job) if variant == "toolkit" else json.loads(result_path.read_text())
    if variant == "trl":
        check_trl_masks(res.pop("dataset"), job)
    if res["supervised"] != job["supervised"]:
        raise SystemExit(f"{variant} trained on {res['supervised']} supervised tokens, expected {job['supervised']}")
    train_s = res["train_end"] - res["train_start"]
    cpu_s = res["step_cpu"][-1] - res["step_cpu"][0]  # steps 2..N: the first step's start has no CPU stamp
    return {"tokens_per_s": res["tokens"] / train_s, "tokens_per_cpu_s": sum(res["step_tokens"][1:]) / cpu_s,
            "train_s": train_s, "startup_s": res["train_start"] - launch, "wall_s": end - launch,
            "rss_mb": usage.ru_maxrss / 1024, "pad_share": 1 - res["tokens"] / res["padded"],
            "final_loss": statistics.fmean(res["losses"][-LAST:]), "supervised": res["supervised"],
            "heldout_loss": heldout_loss(job, res["adapter"]), "load": (load + os.getloadavg()[0]) / 2}


def child_env(work: Path) -> dict:
    """Bytecode cached (in WORK/pycache, not in the repo) as an installed package has it: with
    PYTHONDONTWRITEBYTECODE set, every fresh process would compile the toolkit's modules again."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(work / "pycache")}


def warm_bytecode(work: Path) -> None:
    """Fill the bytecode cache once, untimed, so round 1 starts like the later rounds."""
    modules = "toolkit.cli, toolkit.train.loop, toolkit.data.cache, peft, accelerate, datasets, trl, transformers"
    subprocess.run([sys.executable, "-c", f"import {modules}"], cwd=REPO, env=child_env(work), check=False,
                   capture_output=True)


def toolkit_result(run: Path, job: dict) -> dict:
    """Read the toolkit run's metrics.jsonl; its steps must be the replayed draws (same lengths, same order)."""
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    logged = [r["tokens"] for r in rows]
    replayed = [sum(lengths) for lengths in job["toolkit_steps"]]
    if logged != replayed:
        raise SystemExit(f"the toolkit drew other examples than the replay: tokens per step {logged} != {replayed}")
    first = rows[0]
    padded = sum(r["tokens"] / (1 - r["padding_waste"]) for r in rows)
    return {"train_start": first["time"] - first["tokens"] / first["tokens_per_s"], "train_end": rows[-1]["time"],
            "tokens": sum(logged), "padded": padded, "losses": [r["loss"] for r in rows],
            "step_tokens": logged, "step_cpu": [r["cpu_time"] for r in rows],
            # the replayed draws' labels (the toolkit's own code made them; their lengths matched step by step above)
            "supervised": sum(supervised(labels) for step in job["toolkit_batches"] for _, labels in step),
            "adapter": str(run / "adapter")}


def check_trl_masks(dataset: list, job: dict) -> None:
    """TRL's tokenization and labels (from its assistant masks) must be the toolkit's, example by example."""
    for i, ((ids, labels), (our_ids, our_labels)) in enumerate(zip(dataset, job["examples"], strict=True)):
        if ids != our_ids or labels != our_labels:
            raise SystemExit(f"TRL's example {i} differs from the toolkit's (ids or supervised mask)")


def heldout_loss(job: dict, adapter: str) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(job["heldout"]), job["batch"]):
            batch = collate(job["heldout"][i:i + job["batch"]], job["pad_id"])
            total += float(batch_loss_sum(model, batch))
            count += int((batch["labels"][:, 1:] != IGNORE).sum())
    return total / count


def run_padding_free_probe(job: dict) -> str:
    """TRL's padding_free on this model, one step: does it run, and does it keep examples apart?"""
    out = Path(job["job_path"]).parent / "probe-trl-padding-free"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", "trl-padding-free-probe", "--job", job["job_path"],
           "--result", str(out / "result.json")]
    with open(out / "log.txt", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        return f"worker failed (exit {code}), see {out / 'log.txt'}"
    return json.loads((out / "result.json").read_text())["verdict"]


def report(job: dict, rows: dict, args, probe: str | None) -> str:
    med = {v: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for v, runs in rows.items()}
    lines = [f"model: {job['model_note']}",
             f"{args.rounds} interleaved round(s) x {len(rows)} variants, {args.steps} steps of batch {args.batch}, "
             f"lr {args.lr}, LoRA r{LORA_R} on {len(job['targets'])} modules, fp32, {os.cpu_count()} CPUs, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; round r uses seed {SEED}+r",
             "supervised tokens per round (identical across variants: checked): "
             + ", ".join(f"{r['supervised']:,}" for r in next(iter(rows.values()))),
             f"held-out loss before training: {heldout_loss(job, ''):.4f} "
             f"({len(job['heldout'])} rows of {HELDOUT.name})",
             "", "| variant | non-pad tok/s | tok / CPU-s | pad share | train s | start-up s | wall s | peak RSS MB "
             "| final train loss | held-out loss (min-max) | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, m in med.items():
        lines.append(f"| {v} | {m['tokens_per_s']:,.0f} | {m['tokens_per_cpu_s']:,.0f} | {m['pad_share']:.1%} | "
                     f"{m['train_s']:.1f} | "
                     f"{m['startup_s']:.1f} | {m['wall_s']:.1f} | {m['rss_mb']:,.0f} | {m['final_loss']:.4f} | "
                     f"{m['heldout_loss']:.4f} ({min(r['heldout_loss'] for r in rows[v]):.3f}-"
                     f"{max(r['heldout_loss'] for r in rows[v]):.3f}) | {m['load']:.1f} |")
    if "toolkit" in rows:
        lines += ["", "toolkit / other, medians of the per-round ratios:", "",
                  "| toolkit vs | tok/s | tok / CPU-s | wall time | held-out loss |", "|---|---|---|---|---|"]
        for v in rows:
            if v != "toolkit":
                ratio = {k: statistics.median(a[k] / b[k] for a, b in zip(rows["toolkit"], rows[v]))
                         for k in ("tokens_per_s", "tokens_per_cpu_s", "wall_s", "heldout_loss")}
                lines.append(f"| {v} | {ratio['tokens_per_s']:.2f}x | {ratio['tokens_per_cpu_s']:.2f}x | "
                             f"{ratio['wall_s']:.2f}x | {ratio['heldout_loss']:.3f} |")
    if probe:
        lines += ["", f"TRL padding_free (excluded): {probe}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- shared by parent and workers (torch only)


def collate(examples: list, pad: int) -> dict:
    """Right-padded input_ids / attention_mask / labels (IGNORE on padding)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE)
    for row, (i, lab) in enumerate(examples):
        ids[row, :len(i)], mask[row, :len(i)], labels[row, :len(i)] = torch.tensor(i), 1, torch.tensor(lab)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_loss_sum(model, batch: dict):
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")


# ---------------------------------------------------------------- workers (each a fresh process)


def run_worker(kind: str, job_path: Path, result_path: Path) -> None:
    job = json.loads(job_path.read_text())
    out_dir = result_path.parent
    result = (train_trl(job, out_dir, kind) if kind.startswith("trl") else train_bare(job, out_dir, kind))
    result_path.write_text(json.dumps(result))


def train_bare(job: dict, out_dir: Path, kind: str) -> dict:
    """The loop a user writes by hand: peft on the same modules, AdamW, full-logits loss, clip, step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(job["seed"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules=job["targets"], task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    batches = job["toolkit_batches"] if kind == "bare-toolkit-batches" else job["pad_batches"]
    pad = job["pad_id"]
    model.train()
    losses, tokens, padded, targets_seen, step_tokens, step_cpu = [], 0, 0, 0, [], []
    start = time.time()
    for examples in batches[:job["steps"]]:
        batch = collate(examples, pad)
        targets = int((batch["labels"][:, 1:] != IGNORE).sum())
        loss = batch_loss_sum(model, batch) / targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step_tokens.append(int(batch["attention_mask"].sum()))
        step_cpu.append(time.process_time())
        tokens, padded = tokens + step_tokens[-1], padded + batch["input_ids"].numel()
        targets_seen += targets
    end = time.time()
    model.save_pretrained(out_dir / "adapter")
    return {"train_start": start, "train_end": end, "tokens": tokens, "padded": padded, "losses": losses,
            "supervised": targets_seen, "adapter": str(out_dir / "adapter"), "step_tokens": step_tokens,
            "step_cpu": step_cpu}


def train_trl(job: dict, out_dir: Path, kind: str) -> dict:
    """TRL's SFTTrainer on the same conversations, assistant-only loss, TRL's own tokenization and collator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    probe = kind == "trl-padding-free-probe"
    config = SFTConfig(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=job["batch"],
        max_steps=1 if probe else job["steps"], learning_rate=job["lr"], lr_scheduler_type="constant",
        warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        use_cpu=True, bf16=False, activation_checkpointing=False, assistant_only_loss=True,
        max_length=None if probe else MAX_LENGTH,  # TRL: padding_free without packing does not truncate
        packing=False, padding_free=probe, save_strategy="no", report_to=[], logging_steps=1, seed=job["seed"],
        disable_tqdm=True, train_sampling_strategy="group_by_length" if kind == "trl-grouped" else "random",
    )
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=job["targets"],
                             task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"messages": m} for m in job["messages"]])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    if probe:
        return {"verdict": padding_free_verdict(trainer, job)}
    calls = []  # per collated batch: (non-pad, padded, supervised); accelerate may fetch one batch ahead
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        calls.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel(),
                      int((batch["labels"][:, 1:] != IGNORE).sum())))
        return batch

    trainer.data_collator = counting_collator
    times, step_cpu = {}, []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times["start"] = time.time()

        def on_step_end(self, args, state, control, **kw):
            times["end"] = time.time()
            step_cpu.append(time.process_time())

    trainer.add_callback(Clock())
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    trainer.model.save_pretrained(out_dir / "adapter")
    dataset_rows = [[r["input_ids"], r["labels"]] for r in trainer.train_dataset] if kind == "trl" else None
    used = calls[:job["steps"]]
    return {"train_start": times["start"], "train_end": times["end"], "tokens": sum(c[0] for c in used),
            "padded": sum(c[1] for c in used), "supervised": sum(c[2] for c in used), "losses": losses,
            "step_tokens": [c[0] for c in used], "step_cpu": step_cpu,
            "adapter": str(out_dir / "adapter"), "dataset": dataset_rows}


def padding_free_verdict(trainer, job: dict) -> str:
    """One padding-free batch through TRL's collator and model: an error, or how far each example's loss moves
    from its loss alone (a leak across examples moves it; exact is < 1e-4)."""
    import torch

    rows = [trainer.train_dataset[i] for i in range(job["batch"])]
    batch = trainer.data_collator(rows)
    model = trainer.model.eval()
    try:
        with torch.no_grad():
            packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
    except Exception as exc:  # what a user meets at the first step
        return f"raises at the first forward: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    worst, offset = 0.0, 0
    with torch.no_grad():
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
            worst = max(worst, (packed[offset:offset + n] - alone).abs().max().item())
            offset += n
    return f"runs; logits differ from each example alone by up to {worst:.3g} ({'leaks' if worst > 1e-4 else 'exact'})"


if __name__ == "__main__":
    main()
