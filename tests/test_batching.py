"""Batching on the tiny hybrid: right padding is exact per example, packing leaks, bucketing saves padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolkit.data.batching import check_batching_supported, collate, micro_batches, padding_waste
from toolkit.data.formatting import IGNORE, Example, example_from_record
from toolkit.errors import ToolkitError

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


def _row_losses(model, batch) -> list[float]:
    """Mean next-token loss of each row over its own labels."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    losses = []
    for row in range(logits.shape[0]):
        losses.append(F.cross_entropy(logits[row, :-1], batch["labels"][row, 1:], ignore_index=IGNORE).item())
    return losses


def test_right_padding_is_exact_per_example_on_hybrid(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    model.eval()
    examples = _examples(tok)
    lengths = [len(ex) for ex in examples]
    assert max(lengths) > 4 * min(lengths)  # very different lengths, so most rows carry many pads

    batched = _row_losses(model, collate(examples, tok.pad_token_id))
    alone = [_row_losses(model, collate([ex], tok.pad_token_id))[0] for ex in examples]
    diffs = [abs(a - b) for a, b in zip(batched, alone)]
    assert max(diffs) <= 1e-4, (lengths, diffs)


def test_packing_two_examples_in_one_row_leaks(tiny_model_and_tokenizer):
    """The check above can fail: packed after another example, a short text and a short chat each get a
    different loss than alone, because GDN state and attention carry over from the first example."""
    model, tok = tiny_model_and_tokenizer
    model.eval()
    examples = _examples(tok)
    first = examples[2]
    for second in (examples[0], examples[1]):
        # the second's first token is no target in either run, so only leakage can move the loss
        labels = [IGNORE] * (len(first) + 1) + second.labels[1:]
        packed = Example(first.input_ids + second.input_ids, labels, source="s")
        packed_loss = _row_losses(model, collate([packed], tok.pad_token_id))[0]
        alone_loss = _row_losses(model, collate([second], tok.pad_token_id))[0]
        assert abs(packed_loss - alone_loss) > 1e-3


def test_collate_right_pads():
    a = Example([5, 6, 7], [IGNORE, 6, 7], source="s")
    b = Example([8], [8], source="s")
    batch = collate([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long


def _ex(n: int, tag: int = 0) -> Example:
    return Example(list(range(1, n + 1)), list(range(1, n + 1)), source=f"s{tag}")


def test_bucketing_reduces_padding_waste():
    lengths = [3, 200, 5, 180, 4, 190, 6, 210, 7, 170, 2, 220]
    examples = [_ex(n, i) for i, n in enumerate(lengths)]
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


def test_pack_refused_on_hybrid(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    with pytest.raises(ToolkitError) as info:
        check_batching_supported("pack", model)
    assert info.value.key == "data.batching"
    assert "pack" in info.value.message and "bucket" in info.value.hint
    check_batching_supported("bucket", model)
    check_batching_supported("pad", model)


def test_pack_refused_on_non_hybrid_too():
    class Plain:
        config = type("Config", (), {"layer_types": ["full_attention"] * 2})()

    with pytest.raises(ToolkitError, match="not implemented yet"):
        check_batching_supported("pack", Plain())
