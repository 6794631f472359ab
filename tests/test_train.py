"""The training loop end to end, through the CLI as users run it: outputs, exact resume after SIGKILL,
SIGTERM checkpoints, the divergence guard, and accelerate with 2 processes against 1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toolkit.journal import read_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 20  # the reference run; resume tests kill it after checkpoint STEPS // 2


def chat_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        words = " ".join(["please"] * (i % 5 + 1))
        rows.append({"messages": [
            {"role": "system", "content": "Follow the user's directive."},
            {"role": "user", "content": f"Use tabs for file {i}, {words}."},
            {"role": "assistant", "content": f"Understood: tabs for file {i}. Done."},
        ]})
    return rows


# a bandit and a warmup in every run here, so the resume and multi-process tests cover the curriculum
CURRICULUM = {"warmup_steps": 4, "warmup_sources": ["prose"], "sampler": "ucb1", "window": 8,
              "floors": {"chat": 0.2}}


def write_recipe(tmp: Path, model_dir: Path, name: str, dropout: float = 0.1, curriculum: dict | None = None,
                 **train) -> Path:
    data = tmp / "chat.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(48)))
        (tmp / "prose.jsonl").write_text("".join(
            json.dumps({"text": f"Paragraph {i}: tabs and spaces are both fine when asked for. " * (1 + i % 3)}) + "\n"
            for i in range(32)))
    settings = {"max_steps": STEPS, "batch_size": 4, "grad_accum": 1, "lr": 5e-3, "checkpoint_every": STEPS // 2,
                "eval_every": STEPS // 2, "keep_last": 5, "warmup_steps": 2, **train}
    recipe = {
        "run": {"name": name, "output_dir": str(tmp / name), "seed": 3},
        "model": {"name_or_path": str(model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": dropout, "targets": "hybrid-all"},
        "data": {"max_length": 64, "val_fraction": 0.1, "sources": [
            {"name": "chat", "path": str(data), "strip_instructions": True},
            {"name": "prose", "path": str(tmp / "prose.jsonl")}]},
        "curriculum": curriculum or CURRICULUM,
        "train": settings,
        "logging": {"trackers": ["tensorboard"], "progress": True},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def toolkit_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "toolkit", *args]


def run_toolkit(*args, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(toolkit_cmd(*args), capture_output=True, text=True, cwd=REPO)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def launch_two_processes(recipe: Path) -> None:
    """`accelerate launch --cpu --num_processes 2 -m toolkit finetune RECIPE`, which must succeed."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "toolkit", "finetune", str(recipe)]
    out = subprocess.run(launch, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


def draws(run_dir: Path) -> dict[int, str]:
    return {r["step"]: r["source"] for r in read_jsonl(run_dir / "metrics.jsonl") if "source" in r}


def final_weights(run_dir: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step}" / "trainable.safetensors")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def reference_run(work, tiny_model_dir):
    recipe = write_recipe(work, tiny_model_dir, "reference")
    out = run_toolkit("finetune", str(recipe))
    return work / "reference", out


def test_run_directory_holds_every_output(reference_run, tiny_model_dir):
    run_dir, out = reference_run
    for name in ("resolved_recipe.yaml", "environment.json", "metrics.jsonl", "journal.jsonl", "adapter"):
        assert (run_dir / name).exists(), name
    assert str(run_dir / "adapter") in out.stdout  # prints where every output is
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["libraries"]["torch"] and env["libraries"]["transformers"] and "toolkit_commit" in env
    kinds = [e["kind"] for e in read_jsonl(run_dir / "journal.jsonl")]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and kinds.count("checkpoint") == 2
    for event in read_jsonl(run_dir / "journal.jsonl"):
        assert set(event) == {"step", "time", "kind", "severity", "data"}
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in rows)
    assert list((run_dir).glob("**/events.out.tfevents.*")), "TensorBoard events"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step-{STEPS // 2}", f"step-{STEPS}"]


def test_adapter_loads_in_plain_peft_with_the_trained_logits(reference_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from toolkit import lora as lora_lib
    from toolkit.recipe import LoraConfig

    run_dir, _ = reference_run
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "adapter").eval()
    ours = lora_lib.attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, alpha=8, dropout=0.1, targets="hybrid-all"))
    lora_lib.load_trainable_state_dict(ours, final_weights(run_dir))
    ours.eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        a, b, c = plain(ids).logits, ours(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3), "training changed nothing"


