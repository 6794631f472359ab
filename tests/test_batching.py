"""Batching: right padding and packing are exact per example (tiny-hybrid and every family), packing
without the GDN wrapper leaks (the control), bucketing and pack balancing save padding."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from families import FAMILIES, HYBRID, build_family

from toolkit.data import batching as batching_lib
from toolkit.data.batching import (
    check_batching_supported,
    collate,
    micro_batches,
    packing_check,
    padding_waste,
    resolve_batching,
)
from toolkit.data.formatting import IGNORE, Example, example_from_record
from toolkit.errors import ToolkitError
from toolkit.packing import PACKING_KEYS, disable_packed_sequences, enable_packed_sequences, gdn_modules

FOX = "the quick brown fox jumps over the lazy dog while the cat sleeps. "


def _records():
    return [
        {"text": "the cat sleeps."},
        {"messages": [{"role": "user", "content": "item 3?"}, {"role": "assistant", "content": "did what was asked."}]},
        {"text": FOX * 6},
        {"prompt": "User asked for item 5", "response": "the assistant answered with care. " * 3},
        {"messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": FOX * 2},
            {"role": "assistant", "content": "the dog"},
            {"role": "user", "content": "and the cat?"},
            {"role": "assistant", "content": "the cat sleeps " * 4},
        ]},
        {"text": FOX * 2},
    ]


def _examples(tokenizer) -> list[Example]:
    out = []
    for n, record in enumerate(_records()):
        ex = example_from_record(record, tokenizer, fmt="auto", text_field="text", strip_instructions=False,
                                 max_length=512, source="s", tier=None, where=f"test[{n}]")
        out.append(ex)
    return out


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _row_losses(model, batch) -> list[float]:
    """Mean next-token loss of each row over its own labels."""
    with torch.no_grad():
        logits = model(**_model_inputs(batch)).logits.float()
    losses = []
    for row in range(logits.shape[0]):
        losses.append(F.cross_entropy(logits[row, :-1], batch["labels"][row, 1:], ignore_index=IGNORE).item())
    return losses


def _packed_losses(model, batch, bounds: list[int] | None = None) -> list[float]:
    """Mean next-token loss of each example of a packed row over its own labels."""
    with torch.no_grad():
        logits = model(**_model_inputs(batch)).logits.float()[0]
    bounds = bounds or batch["cu_seq_lens_q"].tolist()
    return [F.cross_entropy(logits[s : e - 1], batch["labels"][0, s + 1 : e], ignore_index=IGNORE).item()
            for s, e in itertools.pairwise(bounds)]


def _alone_losses(model, examples, pad_id) -> list[float]:
    return [_row_losses(model, collate([ex], pad_id))[0] for ex in examples]


def _diffs(a, b) -> list[float]:
    return [abs(x - y) for x, y in zip(a, b)]


# ---------------------------------------------------------------- exactness on tiny-hybrid


def test_right_padding_is_exact_per_example_on_hybrid(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    model.eval()
    examples = _examples(tok)
    lengths = [len(ex) for ex in examples]
    assert max(lengths) > 4 * min(lengths)  # very different lengths, so most rows carry many pads

    batched = _row_losses(model, collate(examples, tok.pad_token_id))
    diffs = _diffs(batched, _alone_losses(model, examples, tok.pad_token_id))
    assert max(diffs) <= 1e-4, (lengths, diffs)


def test_packing_is_exact_per_example_on_hybrid(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    model.eval()
    check_batching_supported("pack", model)  # installs the GDN wrapper, then measures
    examples = _examples(tok)
    packed = _packed_losses(model, collate(examples, tok.pad_token_id, "pack"))
    diffs = _diffs(packed, _alone_losses(model, examples, tok.pad_token_id))
    assert max(diffs) <= 1e-4, ([len(ex) for ex in examples], diffs)


def test_packing_leaks_without_the_gdn_wrapper(tiny_model_and_tokenizer):
    """The control: the check above can fail. Without the wrapper transformers' torch fallback refuses
    cu_seq_lens_q, so the row goes in with position_ids only: attention still keeps the examples apart,
    but GDN conv and recurrent state run on from one example into the next."""
    model, tok = tiny_model_and_tokenizer
    model.eval()
    examples = _examples(tok)
    full = collate(examples, tok.pad_token_id, "pack")
    batch = {k: v for k, v in full.items() if k not in PACKING_KEYS}
    disable_packed_sequences(model)
    try:
        with pytest.raises(ValueError, match="packed sequences"):
            model(**_model_inputs(full))
        packed = _packed_losses(model, batch, full["cu_seq_lens_q"].tolist())
    finally:
        enable_packed_sequences(model)
    diffs = _diffs(packed, _alone_losses(model, examples, tok.pad_token_id))
    assert diffs[0] <= 1e-4  # the first example has nothing before it
    assert min(diffs[1:]) > 1e-4, diffs  # every later one sees its predecessors: fails the exact check
    assert max(diffs) > 1e-3, diffs


def test_pack_refused_where_the_model_ignores_boundaries(tiny_model_and_tokenizer, monkeypatch):
    """A forward that drops the packing inputs lets examples see each other: pack is refused, auto falls back."""
    model, _ = tiny_model_and_tokenizer

    class IgnoresBoundaries(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, **kwargs):
            return self.inner(input_ids=input_ids, use_cache=False)

    leaky = IgnoresBoundaries(model)
    with pytest.raises(ToolkitError) as info:
        check_batching_supported("pack", leaky)
    assert info.value.key == "data.batching"
    assert "pack" in info.value.message and "bucket" in info.value.hint
    assert resolve_batching("auto", model) == "bucket"  # on CPU bucket is faster (benchmarks/batching.py)
    monkeypatch.setattr(batching_lib, "on_accelerator", lambda model: True)
    assert resolve_batching("auto", leaky) == "bucket"
    assert resolve_batching("auto", model) == "pack"
    for mode in ("bucket", "pad"):
        assert resolve_batching(mode, leaky) == mode
    with pytest.raises(ToolkitError, match="unknown batching"):
        check_batching_supported("packed", model)


def test_packing_check_restores_mode_and_rng(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    model.train()
    state = torch.random.get_rng_state()
    assert packing_check(model) is None
    assert model.training and torch.equal(state, torch.random.get_rng_state())
    model.eval()


# ---------------------------------------------------------------- gradients, LoRA, checkpointing


@pytest.mark.parametrize("variant", ["full", "lora", "lora+checkpointing"])
def test_packed_gradients_equal_alone(tiny_model_dir, tiny_model_and_tokenizer, variant):
    from transformers import AutoModelForCausalLM

    from toolkit.lora import attach_lora
    from toolkit.loss import token_loss_sum
    from toolkit.recipe import LoraConfig

    _, tok = tiny_model_and_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if variant != "full":
        model = attach_lora(model, LoraConfig(r=4, alpha=8, targets="hybrid-all", train_gates=True))
        for name, p in model.named_parameters():  # B starts at 0; move it so every LoRA weight gets a gradient
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    if variant.endswith("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    check_batching_supported("pack", model)
    assert len(gdn_modules(model)) == 3
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    examples = _examples(tok)

    def grads(batches):
        model.zero_grad(set_to_none=True)
        for batch in batches:
            token_loss_sum(model, batch).backward()
        return [p.grad.clone() for p in params]

    alone = grads([collate([ex], tok.pad_token_id) for ex in examples])
    packed = grads([collate(examples, tok.pad_token_id, "pack")])
    scale = max(g.abs().max().item() for g in alone)
    worst = max((a - b).abs().max().item() for a, b in zip(alone, packed))
    assert worst <= 1e-4 * max(1.0, scale), (worst, scale)
    assert all(g.abs().max() > 0 for g in alone)  # every trained weight took part


# ---------------------------------------------------------------- every family


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    """(family, model, tokenizer): each tiny family checkpoint built and loaded once for this module."""
    from toolkit.model import load_model, load_tokenizer
    from toolkit.recipe import ModelConfig

    path = str(build_family(request.param, tmp_path_factory.mktemp(request.param) / "checkpoint"))
    cfg = ModelConfig(name_or_path=path)
    return request.param, load_model(path, cfg), load_tokenizer(path, cfg)


def test_packing_is_exact_per_example_on_every_family(family_model):
    family, model, tok = family_model
    model.eval()
    assert resolve_batching("pack", model) == "pack"  # the start-up check passes
    assert len(gdn_modules(model)) == (3 if family in HYBRID else 0)
    examples = _examples(tok)
    packed = _packed_losses(model, collate(examples, tok.pad_token_id, "pack"))
    diffs = _diffs(packed, _alone_losses(model, examples, tok.pad_token_id))
    assert max(diffs) <= 1e-4, (family, diffs)


# ---------------------------------------------------------------- collation and micro-batches


def test_collate_right_pads():
    a = Example([5, 6, 7], [IGNORE, 6, 7], source="s")
    b = Example([8], [8], source="s")
    batch = collate([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long


def test_collate_packs_into_one_padding_free_row():
    a = Example([5, 6, 7], [IGNORE, 6, 7], source="s")
    b = Example([8, 9], [8, 9], source="s")
    batch = collate([a, b], pad_token_id=0, batching="pack")
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]  # b's first token is no target
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 5]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert batch["use_cache"] is False


def _ex(n: int, tag: int = 0) -> Example:
    return Example(list(range(1, n + 1)), list(range(1, n + 1)), source=f"s{tag}")


LENGTHS = [3, 200, 5, 180, 4, 190, 6, 210, 7, 170, 2, 220]


def test_bucketing_reduces_padding_waste():
    examples = [_ex(n, i) for i, n in enumerate(LENGTHS)]
    padded = micro_batches(examples, 2, "pad")
    bucketed = micro_batches(examples, 2, "bucket")
    assert padding_waste(bucketed) < 0.1 < 0.4 < padding_waste(padded)
    # same examples, none lost or duplicated
    assert sorted(id(e) for b in bucketed for e in b) == sorted(id(e) for e in examples)
    # collated dicts give the same number as lists of examples
    pad_id = 0
    assert padding_waste([collate(b, pad_id) for b in padded]) == pytest.approx(padding_waste(padded))


def test_bucketing_is_stable_and_deterministic():
    examples = [_ex(4, 0), _ex(2, 1), _ex(4, 2), _ex(2, 3), _ex(9, 4)]
    batches = micro_batches(examples, 2, "bucket")
    assert [[e.source for e in b] for b in batches] == [["s1", "s3"], ["s0", "s2"], ["s4"]]
    assert [[e.source for e in b] for b in micro_batches(examples, 2, "pad")] == [["s0", "s1"], ["s2", "s3"], ["s4"]]


@pytest.mark.parametrize("micro", [1, 2, 3, 5, 12, 20])
def test_pack_gives_bucket_count_balanced_by_tokens(micro):
    examples = [_ex(n, i) for i, n in enumerate(LENGTHS)]
    packed = micro_batches(examples, micro, "pack")
    assert len(packed) == len(micro_batches(examples, micro, "bucket"))  # DDP ranks stay in step
    assert all(packed)  # no empty row
    assert sorted(id(e) for b in packed for e in b) == sorted(id(e) for e in examples)
    loads = [sum(len(e) for e in b) for b in packed]
    assert max(loads) - min(loads) <= max(LENGTHS)  # greedy longest-first: within one example
    again = micro_batches(list(examples), micro, "pack")
    assert [[e.source for e in b] for b in again] == [[e.source for e in b] for b in packed]


def test_pack_puts_longest_first_into_the_least_loaded_row():
    examples = [_ex(n, i) for i, n in enumerate([10, 1, 1, 1, 9, 2])]
    packed = micro_batches(examples, 3, "pack")
    # 10 -> row 0, 9 -> row 1, 2 -> row 1 (9 < 10), 1 -> row 0, 1 -> row 0 (tie: lower index), 1 -> row 1
    assert [[e.source for e in b] for b in packed] == [["s0", "s1", "s2"], ["s3", "s4", "s5"]]
    assert [sum(len(e) for e in b) for b in packed] == [12, 12]


def test_packed_batches_waste_nothing():
    examples = [_ex(n, i) for i, n in enumerate(LENGTHS)]
    packed = [collate(b, 0, "pack") for b in micro_batches(examples, 3, "pack")]
    assert padding_waste(packed) == 0.0
    assert sum(b["input_ids"].numel() for b in packed) == sum(LENGTHS)
    rows = micro_batches(examples, 3, "pack")  # the loop reports waste from the micro-batches themselves
    assert padding_waste(rows, "pack") == 0.0 < padding_waste(rows, "bucket")


def test_seq_idx_for_the_gpu_conv_kernel():
    """The GPU path (fla + causal-conv1d) is untested here; at least its seq_idx is checked."""
    from toolkit.packing import _seq_idx

    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    idx = _seq_idx(cu, torch.zeros(1, 5, 8))
    assert idx.tolist() == [[0, 0, 0, 1, 1]] and idx.dtype == torch.int32
