"""Data: format detection, loss masks, JSONL errors, sources (cursor, resume, val split), parquet, text."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from toolkit.data.formatting import IGNORE, example_from_record
from toolkit.data.sources import load_sources, read_records, source_texts
from toolkit.errors import ToolkitError
from toolkit.recipe import DataConfig, ModelConfig, SourceConfig

CHAT = {"messages": [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Give me item 3"},
    {"role": "assistant", "content": "the quick brown fox"},
    {"role": "user", "content": "and the dog?"},
    {"role": "assistant", "content": "the lazy dog sleeps"},
]}
PROMPT_RESPONSE = {"system": "Answer with care.", "prompt": "User asked for item 5", "response": "did what was asked"}
TEXT = {"text": "the cat sleeps while the fox jumps"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from toolkit.model import load_tokenizer

    return load_tokenizer(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir)))


def make(record, tok, *, fmt="auto", strip=False, max_length=512, where="f.jsonl:1", text_field="text"):
    return example_from_record(record, tok, fmt=fmt, text_field=text_field, strip_instructions=strip,
                               max_length=max_length, source="s", tier=2, where=where)


def labeled_text(ex, tok) -> str:
    return tok.decode([label for label in ex.labels if label != IGNORE])


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- formatting


def test_chat_loss_only_on_assistant_tokens(tok):
    ex = make(CHAT, tok)
    assert labeled_text(ex, tok) == "the quick brown fox<|im_end|>the lazy dog sleeps<|im_end|>"
    assert ex.tier == 2 and ex.source == "s" and len(ex.labels) == len(ex.input_ids) == len(ex)
    # everything else (system, user turns, role headers) is context only
    context = tok.decode([i for i, label in zip(ex.input_ids, ex.labels) if label == IGNORE])
    assert "careful assistant" in context and "Give me item 3" in context and "the quick" not in context


def test_prompt_response_becomes_a_chat(tok):
    ex = make(PROMPT_RESPONSE, tok)
    assert labeled_text(ex, tok) == "did what was asked<|im_end|>"
    assert "Answer with care." in tok.decode(ex.input_ids)
    assert "User asked for item 5" in tok.decode(ex.input_ids)


def test_text_trains_on_every_token_and_ends_with_eos(tok):
    ex = make(TEXT, tok)
    assert ex.labels == ex.input_ids
    assert ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[:-1]) == TEXT["text"]
    # a custom text field, and an explicit format
    assert make({"body": "the dog"}, tok, fmt="text", text_field="body").labels[-1] == tok.eos_token_id


def test_auto_detection_error_names_expected_keys(tok):
    with pytest.raises(ToolkitError) as info:
        make({"question": "?", "answer": "!"}, tok, where="data.jsonl:7")
    assert info.value.where == "data.jsonl:7"
    assert "messages" in str(info.value) and "prompt" in str(info.value) and "'text'" in str(info.value)


def test_explicit_format_must_match_the_record(tok):
    with pytest.raises(ToolkitError, match="no 'messages'"):
        make(TEXT, tok, fmt="chat")
    with pytest.raises(ToolkitError, match="'response' must be a string"):
        make({"prompt": "hi"}, tok, fmt="prompt_response")


@pytest.mark.parametrize("messages", [
    "hello",
    [],
    [{"role": "user"}],
    [{"role": "user", "content": ["image", "text"]}],
    ["just a string"],
])
def test_malformed_messages_are_reported_at_their_line(tok, messages):
    with pytest.raises(ToolkitError) as info:
        make({"messages": messages}, tok, where="chats.jsonl:4")
    assert info.value.where == "chats.jsonl:4"


def test_conversation_without_assistant_turn_is_an_error(tok):
    with pytest.raises(ToolkitError, match="no assistant message") as info:
        make({"messages": [{"role": "user", "content": "hi"}]}, tok, where="c.jsonl:2")
    assert info.value.where == "c.jsonl:2"


def tok_with(tiny_model_dir, template):
    from toolkit.model import load_tokenizer

    return load_tokenizer(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir), chat_template=template))


def unmarked(template):
    return template.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def test_template_without_generation_markers_falls_back_to_turn_by_turn_rendering(tok, tiny_model_dir):
    from toolkit.model import CHAT_TEMPLATE

    plain = tok_with(tiny_model_dir, unmarked(CHAT_TEMPLATE))
    assert "{% generation %}" not in plain.chat_template and "{% generation %}" in CHAT_TEMPLATE
    two_turns = {"messages": CHAT["messages"][1:3] + CHAT["messages"][3:5]}
    for record in (CHAT, PROMPT_RESPONSE, two_turns):
        for train_on in ("all", "last"):
            marked = example_from_record(record, tok, fmt="auto", text_field="text", strip_instructions=False,
                                         max_length=512, source="s", tier=2, where="w", train_on=train_on)
            fallback = example_from_record(record, plain, fmt="auto", text_field="text", strip_instructions=False,
                                           max_length=512, source="s", tier=2, where="w", train_on=train_on)
            assert fallback.input_ids == marked.input_ids and fallback.labels == marked.labels
    assert labeled_text(make(CHAT, plain), plain) == "the quick brown fox<|im_end|>the lazy dog sleeps<|im_end|>"
    with pytest.raises(ToolkitError, match="no assistant message"):
        make({"messages": [{"role": "user", "content": "hi"}]}, plain)


def test_template_that_rewrites_earlier_turns_is_an_error(tiny_model_dir):
    from toolkit.model import CHAT_TEMPLATE

    # like templates that strip <think> blocks from earlier turns: earlier assistant turns render shorter
    rewriting = unmarked(CHAT_TEMPLATE).replace("message['content'] + '<|im_end|>' }}",
                                                "(message['content'] if loop.last else 'x') + '<|im_end|>' }}", 1)
    assert rewriting != unmarked(CHAT_TEMPLATE)
    tok = tok_with(tiny_model_dir, rewriting)
    with pytest.raises(ToolkitError, match="cannot locate") as info:
        make(CHAT, tok, where="c.jsonl:1")
    assert info.value.where == "c.jsonl:1"
    assert "{% generation %}" in info.value.hint and "model.chat_template" in info.value.hint
    assert "CHAT_TEMPLATE" in info.value.hint


def test_train_on_last_labels_only_the_final_assistant_turn(tok, tiny_model_dir, tmp_path):
    three = {"messages": [
        {"role": "user", "content": "Give me item 3"},
        {"role": "assistant", "content": "the quick brown fox"},
        {"role": "user", "content": "no, not that"},
        {"role": "assistant", "content": "the cat sleeps"},
        {"role": "user", "content": "and the dog?"},
        {"role": "assistant", "content": "the lazy dog sleeps"},
    ]}
    last = example_from_record(three, tok, fmt="auto", text_field="text", strip_instructions=False, max_length=512,
                               source="s", tier=3, where="w", train_on="last")
    assert labeled_text(last, tok) == "the lazy dog sleeps<|im_end|>"
    assert last.input_ids == make(three, tok).input_ids  # earlier turns stay as context
    assert "the quick brown fox" in tok.decode(last.input_ids)
    # the recipe option reaches the examples through load_sources
    cfg = SourceConfig(name="d", path=str(write_jsonl(tmp_path / "d.jsonl", [three])), train_on="last")
    (source,) = load_sources(DataConfig(sources=[cfg], val_fraction=0.0), tok, seed=0)
    assert labeled_text(source.train[0], tok) == "the lazy dog sleeps<|im_end|>"
    assert SourceConfig(name="x", path="p").train_on == "all"


def test_strip_instructions_removes_the_system_prompt(tok):
    kept, stripped = make(CHAT, tok), make(CHAT, tok, strip=True)
    assert "careful assistant" in tok.decode(kept.input_ids)
    assert "careful assistant" not in tok.decode(stripped.input_ids)
    assert "<|im_start|>system" not in tok.decode(stripped.input_ids)
    assert labeled_text(stripped, tok) == labeled_text(kept, tok)  # same targets, less context
    assert "Answer with care." not in tok.decode(make(PROMPT_RESPONSE, tok, strip=True).input_ids)


def test_truncation_keeps_the_start_and_drops_examples_left_without_targets(tok):
    full = make(CHAT, tok)
    cut = make(CHAT, tok, max_length=len(full) - 3)
    assert cut.input_ids == full.input_ids[: len(full) - 3] and cut.labels == full.labels[: len(full) - 3]
    first_target = next(i for i, label in enumerate(full.labels) if label != IGNORE)
    assert make(CHAT, tok, max_length=first_target) is None  # nothing left to learn: skipped, not an error


# ---------------------------------------------------------------- reading records


def test_jsonl_detects_each_format_with_line_numbers(tmp_path, tok):
    path = write_jsonl(tmp_path / "mixed.jsonl", [CHAT, PROMPT_RESPONSE, "", TEXT])
    records = read_records(SourceConfig(name="m", path=str(path)), 0)
    assert [w for w, _ in records] == [f"{path}:1", f"{path}:2", f"{path}:4"]  # blank line 3 is no record
    assert records.bad_lines == 0
    examples = [make(r, tok, where=w) for w, r in records]
    assert labeled_text(examples[0], tok).endswith("the lazy dog sleeps<|im_end|>")
    assert labeled_text(examples[1], tok) == "did what was asked<|im_end|>"
    assert examples[2].labels == examples[2].input_ids


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "file.jsonl", [TEXT, TEXT, '{"text": "unterminated', TEXT])
    with pytest.raises(ToolkitError) as info:
        read_records(SourceConfig(name="f", path=str(path)), 0)
    assert "file.jsonl:3" in str(info.value)
    assert "on_bad_line" in info.value.hint


def test_non_object_jsonl_line_is_malformed(tmp_path):
    path = write_jsonl(tmp_path / "file.jsonl", [TEXT, "[1, 2]"])
    with pytest.raises(ToolkitError, match="file.jsonl:2"):
        read_records(SourceConfig(name="f", path=str(path)), 0)


def test_on_bad_line_skip_counts_them(tmp_path, tok):
    path = write_jsonl(tmp_path / "file.jsonl", [TEXT, "not json", TEXT, "42", TEXT])
    cfg = SourceConfig(name="f", path=str(path), on_bad_line="skip")
    records = read_records(cfg, 0)
    assert len(records) == 3 and records.bad_lines == 2
    assert [w for w, _ in records] == [f"{path}:1", f"{path}:3", f"{path}:5"]
    (source,) = load_sources(DataConfig(sources=[cfg], val_fraction=0.0), tok, seed=0)
    assert source.stats["bad_lines_skipped"] == 2 and source.stats["no_target_skipped"] == 0
    assert len(source.train) == 3


def test_missing_file_names_the_recipe_key(tmp_path):
    cfg = SourceConfig(name="x", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ToolkitError) as info:
        read_records(cfg, 3)
    assert info.value.key == "data.sources.3.path"


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(ToolkitError, match="unsupported") as info:
        read_records(SourceConfig(name="x", path=str(tmp_path / "d.xml")), 0)
    assert info.value.key == "data.sources.0.path"


def test_max_examples_truncates(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [TEXT] * 10)
    assert len(read_records(SourceConfig(name="x", path=str(path), max_examples=4), 0)) == 4


def test_parquet_through_datasets(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [CHAT, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the dog"}]}]
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": r["messages"]} for r in rows]), path)
    records = read_records(SourceConfig(name="p", path=str(path)), 0)
    assert [w for w, _ in records] == [f"{path}[row 0]", f"{path}[row 1]"]
    assert labeled_text(make(records[1][1], tok), tok) == "the dog<|im_end|>"


def test_text_file_gives_one_record_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("first line\nstill first\n\n\nsecond paragraph\n\nthird\n")
    records = read_records(SourceConfig(name="t", path=str(path)), 0)
    assert [r["text"] for _, r in records] == ["first line\nstill first", "second paragraph", "third"]
    assert [w for w, _ in records] == [f"{path}:1", f"{path}:5", f"{path}:7"]


def test_builtin_source_reads_the_corpus_lazily(monkeypatch):
    fake = types.ModuleType("toolkit.data.corpus")
    fake.load_builtin = lambda name: [TEXT, CHAT] if name == "demo" else []
    monkeypatch.setitem(sys.modules, "toolkit.data.corpus", fake)
    records = read_records(SourceConfig(name="b", builtin="demo"), 0)
    assert [w for w, _ in records] == ["builtin:demo[0]", "builtin:demo[1]"]

    def unknown(name):
        raise ToolkitError(f"unknown builtin corpus '{name}'")

    fake.load_builtin = unknown
    with pytest.raises(ToolkitError, match="unknown builtin") as info:
        read_records(SourceConfig(name="b", builtin="nope"), 2)
    assert info.value.key == "data.sources.2.builtin"


def test_source_texts_covers_every_format(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [CHAT, PROMPT_RESPONSE, TEXT])
    texts = list(source_texts(DataConfig(sources=[SourceConfig(name="m", path=str(path))])))
    assert len(texts) == 3
    assert "the lazy dog sleeps" in texts[0] and "careful assistant" in texts[0]
    assert "did what was asked" in texts[1] and texts[2] == TEXT["text"]


# ---------------------------------------------------------------- sources: cursor, resume, val split


def numbered(tmp_path, n, name="num.jsonl"):
    return write_jsonl(tmp_path / name, [{"text": f"item {i} the fox"} for i in range(n)])


def ids(examples):
    return [tuple(e.input_ids) for e in examples]


def test_next_examples_is_deterministic_and_wraps_epochs(tmp_path, tok):
    data = DataConfig(sources=[SourceConfig(name="n", path=str(numbered(tmp_path, 10)))], val_fraction=0.0)
    a, b = load_sources(data, tok, seed=1)[0], load_sources(data, tok, seed=1)[0]
    first = a.next_examples(25)
    assert ids(first) == ids(b.next_examples(25))
    # each epoch visits every example once, in a new order
    assert sorted(ids(first[:10])) == sorted(ids(first[10:20])) == sorted(ids(a.train))
    assert ids(first[:10]) != ids(first[10:20])
    assert a.state_dict()["epoch"] == 2 and a.state_dict()["position"] == 5
    other = load_sources(data, tok, seed=2)[0]
    assert ids(other.next_examples(10)) != ids(first[:10])


def test_state_dict_resume_gives_the_same_continuation(tmp_path, tok):
    data = DataConfig(sources=[SourceConfig(name="n", path=str(numbered(tmp_path, 9)))], val_fraction=0.0)
    run = load_sources(data, tok, seed=0)[0]
    run.next_examples(7)
    state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint as JSON
    expected = ids(run.next_examples(15))
    resumed = load_sources(data, tok, seed=0)[0]
    resumed.load_state_dict(state)
    assert ids(resumed.next_examples(15)) == expected


def test_group_by_length_draws_similar_lengths_and_resumes_exactly(tmp_path, tok):
    from toolkit.data.batching import padding_waste

    rng = np.random.default_rng(0)
    rows = [{"text": " ".join(["fox"] * int(n))} for n in rng.integers(1, 60, 64)]
    path = write_jsonl(tmp_path / "lengths.jsonl", rows)

    def source(window):
        data = DataConfig(sources=[SourceConfig(name="n", path=str(path))], val_fraction=0.0, group_by_length=window)
        return load_sources(data, tok, seed=3)[0]

    plain, grouped = source(0), source(32)
    epoch = grouped.next_examples(64)
    assert sorted(ids(epoch)) == sorted(ids(plain.next_examples(64)))  # the same examples, once each
    for start, longest_first in ((0, True), (32, False)):  # windows alternate: long..short, short..long
        lengths = [len(e) for e in epoch[start : start + 32]]
        assert lengths == sorted(lengths, reverse=longest_first)
    seam = [len(e) for e in grouped.next_examples(32)]  # the next epoch goes on from long: its first window descends
    assert seam == sorted(seam, reverse=True)

    def waste(src):
        return padding_waste([src.next_examples(8) for _ in range(16)], "pad")

    assert waste(source(32)) < waste(source(0)) / 2
    grouped.next_examples(13)
    state = grouped.state_dict()
    expected = ids(grouped.next_examples(40))
    resumed = source(32)
    resumed.load_state_dict(state)
    assert ids(resumed.next_examples(40)) == expected
    with pytest.raises(ToolkitError, match="group_by_length 32") as info:  # another window: another order
        source(16).load_state_dict(state)
    assert info.value.key == "data.group_by_length"


def test_group_by_length_refuses_streaming_sources(tmp_path, tok):
    data = DataConfig(sources=[SourceConfig(name="s", path=str(numbered(tmp_path, 9)), streaming=True)],
                      group_by_length=16)
    with pytest.raises(ToolkitError, match="streamed") as info:
        load_sources(data, tok, seed=0)
    assert info.value.key == "data.group_by_length"


def test_resume_refuses_changed_data(tmp_path, tok):
    state = load_sources(DataConfig(sources=[SourceConfig(name="n", path=str(numbered(tmp_path, 9)))]),
                         tok, seed=0)[0].state_dict()
    changed = load_sources(DataConfig(sources=[SourceConfig(name="n", path=str(numbered(tmp_path, 12)))]),
                           tok, seed=0)[0]
    with pytest.raises(ToolkitError, match="resume"):
        changed.load_state_dict(state)


def test_val_split_is_deterministic_disjoint_and_bounded(tmp_path, tok):
    path = str(numbered(tmp_path, 40))
    data = DataConfig(sources=[SourceConfig(name="n", path=path)], val_fraction=0.1)
    a, b = load_sources(data, tok, seed=0)[0], load_sources(data, tok, seed=0)[0]
    assert len(a.val) == 4 and len(a.train) == 36
    assert ids(a.val) == ids(b.val) and ids(a.train) == ids(b.train)
    assert not set(ids(a.val)) & set(ids(a.train))
    assert set(ids(a.val)) | set(ids(a.train)) == set(ids(list(a.train) + a.val)) and len(set(ids(list(a.train) + a.val))) == 40
    # training draws never reach validation examples
    assert not set(ids(a.next_examples(100))) & set(ids(a.val))
    capped = DataConfig(sources=[SourceConfig(name="n", path=path)], val_fraction=0.5, val_max_examples=3)
    assert len(load_sources(capped, tok, seed=0)[0].val) == 3
    tiny = DataConfig(sources=[SourceConfig(name="n", path=path)], val_fraction=0.001)
    assert len(load_sources(tiny, tok, seed=0)[0].val) == 1  # at least one when asked for
    one = DataConfig(sources=[SourceConfig(name="n", path=str(numbered(tmp_path, 1, "one.jsonl")))], val_fraction=0.5)
    source = load_sources(one, tok, seed=0)[0]
    assert len(source.train) == 1 and source.val == []


def test_source_without_usable_examples_is_an_error(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT, CHAT])
    data = DataConfig(sources=[SourceConfig(name="ok", path=str(numbered(tmp_path, 3))),
                               SourceConfig(name="c", path=str(path))], max_length=8)
    with pytest.raises(ToolkitError, match="max_length=8") as info:
        load_sources(data, tok, seed=0)
    assert info.value.key == "data.sources.1"
    empty = write_jsonl(tmp_path / "e.jsonl", ["garbage"])
    data = DataConfig(sources=[SourceConfig(name="e", path=str(empty), on_bad_line="skip")])
    with pytest.raises(ToolkitError, match="no usable training examples"):
        load_sources(data, tok, seed=0)


def test_a_line_that_is_not_utf8_is_a_bad_line(tmp_path):
    from toolkit.data.sources import read_records
    from toolkit.errors import ToolkitError
    from toolkit.recipe import SourceConfig

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": "also fine"}\n')
    with pytest.raises(ToolkitError, match=r"mixed\.jsonl:2: not UTF-8"):
        read_records(SourceConfig(name="m", path=str(path)), 0)
    records = read_records(SourceConfig(name="m", path=str(path), on_bad_line="skip"), 0)
    assert len(records) == 2 and records.bad_lines == 1
