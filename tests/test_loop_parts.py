"""Pieces of the training loop in-process: LR schedules, gradient checkpointing, checkpoint atomicity."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.train import checkpoint as ckpt
from toolkit.curriculum.schedule import lr_multiplier


def test_schedules():
    assert [lr_multiplier(s, "constant", 2, 10, 0.1) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_multiplier(2, "linear", 2, 10, 0.0) == 1.0
    assert lr_multiplier(6, "linear", 2, 10, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(10, "linear", 2, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(6, "cosine", 2, 10, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(10, "cosine", 2, 10, 0.2) == pytest.approx(0.2)
    assert lr_multiplier(4, "cosine", 2, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_non_reentrant_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_gradient_checkpointing
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_checkpoint_is_atomic_and_keeps_the_last_k(tmp_path):
    weights = {"w": torch.arange(4.0)}
    state = {"optimizer": {}, "rng": ckpt.rng_state()}

    def failing_export(directory):
        raise RuntimeError("disk full")

    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, weights, state, {"components": {}}, None, keep_last=2)
    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(tmp_path, 4, weights, state, {"components": {}}, failing_export, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]  # the failed step-4 never appears
    assert ckpt.latest_checkpoint(tmp_path).name == "step-3"
    loaded, training_state, components = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert torch.equal(loaded["w"], weights["w"]) and components["step"] == 3


def test_rng_state_round_trip():
    import random

    saved = ckpt.rng_state()
    expected = (torch.rand(3), random.random())
    ckpt.set_rng_state(saved)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
