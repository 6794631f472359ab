"""Builtin corpora gathered at run time, and the shipped directive dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.data import corpus
from toolkit.data.corpus import BUILTIN_CORPORA, load_builtin
from toolkit.errors import ToolkitError

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"
TIERS = [DATA / f"directive-tier{t}.jsonl" for t in (1, 2, 3)]


def test_python_docs_many_unique_texts_and_deterministic():
    first = load_builtin("python-docs")
    corpus._gather.cache_clear()
    second = load_builtin("python-docs")
    assert first == second
    texts = [r["text"] for r in first]
    assert len(texts) > 500
    assert all(t.strip() and set(r) == {"text"} for t, r in zip(texts, first))
    assert len(set(texts)) == len(texts)
    assert load_builtin("python-docs", max_docs=5) == first[:5]


def test_records_are_copies():
    load_builtin("chatterbot", max_docs=1)[0]["messages"][0]["content"] = "changed"
    assert load_builtin("chatterbot", max_docs=1)[0]["messages"][0]["content"] != "changed"


def test_chatterbot_alternates_user_assistant():
    records = load_builtin("chatterbot")
    assert len(records) > 300
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles and len(roles) % 2 == 0
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in r["messages"])
    texts = load_builtin("chatterbot-text")
    assert len(texts) >= len(records) and all(t["text"].strip() for t in texts)


def test_unknown_corpus_suggests_a_name():
    with pytest.raises(ToolkitError, match="unknown builtin corpus 'pyhton-docs'.*did you mean 'python-docs'"):
        load_builtin("pyhton-docs")
    with pytest.raises(ToolkitError, match="builtin corpora: python-docs"):
        load_builtin("zzz")
    assert set(BUILTIN_CORPORA) == {"python-docs", "chatterbot", "chatterbot-text", "python-topics",
                                    "python-dictionary", "package-docs"}


@pytest.mark.parametrize("name, minimum", [("python-topics", 300), ("python-dictionary", 700),
                                           ("package-docs", 150)])
def test_new_text_corpora_are_unique_deterministic_copies(name, minimum):
    first = load_builtin(name)
    corpus._gather.cache_clear()
    assert load_builtin(name) == first
    texts = [r["text"] for r in first]
    assert len(texts) >= minimum and len(set(texts)) == len(texts)
    assert all(set(r) == {"text"} and isinstance(t, str) and t.strip() for t, r in zip(texts, first))
    first[0]["text"] = "changed"
    assert load_builtin(name, max_docs=1)[0]["text"] != "changed"


def test_python_topics_is_prose():
    for text in (r["text"] for r in load_builtin("python-topics")):
        lines = text.splitlines()
        assert "::=" not in text and not all(line[:1].isspace() for line in lines)
        assert not any(set(line.strip()) == {"*"} for line in lines)
        assert corpus.MIN_PARAGRAPH <= len(text) <= corpus.MAX_PARAGRAPH


def test_python_dictionary_entries_define_a_name():
    records = load_builtin("python-dictionary")
    names = []
    for text in (r["text"] for r in records):
        ask, answer = text.split("\n")
        assert ask.startswith("> define ")
        name = ask[len("> define "):]
        assert answer.startswith(f"< {name}: ") and len(answer) - len(name) - 4 >= corpus.MIN_SUMMARY
        names.append(name)
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {"len", "json.dumps"} <= set(names)


def test_package_docs_keeps_markdown_but_not_html():
    texts = [r["text"] for r in load_builtin("package-docs")]
    assert not any(t.startswith("<") for t in texts)
    assert any(t.startswith("#") for t in texts) and any(t.startswith("```") for t in texts)
    fences = [t for t in texts if t.startswith("```")]
    assert all(t.count("```") % 2 == 0 for t in fences)  # a code block is never cut at a blank line


def test_markdown_split_keeps_fenced_blank_lines():
    text = "# Title\n\nSome prose.\n\n```python\nx = 1\n\ny = 2\n```\n\n\nEnd."
    assert corpus._markdown_split(text) == ["# Title", "Some prose.", "```python\nx = 1\n\ny = 2\n```", "End."]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("tier", [1, 2, 3])
def test_directive_tier_files_are_valid_chat(tier):
    rows = _rows(TIERS[tier - 1])
    assert 60 <= len(rows) <= 120
    assert TIERS[tier - 1].stat().st_size < 60_000
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "system" and roles[1:] == ["user", "assistant"] * ((len(roles) - 1) // 2)
        assert len(roles) >= 3 and all(m["content"].strip() for m in row["messages"])
        assert f"tier{tier}" in row["tags"] and not any(f"tier{t}" in row["tags"] for t in {1, 2, 3} - {tier})


def test_no_prompt_is_repeated_across_tiers_and_eval():
    prompts = []
    for path in TIERS:
        for row in _rows(path):
            prompts.append(tuple(m["content"] for m in row["messages"] if m["role"] == "user"))
    firsts = [p[0] for p in prompts]
    assert len(set(prompts)) == len(prompts) and len(set(firsts)) == len(firsts)
    evals = _rows(DATA / "directive-eval.jsonl")
    assert len(evals) >= 25 and {e["tier"] for e in evals} == {1, 2, 3}
    eval_prompts = [e["prompt"] for e in evals]
    assert len(set(eval_prompts)) == len(eval_prompts)
    train_turns = {turn for p in prompts for turn in p}
    assert not train_turns & set(eval_prompts)
