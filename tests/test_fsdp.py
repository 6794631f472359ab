"""FSDP2 through accelerate on CPU (gloo, 2 processes), as users launch it:
`accelerate launch --config_file recipes/accelerate/fsdp2.yaml -m toolkit finetune RECIPE`.

Sharded training matches 1 process with the same global batch; a run killed after its sharded checkpoint
resumes to the uninterrupted run's losses; the adapter exported from the shards loads in plain peft with
the training weights' logits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import REPO, losses, toolkit_cmd, write_recipe

from toolkit.journal import read_jsonl

STEPS = 6  # checkpoints at 3 and 6
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp2.yaml"
NO_AUDITS = {"monitor": {"audit_every": 0}}  # audits generate on one process: refused under FSDP


def recipe(work: Path, model_dir: Path, name: str, batch_size: int, grad_accum: int, **sections) -> Path:
    # dropout 0: each process draws its own dropout masks, so only a deterministic forward can match
    path = write_recipe(work, model_dir, name, dropout=0.0, max_steps=STEPS, batch_size=batch_size,
                        grad_accum=grad_accum, checkpoint_every=STEPS // 2, eval_every=STEPS)
    loaded = json.loads(path.read_text())
    for key, value in {**NO_AUDITS, **sections}.items():
        loaded[key] = {**loaded.get(key, {}), **value}
    path.write_text(json.dumps(loaded))
    return path


def fsdp_launch(*args, options: tuple[str, ...] = ()) -> list[str]:
    """`options`: accelerate launch flags that override the config's (e.g. --fsdp_activation_checkpointing)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
            "--num_processes", "2", "--main_process_port", "29531", *options, "-m", "toolkit", *map(str, args)]


def run_all(*commands: list[str]) -> None:
    """Run the commands side by side (the file's time is mostly process start-up) and require success."""
    procs = [subprocess.Popen(c, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    errors = [p.communicate()[1] for p in procs]
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-4000:]


def run_fsdp(*args) -> None:
    run_all(fsdp_launch(*args))


def assert_close(a: dict[int, float], b: dict[int, float], tol: float) -> None:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step, loss in a.items():
        assert abs(loss - b[step]) <= tol, (step, loss, b[step])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fsdp")


@pytest.fixture(scope="module")
def lora_runs(work, tiny_model_dir):
    """The same global batch of 4: 1 process x 2 micro-batches of 2, and FSDP2 with 2 processes x 2."""
    run_all(toolkit_cmd("finetune", str(recipe(work, tiny_model_dir, "single", 2, 2))),
            fsdp_launch("finetune", recipe(work, tiny_model_dir, "sharded", 2, 1)))
    return work / "single", work / "sharded"


def test_fsdp_lora_matches_one_process(lora_runs):
    single, sharded = lora_runs
    start = next(e for e in read_jsonl(sharded / "journal.jsonl") if e["kind"] == "run_start")
    assert start["data"]["processes"] == 2 and start["data"]["engine"] == "fsdp2", start["data"]
    assert_close(losses(single), losses(sharded), 1e-4)
    step = sharded / "checkpoints" / f"step-{STEPS}"
    state = json.loads((step / "state.json").read_text())
    assert state["engine"] == "fsdp2" and not (step / "trainable.safetensors").exists()
    listed = json.loads((step / "manifest.json").read_text())["files"]
    assert "sharded/.metadata" in listed and sum(name.endswith(".distcp") for name in listed) == 2


def test_sharded_checkpoint_resumes_exactly_after_sigkill(work, tiny_model_dir, lora_runs):
    _, sharded = lora_runs
    killed = recipe(work, tiny_model_dir, "killed", 2, 1)
    run_dir = work / "killed"
    middle = run_dir / "checkpoints" / f"step-{STEPS // 2}"
    proc = subprocess.Popen(fsdp_launch("finetune", killed), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not middle.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, at once
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "checkpoints" / f"step-{STEPS}").exists()

    run_fsdp("finetune", killed, "--resume")
    assert losses(run_dir) == losses(sharded)
    assert any(e["kind"] == "resume" for e in read_jsonl(run_dir / "journal.jsonl"))


def test_exported_adapter_has_the_sharded_weights_logits(lora_runs, tiny_model_dir, tmp_path):
    """RUN/adapter (gathered from the shards on rank 0) in plain peft against the shards themselves."""
    from peft import PeftModel
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    from toolkit import lora as lora_lib
    from toolkit.recipe import load_recipe

    _, sharded = lora_runs
    dcp_to_torch_save(sharded / "checkpoints" / f"step-{STEPS}" / "sharded", tmp_path / "full.pt")
    trained = torch.load(tmp_path / "full.pt", weights_only=True)["model"]
    lora_cfg = load_recipe(sharded.parent / "sharded.yaml").recipe.lora
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])

    direct = lora_lib.attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_cfg)
    lora_lib.load_trainable_state_dict(direct, trained)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sharded / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        want, got, untrained = (m.eval()(ids).logits for m in (direct, peft, base))
    assert torch.allclose(want, got, atol=1e-5)
    assert not torch.allclose(want, untrained, atol=1e-3)  # the adapter changed something


