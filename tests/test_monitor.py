"""The understanding module inside the loop: a source of repeated tokens makes the audit's repetition
detector fire and the run pause with a checkpoint that resumes; a planted bias pattern pauses a run."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.journal import read_jsonl
from toolkit.monitor.core import EXIT_PAUSED


def monitored_recipe(tmp_path: Path, model_dir: Path, name: str, monitor: dict, rows: list[dict], **train) -> Path:
    from test_train import write_recipe

    recipe = write_recipe(tmp_path, model_dir, name, dropout=0.0, **train)
    data = json.loads(recipe.read_text())
    path = tmp_path / f"{name}-data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data["data"]["sources"] = [{"name": "loop", "path": str(path)}]
    data["data"]["val_fraction"] = 0.0
    data["curriculum"] = {}
    data["monitor"] = monitor
    recipe.write_text(json.dumps(data))
    return recipe


def test_repeated_tokens_make_the_repetition_detector_fire_and_the_run_pause(tmp_path, tiny_model_dir):
    from test_train import losses, run_toolkit

    rows = [{"messages": [{"role": "user", "content": f"Say something {i}."},
                          {"role": "assistant", "content": " ".join(["region"] * 40)}]} for i in range(16)]
    monitor = {"audit_every": 10, "probes": ["Tell me about the sea.", "Say something."], "max_new_tokens": 80,
               "pause_on": "critical"}
    recipe = monitored_recipe(tmp_path, tiny_model_dir, "looping", monitor, rows, max_steps=40, lr=1e-2,
                              checkpoint_every=40, eval_every=40)
    out = run_toolkit("finetune", str(recipe), check=False)
    assert out.returncode == EXIT_PAUSED, out.stderr[-2000:]
    run_dir = tmp_path / "looping"
    journal = read_jsonl(run_dir / "journal.jsonl")
    pause = [e for e in journal if e["kind"] == "pause"]
    assert len(pause) == 1 and "repetition critical" in pause[0]["data"]["reason"]
    assert "--resume" in pause[0]["data"]["resume"] and pause[0]["severity"] == "high"
    step = pause[0]["step"]
    assert any(e["kind"] == "repetition" and e["severity"] == "critical" and e["step"] == step for e in journal)
    assert any(e["kind"] == "audit" for e in journal)
    assert (run_dir / "checkpoints" / f"step-{step}" / "trainable.safetensors").is_file()
    # resume with pausing off: training continues from the paused step
    run_toolkit("finetune", str(recipe), "--resume", "--set", "monitor.pause_on=null")
    assert sorted(losses(run_dir)) == list(range(1, 41))


def test_a_planted_bias_pattern_pauses_a_run(tmp_path, tiny_model_dir):
    from test_train import run_toolkit

    patterns = tmp_path / "patterns.yaml"
    # the tiny model's audit answers are near-empty; a pattern that matches any answer plants the finding
    patterns.write_text("patterns:\n  - {name: planted, category: test, regex: '(?s).*', severity: high}\n")
    rows = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."}]}
            for i in range(16)]
    monitor = {"audit_every": 4, "probes": ["Hello?"], "max_new_tokens": 4, "pause_on": "high",
               "bias": {"patterns": str(patterns)}}
    recipe = monitored_recipe(tmp_path, tiny_model_dir, "biased", monitor, rows, max_steps=12)
    out = run_toolkit("finetune", str(recipe), check=False)
    assert out.returncode == EXIT_PAUSED, out.stderr[-2000:]
    journal = read_jsonl(tmp_path / "biased" / "journal.jsonl")
    pause = [e for e in journal if e["kind"] == "pause"][0]
    assert pause["step"] == 4 and "bias high" in pause["data"]["reason"]
    bias = [e for e in journal if e["kind"] == "bias"]
    assert bias and bias[0]["data"]["pattern"] == "planted"


def test_monitor_state_resumes_exactly(tmp_path, tiny_model_dir):
    """Spike histories and draws since the last audit are in the checkpoint: a stop and resume finds
    exactly what an uninterrupted run finds."""
    from test_train import losses, run_toolkit

    rows = [{"messages": [{"role": "user", "content": f"Say something {i}."},
                          {"role": "assistant", "content": " ".join(["region"] * 40)}]} for i in range(16)]
    monitor = {"audit_every": 8, "probes": ["Say something."], "max_new_tokens": 40,
               "spikes": {"window": 4, "warn_z": 1.0, "high_z": 2.0}}

    def findings(run_dir):
        return [(e["step"], e["kind"], e["severity"], e["data"].get("value")) for e in read_jsonl(run_dir / "journal.jsonl")
                if e["kind"] in ("repetition", "formatting", "bias", "loss_spike", "grad_norm_spike", "penalize")]

    whole = monitored_recipe(tmp_path, tiny_model_dir, "whole", monitor, rows, max_steps=16, lr=1e-2,
                             checkpoint_every=16, eval_every=16)
    run_toolkit("finetune", str(whole))
    split = monitored_recipe(tmp_path, tiny_model_dir, "split", monitor, rows, max_steps=16, lr=1e-2,
                             checkpoint_every=16, eval_every=16)
    run_toolkit("finetune", str(split), "--stop-at", "5")
    run_toolkit("finetune", str(split), "--resume")
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert findings(tmp_path / "split") == findings(tmp_path / "whole") and findings(tmp_path / "whole")
