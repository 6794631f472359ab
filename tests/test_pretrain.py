"""From-scratch pretraining of tiny-hybrid on the built-in real-text corpora: the loss falls from ≈ ln(V)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from toolkit.journal import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def test_pretrain_tiny_hybrid_from_scratch(tmp_path):
    out_dir = tmp_path / "pretrain"
    overrides = [f"run.output_dir={out_dir}", "model.tiny.vocab_size=1024", "train.max_steps=60",
                 "train.checkpoint_every=60", "train.eval_every=30", "train.batch_size=8", "data.max_length=96",
                 "logging.trackers=[]"]
    args = [sys.executable, "-m", "toolkit", "pretrain", "recipes/pretrain-tiny.yaml"]
    for item in overrides:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]

    config = json.loads((out_dir / "model" / "config.json").read_text())
    assert config["model_type"] == "qwen3_5_text"
    assert config["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    vocab = config["vocab_size"]
    vals = [r["val_loss"] for r in read_jsonl(out_dir / "metrics.jsonl") if "val_loss" in r]
    assert abs(vals[0] - math.log(vocab)) < 1.0, (vals[0], math.log(vocab))  # random init ≈ uniform
    assert vals[-1] < vals[0] - 1.0, vals  # clearly learning (≈1.4 nats in 60 steps)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(out_dir / "model")
    assert type(model).__name__ == "Qwen3_5ForCausalLM" and tokenizer.chat_template
    assert (out_dir / "base-model" / "tokenizer.json").is_file()
