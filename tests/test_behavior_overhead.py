"""The behavior machinery's cost made visible (metrics rows, run_end, the printed line) and dream.async /
monitor.async: deterministic whatever the thread timing, resumable exactly, the same texts as a synchronous
cycle on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.journal import read_jsonl

KINDS = ("dream_cycle", "dream", "audit", "penalize", "repetition", "formatting", "bias")


def async_recipe(tmp_path: Path, model_dir: Path, name: str) -> Path:
    from test_dream import dream_recipe

    recipe = dream_recipe(tmp_path, model_dir, name)  # 12 steps, a cycle every 4, checkpoints every 6
    data = json.loads(recipe.read_text())
    data["dream"]["async"] = True
    data["monitor"] = {"audit_every": 4, "probes": ["Tell me about the sea.", "Say something."],
                       "max_new_tokens": 8, "async": True}
    recipe.write_text(json.dumps(data))
    return recipe


def behavior(run_dir: Path) -> list:
    """What the dream loop and the monitor did, step by step (times left out)."""
    return [(e["step"], e["kind"], e["data"]) for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] in KINDS]


@pytest.fixture(scope="module")
def async_run(tmp_path_factory, tiny_model_dir):
    from test_train import run_toolkit

    tmp = tmp_path_factory.mktemp("async")
    out = run_toolkit("finetune", str(async_recipe(tmp, tiny_model_dir, "whole")))
    return tmp, tmp / "whole", out


def test_overhead_is_in_metrics_run_end_and_the_last_line(async_run):
    _, run_dir, out = async_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "dream_seconds" in r] == [4, 8, 12]
    assert [r["step"] for r in rows if "audit_seconds" in r] == [4, 8, 12]
    assert all("eval_seconds" in r for r in rows if "val_loss" in r)
    joined = [r for r in rows if "dream_background_seconds" in r]  # the cycles of steps 4 and 8 joined at 8, 12
    assert [r["step"] for r in joined] == [8, 12] and all(r["dream_background_seconds"] > 0 for r in joined)
    end = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "run_end"][0]["data"]["overhead"]
    assert {"dream", "audit", "eval"} <= set(end["parts"]) and end["wall_seconds"] > end["total"]["seconds"] > 0
    assert 0 < end["parts"]["dream"]["share"] < 1 and end["background_seconds"]["dream"] > 0
    assert out.stdout.strip().splitlines()[-1].startswith("overhead: ")


def test_async_cycles_join_at_fixed_steps_and_two_runs_agree(async_run, tiny_model_dir):
    from test_train import draws, losses, run_toolkit

    tmp, run_dir, _ = async_run
    cycles = [(s, d["weights_step"]) for s, kind, d in behavior(run_dir) if kind == "dream_cycle"]
    assert cycles == [(8, 4), (12, 8), (12, 12)]  # applied a due step later; the last one at the run's end
    again = async_recipe(tmp, tiny_model_dir, "again")
    run_toolkit("finetune", str(again))
    assert losses(tmp / "again") == losses(run_dir) and draws(tmp / "again") == draws(run_dir)
    assert behavior(tmp / "again") == behavior(run_dir)


def test_async_resumes_exactly_with_a_cycle_in_flight(async_run, tiny_model_dir):
    """Stopped at 6 (the cycle of step 4 in flight: the checkpoint waits and keeps its result) and at 8 (the
    cycle of step 8 just started: saved without its result and redone on resume from the step-8 weights)."""
    from test_train import draws, losses, run_toolkit

    tmp, run_dir, _ = async_run
    split = async_recipe(tmp, tiny_model_dir, "split")
    run_toolkit("finetune", str(split), "--stop-at", "6")
    state = json.loads((tmp / "split" / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["components"]["dream"]["pending"]["result"] is not None
    run_toolkit("finetune", str(split), "--resume", "--stop-at", "8")
    state = json.loads((tmp / "split" / "checkpoints" / "step-8" / "state.json").read_text())
    assert state["components"]["dream"]["pending"]["job"]["step"] == 8
    run_toolkit("finetune", str(split), "--resume")
    assert losses(tmp / "split") == losses(run_dir) and draws(tmp / "split") == draws(run_dir)
    assert behavior(tmp / "split") == behavior(run_dir)


def test_a_background_cycle_writes_what_a_synchronous_one_would(tmp_path, tiny_model_and_tokenizer):
    """Same weights, same seeds: the copy in the worker thread samples the same texts (private generators)."""
    from test_dream import dream_cfg, make_loop

    from toolkit.dream.background import Background, Pending

    model, tokenizer = tiny_model_and_tokenizer
    cfg = dream_cfg(tmp_path, response_temperature=0.9)
    inline = make_loop(tmp_path / "inline", tokenizer, cfg)
    expected = inline.cycle(model, tokenizer, step=5, progress=0.1)
    beside = make_loop(tmp_path / "beside", tokenizer, cfg)
    background = Background()
    job = beside.plan(5, 0.1)
    frozen, own_tokenizer = background.snapshot(model, tokenizer, 5)
    pending = Pending(job, 10, background.submit(beside.dream, job, frozen, own_tokenizer))
    assert beside.apply(pending.job, pending.result()) == expected
    background.close()


def test_the_frozen_copy_shares_the_base_and_copies_the_adapter(tiny_model_and_tokenizer):
    import copy

    import torch

    from toolkit.dream.background import frozen_copy
    from toolkit.lora import attach_lora
    from toolkit.recipe import LoraConfig

    tuned = attach_lora(copy.deepcopy(tiny_model_and_tokenizer[0]), LoraConfig(r=4, alpha=8, targets="hybrid-all"))
    frozen = frozen_copy(tuned)
    base = {id(p) for p in tuned.parameters() if not p.requires_grad}
    adapter = [p for p in tuned.parameters() if p.requires_grad]
    assert base and adapter and {id(p) for p in frozen.parameters()} & {id(p) for p in tuned.parameters()} == base
    with torch.no_grad():
        adapter[0].add_(1.0)  # training moves the live adapter; the snapshot keeps the weights it was taken with
    named = dict(frozen.named_parameters())
    name = next(n for n, p in tuned.named_parameters() if p is adapter[0])
    assert not torch.equal(named[name], adapter[0]) and not frozen.training


def test_sampling_does_not_depend_on_the_batch_and_leaves_the_global_rng_alone(tiny_model_and_tokenizer):
    import torch

    from toolkit.dream.generate import chat_prompt, generate, sample

    model, tokenizer = tiny_model_and_tokenizer
    prompts = [chat_prompt(tokenizer, [{"role": "user", "content": text}])
               for text in ("Hi", "Use tabs in file 3, please, please.", "Tell me about the sea.")]
    kwargs = dict(temperatures=[0.0, 1.0, 1.0], seeds=[1, 2, 3], max_new_tokens=8)
    state = torch.random.get_rng_state()
    together = sample(model, tokenizer, prompts, batch_size=3, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)
    alone = sample(model, tokenizer, prompts, batch_size=1, **kwargs)
    reversed_ = sample(model, tokenizer, prompts[::-1], temperatures=[1.0, 1.0, 0.0], seeds=[3, 2, 1],
                       max_new_tokens=8, batch_size=2)
    assert together == alone == reversed_[::-1]
    greedy = generate(model, tokenizer, prompts[:1], temperature=0.0, max_new_tokens=8, batch_size=1, seed=0)
    assert together[0] == greedy[0]  # temperature 0 is greedy
    other = sample(model, tokenizer, prompts, batch_size=3, **{**kwargs, "seeds": [1, 5, 6]})
    assert other[0] == together[0] and other[1:] != together[1:]  # a sampled row follows its own seed