def test_fsdp_full_finetune_matches_one_process(work, tiny_model_dir):
    """lora.enabled: false: every weight sharded and trained, with FSDP's activation checkpointing on (the
    recomputed decoder blocks must reproduce the forward exactly); the HF model/ gathered from the shards on
    rank 0 matches the 1-process export (tied embeddings saved once, as there)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    full = {"lora": {"enabled": False}}
    run_all(toolkit_cmd("finetune", str(recipe(work, tiny_model_dir, "full-single", 2, 2, **full))),
            fsdp_launch("finetune", recipe(work, tiny_model_dir, "full-sharded", 2, 1, **full),
                        options=("--fsdp_activation_checkpointing", "true")))
    assert_close(losses(work / "full-single"), losses(work / "full-sharded"), 1e-4)
    exports = [work / name / "model" for name in ("full-single", "full-sharded")]
    keys = []
    for export in exports:
        with safe_open(export / "model.safetensors", framework="pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1]
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])
    with torch.no_grad():
        one, two = (AutoModelForCausalLM.from_pretrained(e).eval()(ids).logits for e in exports)
    assert torch.allclose(one, two, atol=1e-4)


SEEDS = REPO / "recipes" / "data" / "dream-seeds.jsonl"


DREAM = {"enabled": True, "seeds": str(SEEDS), "evaluator": {"kind": "rules", "must_include": ["tabs"]}}


@pytest.mark.parametrize("sections, key", [({"dream": DREAM}, "dream.enabled"),
                                           ({"monitor": {"audit_every": 2}}, "monitor.audit_every"),
                                           ({"lora": {"export_merged": True}}, "lora.export_merged")])
def test_one_process_features_are_refused_on_a_sharded_model(work, tiny_model_dir, sections, key):
    """Dream cycles, audits and merging run on the main process alone: every other rank would wait in the
    sharded forward forever, so the recipe is refused at start, naming the key."""
    from toolkit.errors import ToolkitError
    from toolkit.recipe import load_recipe
    from toolkit.train.engine import check_recipe

    loaded = load_recipe(recipe(work, tiny_model_dir, "refused", 2, 1, **sections))
    check_recipe(loaded.recipe, "replicated", finetune=True)  # DDP and 1 process run them
    with pytest.raises(ToolkitError, match=key.replace(".", r"\.")):
        check_recipe(loaded.recipe, "fsdp2", finetune=True)


def test_a_sharded_checkpoint_resumes_only_under_its_engine(tmp_path):
    from toolkit.errors import ToolkitError
    from toolkit.train.checkpoint import check_engine

    (tmp_path / "state.json").write_text(json.dumps({"step": 3, "engine": "fsdp2"}))
    check_engine(tmp_path, "fsdp2")
    with pytest.raises(ToolkitError, match="recipes/accelerate/fsdp2.yaml"):
        check_engine(tmp_path, "replicated")
    (tmp_path / "state.json").write_text(json.dumps({"step": 3}))  # a DDP / 1-process checkpoint
    with pytest.raises(ToolkitError, match="DDP or one process"):
        check_engine(tmp_path, "fsdp2")
