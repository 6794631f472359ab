"""Dream-loop generation (batched, left-padded, KV cache, seeded) and the scenario temperature policy."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from toolkit.dream.generate import chat_prompt, eos_token_ids, generate, generate_ids
from toolkit.dream.temperature import TemperaturePolicy
from toolkit.recipe import LoraConfig, ModelConfig, TemperatureConfig, TinyHybridConfig

# Lengths from 1 to ~100 tokens, so a batch mixes heavy and no padding (and crosses the GDN chunk of 64).
PROMPTS = [
    "the quick brown fox jumps over the lazy dog " * 10,
    "Hi",
    "User asked for item 3; the assistant answered",
    "a",
    "Line 5: the cat sleeps while the fox jumps " * 3,
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors run fastest on one thread, and a busy 2-core machine can stall a second intra-op thread
    on every op (this module went from ~6 s to ~55 s that way); restored for the other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fresh_model(model_dir):
    """Our own copy of a tiny hybrid (the session fixture is shared), with larger random weights: at the
    default init it just repeats the last token, which would make every comparison trivially equal."""
    from toolkit.model import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(model_dir))
    model, tokenizer = load_model(str(model_dir), cfg), load_tokenizer(str(model_dir), cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.2, generator=gen)
    return model, tokenizer


@pytest.fixture(scope="module")
def hybrid(tiny_model_dir):
    """GDN, GDN, GDN, full attention."""
    return _fresh_model(tiny_model_dir)


@pytest.fixture(scope="module")
def interleaved_hybrid(tmp_path_factory):
    """GDN, full, GDN, full: GDN layers that read the attention layers' output at the pad positions too."""
    from toolkit.model import build_tiny_hybrid

    out = tmp_path_factory.mktemp("interleaved") / "model"
    build_tiny_hybrid(TinyHybridConfig(vocab_size=300, full_attention_interval=2), iter(PROMPTS * 20), out, seed=0)
    return _fresh_model(out)


def _greedy_ids(model, tokenizer, prompts, batch_size, max_new_tokens=8):
    return generate_ids(model, tokenizer, prompts, temperature=0, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, seed=0)


@pytest.mark.parametrize("which", ["hybrid", "interleaved_hybrid"])
def test_batched_greedy_equals_one_at_a_time_on_hybrid_cache(request, which):
    model, tokenizer = request.getfixturevalue(which)
    alone = [_greedy_ids(model, tokenizer, [p], batch_size=1)[0] for p in PROMPTS]
    assert len({tuple(ids) for ids in alone}) == len(PROMPTS)  # the model really depends on its prompt
    assert _greedy_ids(model, tokenizer, PROMPTS, batch_size=2) == alone
    assert _greedy_ids(model, tokenizer, PROMPTS, batch_size=len(PROMPTS)) == alone  # most padding


def test_output_order_matches_input_order(hybrid):
    model, tokenizer = hybrid
    forward = generate(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=4, batch_size=2, seed=0)
    backward = generate(model, tokenizer, PROMPTS[::-1], temperature=0, max_new_tokens=4, batch_size=2, seed=0)
    assert backward == forward[::-1]