def test_loss_falls_on_the_training_data(reference_run):
    run_dir, _ = reference_run
    vals = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.1


def test_resume_after_sigkill_is_bitwise_equal(work, tiny_model_dir, reference_run):
    ref_dir, _ = reference_run
    recipe = write_recipe(work, tiny_model_dir, "killed")
    run_dir = work / "killed"
    middle = run_dir / "checkpoints" / f"step-{STEPS // 2}"
    proc = subprocess.Popen(toolkit_cmd("finetune", str(recipe)), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not middle.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "checkpoints" / f"step-{STEPS}").exists()

    run_toolkit("finetune", str(recipe), "--resume")
    reference, resumed = final_weights(ref_dir), final_weights(run_dir)
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    ref_losses, new_losses = losses(ref_dir), losses(run_dir)
    assert all(new_losses[s] == ref_losses[s] for s in range(STEPS // 2 + 1, STEPS + 1))
    assert draws(run_dir) == draws(ref_dir)  # the bandit resumed its statistics, RNG and shares exactly
    assert any(e["kind"] == "resume" for e in read_jsonl(run_dir / "journal.jsonl"))


def test_packed_batches_and_a_streamed_source_resume_bitwise(work, tiny_model_dir):
    """pack (several examples a row, GDN state reset at each boundary) and a streamed source: stopping at
    the middle checkpoint and resuming gives the uninterrupted run's weights and losses exactly."""
    def recipe(name):
        path = write_recipe(work, tiny_model_dir, name)
        loaded = json.loads(path.read_text())
        loaded["data"]["batching"] = "pack"
        loaded["data"]["sources"][1]["streaming"] = True
        path.write_text(json.dumps(loaded))
        return path

    run_toolkit("finetune", str(recipe("packed")))
    stopped = recipe("packed-stopped")
    run_toolkit("finetune", str(stopped), "--stop-at", str(STEPS // 2))
    run_toolkit("finetune", str(stopped), "--resume")
    reference, resumed = final_weights(work / "packed"), final_weights(work / "packed-stopped")
    assert all(torch.equal(reference[name], resumed[name]) for name in reference)
    assert losses(work / "packed") == losses(work / "packed-stopped")
    assert draws(work / "packed") == draws(work / "packed-stopped")
    journal = read_jsonl(work / "packed" / "journal.jsonl")
    assert next(e for e in journal if e["kind"] == "run_start")["data"]["batching"] == "pack"
    assert all(r["padding_waste"] == 0.0 for r in read_jsonl(work / "packed" / "metrics.jsonl") if "loss" in r)


def test_a_fresh_start_refuses_a_run_directory_with_checkpoints(reference_run, work, tiny_model_dir):
    out = run_toolkit("finetune", str(work / "reference.yaml"), check=False)
    assert out.returncode == 2 and "--resume" in out.stderr and "run.output_dir" in out.stderr


def test_sigterm_writes_a_checkpoint_then_resumes(work, tiny_model_dir):
    recipe = write_recipe(work, tiny_model_dir, "terminated", max_steps=400, checkpoint_every=1000)
    run_dir = work / "terminated"
    proc = subprocess.Popen(toolkit_cmd("finetune", str(recipe)), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not losses(run_dir) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    stop = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "signal_stop"]
    assert stop and "SIGTERM" in stop[0]["data"]["reason"] and "--resume" in stop[0]["data"]["resume"]
    step = stop[0]["step"]
    assert (run_dir / "checkpoints" / f"step-{step}" / "trainable.safetensors").is_file()
    run_toolkit("finetune", str(recipe), "--resume", "--set", f"train.max_steps={step + 2}")
    assert max(losses(run_dir)) == step + 2


def test_divergence_guard_stops_the_run_with_a_checkpoint(work, tiny_model_dir):
    """A base model whose logits are blown up (as a broken checkpoint would be) trips the finetune cap."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = work / "broken-model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(200.0)
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    recipe = write_recipe(work, broken, "diverging")
    out = run_toolkit("finetune", str(recipe), check=False)
    assert out.returncode == 3, out.stderr
    assert "INV-TRAIN-005" in out.stdout and "finetune cap 10.0" in out.stdout
    stop = [e for e in read_jsonl(work / "diverging" / "journal.jsonl") if e["kind"] == "guard_stop"]
    assert stop and stop[0]["severity"] == "critical" and "first validation loss" in stop[0]["data"]["reason"]
    assert (Path(stop[0]["data"]["checkpoint"]) / "trainable.safetensors").is_file()


def test_two_processes_match_one_with_the_same_global_batch(work, tiny_model_dir):
    # dropout 0: each process draws its own dropout masks, so only a deterministic forward can match
    single = write_recipe(work, tiny_model_dir, "single", dropout=0.0, max_steps=6, batch_size=2, grad_accum=2,
                          checkpoint_every=6, eval_every=6)
    double = write_recipe(work, tiny_model_dir, "double", dropout=0.0, max_steps=6, batch_size=2, grad_accum=1,
                          checkpoint_every=6, eval_every=6)
    run_toolkit("finetune", str(single))
    launch_two_processes(double)
    start = [e for e in read_jsonl(work / "double" / "journal.jsonl") if e["kind"] == "run_start"][0]
    assert start["data"]["processes"] == 2, "accelerate started one process"
    one, two = losses(work / "single"), losses(work / "double")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    assert draws(work / "single") == draws(work / "double")
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-4, (step, one[step], two[step])
    a, b = final_weights(work / "single", 6), final_weights(work / "double", 6)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_the_curriculum_gates_the_warmup_and_the_bandit_mixes_after_it(reference_run):
    run_dir, _ = reference_run
    drawn = draws(run_dir)
    assert {drawn[s] for s in range(1, 5)} == {"prose"}  # steps 0-3: warmup_sources only
    assert {drawn[s] for s in range(5, STEPS + 1)} == {"chat", "prose"}
    events = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "curriculum"]
    assert [(e["step"], e["data"]["eligible"]) for e in events] == [(0, ["prose"]), (4, ["chat", "prose"])]
    summary = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "run_end"][0]["data"]["curriculum"]
    assert sum(summary["draws"].values()) == STEPS


def test_polish_pivot_resumes_with_a_changed_curriculum(work, tiny_model_dir, reference_run):
    """Seed 000's v3 polish: stop part-way, resume with warmup 0 and re-weighted caps and floors."""
    ref_dir, _ = reference_run
    recipe = write_recipe(work, tiny_model_dir, "polished")
    run_dir = work / "polished"
    out = run_toolkit("finetune", str(recipe), "--stop-at", "8")
    assert "stopped at step 8" in out.stdout
    assert losses(run_dir) == {s: v for s, v in losses(ref_dir).items() if s <= 8}
    polish = {"warmup_steps": 0, "sampler": "ucb1", "window": 8, "caps": {"prose": 0.25}, "floors": {"chat": 0.6}}
    recipe = write_recipe(work, tiny_model_dir, "polished", curriculum=polish)
    run_toolkit("finetune", str(recipe), "--resume")
    journal = read_jsonl(run_dir / "journal.jsonl")
    pivot = [e for e in journal if e["kind"] == "curriculum_pivot"]
    assert len(pivot) == 1 and pivot[0]["step"] == 8
    changes = pivot[0]["data"]["changes"]
    assert changes["curriculum.warmup_steps"] == [4, 0] and changes["curriculum.caps.prose"] == [None, 0.25]
    after = [draws(run_dir)[s] for s in range(9, STEPS + 1)]
    assert after.count("prose") <= 0.25 * len(after) + 1 and after.count("chat") >= 0.6 * len(after) - 1
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1))  # one loss history across the pivot
    end = [e for e in journal if e["kind"] == "run_end"][0]["data"]["curriculum"]
    assert sum(end["draws"].values()) == STEPS  # draw counts carried over
