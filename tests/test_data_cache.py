"""The tokenized-source cache: built once, mapped after, rebuilt when anything that decides the rows changes;
long records windowed or handled by data.too_long; errors still named at file:line."""

from __future__ import annotations

import json

import pytest

from tests.family_templates import FAMILIES, build_tokenizer
from toolkit.chat import encode_prompt, encode_prompts
from toolkit.data import cache as cache_lib
from toolkit.data.sources import load_sources
from toolkit.errors import ToolkitError
from toolkit.recipe import DataConfig, SourceConfig

LONG = " ".join(f"word{i % 37} and the fox number {i}" for i in range(400))
CHAT = {"messages": [{"role": "user", "content": "hi " * 200}, {"role": "assistant", "content": "the end"}]}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    return load_tokenizer(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir)))


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def data(path, tmp_path, **kw):
    return DataConfig(sources=[SourceConfig(name="s", path=str(path))], val_fraction=0.0,
                      cache_dir=str(tmp_path / "cache"), **kw)


def rows(source):
    return [(ex.input_ids, ex.labels) for ex in source.train]


def builds(monkeypatch) -> list:
    """Record every cache build (a second start must not add one)."""
    calls = []
    real = cache_lib._build
    monkeypatch.setattr(cache_lib, "_build", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_encoding_equals_one_at_a_time(family):
    tokenizer = build_tokenizer(family)
    texts = ["the quick fox", "", " leading space", "two\n\nparagraphs", (tokenizer.bos_token or "") + "has bos"]
    assert encode_prompts(tokenizer, texts) == [encode_prompt(tokenizer, t) for t in texts]


def test_second_start_maps_the_cache_and_changes_rebuild(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "a.jsonl", [{"text": f"doc {i} {LONG[: 50 * i]}"} for i in range(1, 30)])
    calls = builds(monkeypatch)
    first = load_sources(data(path, tmp_path), tok, seed=0)[0]
    again = load_sources(data(path, tmp_path), tok, seed=0)[0]
    assert len(calls) == 1 and rows(first) == rows(again)
    write(tmp_path / "a.jsonl", [{"text": f"doc {i} {LONG[: 50 * i]}"} for i in range(1, 29)] + [{"text": "new"}])
    load_sources(data(path, tmp_path), tok, seed=0)  # one record changed: new content hash
    load_sources(data(path, tmp_path, max_length=64), tok, seed=0)  # an option that decides the rows
    other = build_tokenizer("qwen3_5")
    load_sources(data(path, tmp_path), other, seed=0)  # another tokenizer
    other.chat_template = other.chat_template + " "
    load_sources(data(path, tmp_path), other, seed=0)  # another chat template
    assert len(calls) == 5


def test_two_processes_build_the_same_rows_as_one(tmp_path, tok, monkeypatch):
    records = [{"text": f"doc {i} {LONG[: 20 * i]}"} for i in range(60)] + [CHAT] * 5
    path = write(tmp_path / "a.jsonl", records)
    monkeypatch.setattr(cache_lib, "ROWS_PER_PROCESS", 10)
    one = load_sources(data(path, tmp_path / "one", num_proc=1, max_length=64), tok, seed=0, text_windows=True)[0]
    two = load_sources(data(path, tmp_path / "two", num_proc=2, max_length=64), tok, seed=0, text_windows=True)[0]
    assert len(list((tmp_path / "two" / "cache").glob("*/rows_0000*_of_00002.arrow"))) == 2
    assert rows(one) == rows(two) and one.stats == two.stats


def test_an_interrupted_build_leaves_no_cache(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "a.jsonl", [{"text": "one two three"}] * 5)
    real = cache_lib.tokenize_batch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_lib, "tokenize_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        load_sources(data(path, tmp_path), tok, seed=0)
    assert not list((tmp_path / "cache").glob("*/manifest.json"))
    assert not list((tmp_path / "cache").glob("*.building"))
    monkeypatch.setattr(cache_lib, "tokenize_batch", real)
    assert len(load_sources(data(path, tmp_path), tok, seed=0)[0].train) == 5


def test_a_damaged_cache_is_rebuilt_not_read(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "a.jsonl", [{"text": f"doc {i} {LONG[: 30 * i]}"} for i in range(20)])
    first = rows(load_sources(data(path, tmp_path), tok, seed=0)[0])
    (arrow,) = (tmp_path / "cache").glob("*/rows.arrow")
    arrow.write_bytes(arrow.read_bytes()[:-100])  # a truncated file (a full disk, a killed copy)
    calls = builds(monkeypatch)
    assert rows(load_sources(data(path, tmp_path), tok, seed=0)[0]) == first and len(calls) == 1


def test_windows_keep_every_token_of_a_long_document(tmp_path, tok):
    path = write(tmp_path / "a.jsonl", [{"text": LONG}, {"text": "short one"}])
    full = encode_prompt(tok, LONG) + [tok.eos_token_id]
    assert len(full) > 5 * 64
    source = load_sources(data(path, tmp_path, max_length=64), tok, seed=0, text_windows=True)[0]
    short = encode_prompt(tok, "short one") + [tok.eos_token_id]
    found = [ex.input_ids for ex in source.train if ex.input_ids != short]
    windows = sorted(found, key=lambda ids: next(k for k in range(0, len(full), 63) if full[k : k + len(ids)] == ids))
    assert all(len(w) <= 64 for w in windows) and windows[0] == full[:64]
    joined = windows[0] + [t for w in windows[1:] for t in w[1:]]  # each window repeats the previous one's last token
    assert joined == full
    assert source.stats["windowed_documents"] == 1 and source.stats["too_long"] == {}
    assert source.stats["tokens"] - (source.stats["examples"] - source.stats["documents"]) == len(full) + len(short)


@pytest.mark.parametrize("policy", ["truncate_right", "truncate_left", "drop"])
def test_too_long_policies_are_applied_and_counted(tmp_path, tok, policy):
    path = write(tmp_path / "a.jsonl", [{"text": LONG}, CHAT, {"text": "short one"}])
    source = load_sources(data(path, tmp_path, max_length=64, too_long=policy), tok, seed=0)[0]
    full = encode_prompt(tok, LONG) + [tok.eos_token_id]
    kept = {tuple(ex.input_ids) for ex in source.train}
    if policy == "drop":
        assert len(kept) == 1 and source.stats["too_long"] == {"drop": 2}
    else:
        assert tuple(full[:64] if policy == "truncate_right" else full[-64:]) in kept
        # the chat's reply sits at its end: truncating the right loses it (no target left), the left keeps it
        expected = {policy: 1} if policy == "truncate_right" else {policy: 2}
        assert source.stats["too_long"] == expected
        assert source.stats["no_target_skipped"] == (1 if policy == "truncate_right" else 0)


def test_too_long_error_names_the_line(tmp_path, tok):
    path = write(tmp_path / "a.jsonl", [{"text": "short"}, {"text": LONG}])
    with pytest.raises(ToolkitError, match="more than data.max_length=64") as info:
        load_sources(data(path, tmp_path, max_length=64, too_long="error"), tok, seed=0)
    assert info.value.where == f"{path}:2" and "\n" not in str(info.value)


def test_malformed_record_is_named_at_its_line_from_a_worker_process(tmp_path, tok, monkeypatch):
    records = [{"text": f"doc {i}"} for i in range(40)]
    records[33] = {"messages": "not a list"}
    path = write(tmp_path / "a.jsonl", records)
    monkeypatch.setattr(cache_lib, "ROWS_PER_PROCESS", 10)
    with pytest.raises(ToolkitError, match="'messages' must be") as info:
        load_sources(data(path, tmp_path, num_proc=2), tok, seed=0)
    assert info.value.where == f"{path}:34"


def test_directory_of_shards_is_one_source(tmp_path, tok):
    shards = tmp_path / "shards"
    shards.mkdir()
    write(shards / "part-0.jsonl", [{"text": "first shard"}] * 3)
    write(shards / "part-1.jsonl", [{"text": "second shard"}] * 2)
    source = load_sources(data(shards, tmp_path), tok, seed=0)[0]
    assert len(source.train) == 5 and source.stats["documents"] == 5
    (shards / "notes.txt").write_text("x")
    with pytest.raises(ToolkitError, match="one file type"):
        load_sources(data(shards, tmp_path), tok, seed=0)


def test_validation_holds_whole_documents(tmp_path, tok):
    path = write(tmp_path / "a.jsonl", [{"text": LONG.replace("fox", f"fox{i}")} for i in range(10)])
    cfg = DataConfig(sources=[SourceConfig(name="s", path=str(path))], val_fraction=0.2, max_length=64,
                     val_max_examples=1000, cache_dir=str(tmp_path / "cache"))
    source = load_sources(cfg, tok, seed=0, text_windows=True)[0]
    val_windows = {tuple(ex.input_ids) for ex in source.val}
    assert val_windows and not val_windows & {tuple(ex.input_ids) for ex in source.train}
    assert len(source.val) == 2 * len(source.train) // 8  # two documents' windows, all of them