def test_sampling_is_seeded_and_leaves_global_rng_alone(hybrid):
    model, tokenizer = hybrid
    kwargs = dict(temperature=1.0, max_new_tokens=8, batch_size=2)
    padding_side = tokenizer.padding_side
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = generate(model, tokenizer, PROMPTS[:3], seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert generate(model, tokenizer, PROMPTS[:3], seed=7, **kwargs) == first
    assert generate(model, tokenizer, PROMPTS[:3], seed=8, **kwargs) != first
    assert tokenizer.padding_side == padding_side  # left padding is built by hand, the tokenizer is untouched


def test_training_mode_restored(hybrid):
    model, tokenizer = hybrid
    model.train()
    model.model.layers[0].eval()  # a caller's per-module modes survive too
    try:
        generate(model, tokenizer, ["Hi"], temperature=0, max_new_tokens=2, batch_size=1, seed=0)
        assert model.training and model.model.layers[1].training
        assert not model.model.layers[0].training
    finally:
        model.eval()
    generate(model, tokenizer, ["Hi"], temperature=0, max_new_tokens=2, batch_size=1, seed=0)
    assert not model.training


def test_peft_lora_model_generates_like_its_base(tiny_model_dir, hybrid):
    from toolkit.lora import attach_lora

    base, tokenizer = hybrid
    peft_model = attach_lora(_fresh_model(tiny_model_dir)[0], LoraConfig(r=4, alpha=8, targets="hybrid-all"))
    peft_model.train()
    # LoRA's B starts at zero, so the wrapped model must generate exactly what its base does.
    assert _greedy_ids(peft_model, tokenizer, PROMPTS[:3], batch_size=2) == _greedy_ids(base, tokenizer, PROMPTS[:3], 3)
    assert peft_model.training


def test_stops_at_end_of_assistant_turn(hybrid):
    model, tokenizer = hybrid
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in eos_token_ids(model, tokenizer)

    def always_end(module, inputs, logits):
        logits[..., im_end] += 1e4
        return logits

    handle = model.lm_head.register_forward_hook(always_end)
    try:
        assert _greedy_ids(model, tokenizer, PROMPTS[:2], batch_size=2) == [[im_end], [im_end]]
        assert generate(model, tokenizer, PROMPTS[:2], temperature=1.0, max_new_tokens=8, batch_size=2,
                        seed=0) == ["", ""]
    finally:
        handle.remove()


def test_chat_prompt(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert chat_prompt(tokenizer, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert chat_prompt(plain, messages) == "Be brief.\nHello\n"  # the plain format: each message and a newline


# ---------------------------------------------------------------- temperature policy (seed 003)


def test_adaptive_temperature_is_base_plus_gain_times_failure_rate():
    policy = TemperaturePolicy(TemperatureConfig())
    assert policy.failure_rate() is None
    assert policy.temperature(0.0) == pytest.approx(1.2)  # no outcome yet: assume failing (0.5 + 0.7)
    policy.record([False, True, True, True])
    assert policy.failure_rate() == pytest.approx(0.25)
    assert policy.temperature(0.5) == pytest.approx(0.5 + 0.7 * 0.25)
    policy.record([True] * 16)
    assert policy.failure_rate() == pytest.approx(1 / 20)
    policy.record([True])  # the window holds the last 20: the failure slides out
    assert policy.failure_rate() == 0.0 and policy.temperature(0.9) == pytest.approx(0.5)
    policy.record([False] * 20)
    assert policy.temperature(0.1) == pytest.approx(1.2)


def test_schedule_and_fixed_temperatures():
    schedule = TemperaturePolicy(TemperatureConfig(mode="schedule"))
    assert [schedule.temperature(p) for p in (0.05, 0.3, 0.7, 0.95, 1.0)] == [1.2, 0.9, 0.7, 0.5, 0.5]
    assert schedule.temperature(0.1) == 0.9  # until_progress is exclusive
    assert TemperaturePolicy(TemperatureConfig(mode="fixed", value=0.8)).temperature(0.3) == 0.8


def test_phase_override():
    policy = TemperaturePolicy(TemperatureConfig(mode="schedule"))
    policy.record([True, True, True, False])
    assert policy.temperature(0.05, phase_temperature=0.3) == 0.3
    assert policy.temperature(0.05, phase_temperature="adaptive") == pytest.approx(0.5 + 0.7 * 0.25)
    assert policy.temperature(0.05, phase_temperature=None) == 1.2
    with pytest.raises(ValueError):
        policy.temperature(0.05, phase_temperature="hot")


def test_state_round_trips_through_json():
    policy = TemperaturePolicy(TemperatureConfig(window=5))
    policy.record([True, False, False, True, True, False, True])
    restored = TemperaturePolicy(TemperatureConfig(window=5))
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.failure_rate() == policy.failure_rate() == pytest.approx(2 / 5)
    assert restored.temperature(0.2) == policy.temperature(0.2)
    smaller = TemperaturePolicy(TemperatureConfig(window=2))
    smaller.load_state_dict(policy.state_dict())
    assert smaller.failure_rate() == pytest.approx(0.5)  # the newest two: False, True
