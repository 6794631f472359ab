"""Streamed sources: drawn in file order, tokenized as drawn, resumed exactly from their state."""

from __future__ import annotations

import json

import pytest

from toolkit.data.sources import load_sources
from toolkit.errors import ToolkitError
from toolkit.recipe import DataConfig, SourceConfig

LONG = " ".join(f"word{i % 37} and the fox number {i}" for i in range(120))


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    return load_tokenizer(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir)))


@pytest.fixture
def shards(tmp_path):
    """Two JSONL shards mixing short texts, long texts (windowed) and chats."""
    directory = tmp_path / "shards"
    directory.mkdir()
    for k in range(2):
        rows = []
        for i in range(12):
            if i % 4 == 0:
                rows.append({"text": f"shard {k} doc {i} " + LONG})
            elif i % 4 == 1:
                rows.append({"messages": [{"role": "user", "content": f"q{k}{i}"},
                                          {"role": "assistant", "content": f"answer {k} {i}"}]})
            else:
                rows.append({"text": f"shard {k} short doc {i}"})
        (directory / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def streamed(path, **kw):
    return DataConfig(sources=[SourceConfig(name="s", path=str(path), streaming=True)], max_length=64,
                      val_fraction=kw.pop("val_fraction", 0.0), **kw)


def ids(examples):
    return [tuple(ex.input_ids) for ex in examples]


def test_stream_gives_the_cached_sources_examples_in_file_order(shards, tok, tmp_path):
    (stream,) = load_sources(streamed(shards), tok, seed=0, text_windows=True)
    cached_cfg = DataConfig(sources=[SourceConfig(name="s", path=str(shards))], max_length=64, val_fraction=0.0,
                            cache_dir=str(tmp_path / "cache"))
    (cached,) = load_sources(cached_cfg, tok, seed=0, text_windows=True)
    epoch = stream.next_examples(len(cached.train))
    assert sorted(ids(epoch)) == sorted(ids(cached.train))  # the same rows, windows included
    assert stream.epoch == 0 and ids(stream.next_examples(3)) == ids(epoch[:3]) and stream.epoch == 1


@pytest.mark.parametrize("draws", [1, 5, 7, 13])
def test_stream_resumes_exactly_mid_record_and_across_epochs(shards, tok, draws):
    (run,) = load_sources(streamed(shards), tok, seed=0, text_windows=True)
    for _ in range(draws):
        run.next_examples(5)  # 5 cuts long documents' windows apart
    state = json.loads(json.dumps(run.state_dict()))  # as the checkpoint stores it
    expected = [ids(run.next_examples(5)) for _ in range(8)]
    (resumed,) = load_sources(streamed(shards), tok, seed=0, text_windows=True)
    resumed.load_state_dict(state)
    assert [ids(resumed.next_examples(5)) for _ in range(8)] == expected


def test_stream_validation_is_held_out_of_training(shards, tok):
    (stream,) = load_sources(streamed(shards, val_fraction=0.25, val_max_examples=4), tok, seed=0)
    assert stream.val and not set(ids(stream.val)) & set(ids(stream.next_examples(40)))


def test_stream_errors_name_the_row_and_empty_streams_stop(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    (stream,) = load_sources(streamed(bad), tok, seed=0)
    with pytest.raises(ToolkitError, match="messages\\[0\\]") as info:
        stream.next_examples(2)
    assert info.value.where == f"{bad}[row 1]"
    with pytest.raises(ValueError, match="cannot be streamed"):
        SourceConfig(name="b", builtin="python-docs", streaming=True)
