"""Chat templates as the models ship them: assistant-only loss, prompts and BOS for every family
(tests/family_templates.py), located in the rendered text by toolkit.chat."""

from __future__ import annotations

import json

import pytest

from family_templates import END_OF_TURN, FAMILIES, QWEN35, build_tokenizer
from toolkit.chat import (IGNORE, PLAIN_CHAT_TEMPLATE, PLAIN_TEMPLATE_DESCRIPTION, chat_prompt, encode_prompt, render,
                          supervised_example, supervised_spans, template_description)
from toolkit.data.formatting import example_from_record
from toolkit.errors import ToolkitError


HAS_BOS = {"llama3", "mistral", "gemma"}  # their templates write BOS and their tokenizers add one too
QWEN = {"qwen3_5", "qwen3"}  # think blocks: earlier turns' are stripped, the final turn has one
# Mistral's template writes "[/INST] " + reply: the byte-level BPE folds that space into the reply's first
# token (" red"), which is what the model generates after "[/INST]", so the supervised text starts with it.
LEAD = {"mistral": " "}

MODES = [(f, {}) for f in FAMILIES] + [(f, {"enable_thinking": False}) for f in sorted(QWEN)]
MODE_IDS = [f + ("-no_thinking" if kw else "") for f, kw in MODES]

SYSTEM = {"role": "system", "content": "Be brief and kind."}
ONE = [{"role": "user", "content": "Give me three colors"}, {"role": "assistant", "content": "red green blue"}]
MULTI = [
    SYSTEM,
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hello, how are you today?"},
    {"role": "user", "content": "Write a short story about a river."},
    {"role": "assistant", "content": "The river ran past the city each morning."},
    {"role": "user", "content": "And the forest?"},
    {"role": "assistant", "content": "The forest was quiet at night."},
]
REASONING = [dict(m) for m in MULTI]
REASONING[2]["reasoning_content"] = "A greeting: greet back."  # an earlier turn: Qwen templates strip it
REASONING[6]["reasoning_content"] = "Think first.\nThen answer the question."
CONVERSATIONS = {"one": ONE, "one+system": [SYSTEM] + ONE, "multi": MULTI, "multi+reasoning": REASONING}


def tokenizer_for(family: str, kwargs: dict | None = None):
    tok = build_tokenizer(family)
    tok.chat_template_kwargs = dict(kwargs or {})
    return tok


def expected_spans(family: str, messages: list[dict]) -> list[str]:
    """What each assistant turn's supervised tokens decode to: reply + end-of-turn token, after the reasoning
    and </think> on the final turn of the Qwen families (the only turn their templates keep it on)."""
    out = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        think = ""
        if family in QWEN and m.get("reasoning_content") and i == len(messages) - 1:
            think = m["reasoning_content"] + "\n</think>\n\n"
        out.append(think + LEAD.get(family, "") + m["content"] + END_OF_TURN[family])
    return out


def decoded_spans(tok, ids, labels) -> list[str]:
    return [tok.decode(span, skip_special_tokens=False) for span in supervised_spans(ids, labels)]


# ---------------------------------------------------------------- the loss mask, family by family


@pytest.mark.parametrize("family,kwargs", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_supervised_text_is_each_reply_and_its_end_of_turn_token(family, kwargs, name):
    tok = tokenizer_for(family, kwargs)
    messages = CONVERSATIONS[name]
    ids, labels = supervised_example(tok, messages, where="d.jsonl:1")
    assert len(ids) == len(labels) and all(label in (IGNORE, i) for i, label in zip(ids, labels))
    assert decoded_spans(tok, ids, labels) == expected_spans(family, messages)
    # the training text is the template's rendering, token for token
    full = render(tok, messages, add_generation_prompt=False)
    assert tok.decode(ids, skip_special_tokens=False) == full
    # nothing of the prompts carries loss
    learned = "".join(decoded_spans(tok, ids, labels))
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] not in learned
    last = supervised_example(tok, messages, train_on="last")
    assert last[0] == ids and decoded_spans(tok, *last) == expected_spans(family, messages)[-1:]


@pytest.mark.parametrize("family,kwargs", MODES, ids=MODE_IDS)
def test_exactly_one_bos(family, kwargs):
    tok = tokenizer_for(family, kwargs)
    ids, _ = supervised_example(tok, MULTI)
    prompt_ids = encode_prompt(tok, chat_prompt(tok, MULTI[:-1]))
    if family in HAS_BOS:
        bos = tok.bos_token_id
        assert ids[0] == bos and ids.count(bos) == 1
        assert prompt_ids[0] == bos and prompt_ids.count(bos) == 1
        # the hazard the rule avoids: the template wrote BOS and the tokenizer would add another
        assert tok(render(tok, MULTI, add_generation_prompt=False))["input_ids"][:2] == [bos, bos]
        assert encode_prompt(tok, "plain words")[0] == bos  # text without BOS gets the tokenizer's one
    elif family in QWEN:
        assert tok.bos_token is None and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    else:  # gpt2: no template, and its tokenizer adds nothing
        assert ids == tok(render(tok, MULTI, add_generation_prompt=False))["input_ids"]


@pytest.mark.parametrize("family,kwargs", MODES, ids=MODE_IDS)
def test_training_renders_the_prompt_inference_renders(family, kwargs):
    """chat_prompt(messages[:i]) is a prefix of the training text; where the template keeps earlier turns as
    they were (all but the Qwen families) every turn's prompt is, and byte-identical up to the reply; the
    Qwen families strip earlier think blocks, so only the final turn's prompt is a prefix."""
    tok = tokenizer_for(family, kwargs)
    full = render(tok, MULTI, add_generation_prompt=False)
    turns = [i for i, m in enumerate(MULTI) if m["role"] == "assistant"]
    thinking = family in QWEN and not kwargs
    for i in turns if family not in QWEN else turns[-1:]:
        prompt = chat_prompt(tok, MULTI[:i])
        assert full.startswith(prompt)
        if not thinking:  # the prompt is everything before the reply
            assert full.startswith(prompt + LEAD.get(family, "") + MULTI[i]["content"] + END_OF_TURN[family])
    if family == "qwen3_5":
        prompt = chat_prompt(tok, MULTI[:-1])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" if kwargs else
                               "<|im_start|>assistant\n<think>\n")
        assert "<think>" not in full.split("<|im_start|>assistant")[1]  # earlier turns: no think block
        assert full.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nThe forest was quiet at night.<|im_end|>\n")


def test_qwen35_thinking_prompt_ids_are_not_a_prefix_of_the_training_ids():
    """Why masks are found in text: Qwen3.5's thinking prompt ends "<think>\\n", the training text goes on
    "\\n</think>" and the tokenizer makes "\\n\\n" one token, so the prompt's ids are no prefix of the text's."""
    tok = tokenizer_for("qwen3_5")
    ids, labels = supervised_example(tok, ONE)
    prompt = chat_prompt(tok, ONE[:1])
    assert render(tok, ONE, add_generation_prompt=False).startswith(prompt)
    assert ids[: len(encode_prompt(tok, prompt))] != encode_prompt(tok, prompt)
    assert decoded_spans(tok, ids, labels) == ["red green blue<|im_end|>"]


def test_templates_that_trim_get_the_trimmed_reply():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  red green blue \n"}]
    for family in ("qwen3_5", "llama3", "gemma", "mistral"):
        tok = tokenizer_for(family)
        assert decoded_spans(tok, *supervised_example(tok, messages)) == [
            LEAD.get(family, "") + "red green blue" + END_OF_TURN[family]]


def test_inline_think_blocks_are_read_as_the_qwen_templates_read_them():
    inline = [{"role": "user", "content": "Hello there"},
              {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello!"},
              {"role": "user", "content": "Give me three colors"},
              {"role": "assistant", "content": "<think>\nThink first.\n</think>\n\nred green blue"}]
    # Qwen3.5 strips the earlier think block and keeps the final one; in thinking mode the prompt already
    # holds "<think>\n", so the reasoning is what the model writes; without thinking the template writes the
    # content as given after "assistant\n", and all of it is learned
    tok = tokenizer_for("qwen3_5")
    assert decoded_spans(tok, *supervised_example(tok, inline)) == [
        "Hello!<|im_end|>", "Think first.\n</think>\n\nred green blue<|im_end|>"]
    tok = tokenizer_for("qwen3_5", {"enable_thinking": False})
    assert decoded_spans(tok, *supervised_example(tok, inline)) == ["Hello!<|im_end|>", inline[3]["content"] + "<|im_end|>"]
    tok = tokenizer_for("llama3")  # a template that knows no think blocks writes the content as it is
    assert decoded_spans(tok, *supervised_example(tok, inline)) == [m["content"] + "<|eot_id|>" for m in inline[1::2]]


# ---------------------------------------------------------------- template-specific structure


def test_gemma_merges_the_system_message_into_the_first_user_turn_and_checks_roles():
    tok = tokenizer_for("gemma")
    prompt = chat_prompt(tok, [SYSTEM] + ONE[:1])
    assert prompt == "<bos><start_of_turn>user\nBe brief and kind.\n\nGive me three colors<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ToolkitError, match="roles must alternate") as info:
        supervised_example(tok, [ONE[0], ONE[0], ONE[1]], where="g.jsonl:4")
    assert info.value.where == "g.jsonl:4" and "tiny-gemma" in str(info.value)


def test_llama3_writes_bos_and_a_default_system_header():
    tok = tokenizer_for("llama3")
    prompt = chat_prompt(tok, ONE[:1])
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_plain_format_without_a_template():
    tok = tokenizer_for("gpt2")
    messages = [SYSTEM, {"role": "user", "content": "Hello"}]
    assert chat_prompt(tok, messages) == "Be brief and kind.\nHello\n"
    assert render(tok, messages + [{"role": "assistant", "content": "Hi."}], add_generation_prompt=False) == \
        "Be brief and kind.\nHello\nHi.<|endoftext|>"
    assert tok.chat_template is None  # the plain template is passed per call, never stored
    assert template_description(tok) == PLAIN_TEMPLATE_DESCRIPTION and "{%" in PLAIN_CHAT_TEMPLATE
    assert template_description(tokenizer_for("qwen3_5")) == "the tokenizer's chat template"
    assert "enable_thinking" in template_description(tokenizer_for("qwen3_5", {"enable_thinking": False}))


# ---------------------------------------------------------------- what the toolkit refuses


def test_a_template_that_rewrites_the_reply_is_an_error_naming_the_template():
    tok = tokenizer_for("qwen3_5")
    tok.chat_template = QWEN35.replace("'\\n</think>\\n\\n' + content", "'\\n</think>\\n\\n' + content|upper")
    assert tok.chat_template != QWEN35
    with pytest.raises(ToolkitError, match="cannot locate") as info:
        supervised_example(tok, MULTI, where="d.jsonl:3")
    assert info.value.where == "d.jsonl:3" and "chat template of tiny-qwen3_5" in str(info.value)
    assert "model.chat_template" in str(info.value)


def test_a_template_that_rewrites_earlier_replies_is_an_error():
    tok = tokenizer_for("qwen3_5")
    tok.chat_template = QWEN35.replace("{{- '<|im_start|>assistant\\n' + content }}",
                                       "{{- '<|im_start|>assistant\\n' + content[:4] }}")
    assert tok.chat_template != QWEN35
    assert decoded_spans(tok, *supervised_example(tok, ONE)) == ["red green blue<|im_end|>"]  # final turn: fine
    with pytest.raises(ToolkitError, match="cannot locate") as info:
        supervised_example(tok, MULTI, where="d.jsonl:5")
    assert info.value.where == "d.jsonl:5"


def test_a_template_without_end_of_turn_text_is_an_error():
    tok = tokenizer_for("qwen3_5")
    tok.chat_template = "{%- for m in messages %}{{- m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor %}"
    with pytest.raises(ToolkitError, match="never learn to stop") as info:
        supervised_example(tok, ONE, where="d.jsonl:1")
    assert info.value.where == "d.jsonl:1"


def test_a_reply_starting_like_the_prompt_goes_on():
    """Qwen3.5 in thinking mode: the prompt ends "<think>\n" while an earlier turn (think block stripped) starts
    its reply right after "assistant\n"; a reply starting "<" must not lose its first character."""
    tok = tokenizer_for("qwen3_5")
    messages = ONE[:1] + [{"role": "assistant", "content": "<th>red</th>"}] + MULTI[3:5]
    assert decoded_spans(tok, *supervised_example(tok, messages)) == [
        "<th>red</th><|im_end|>", "The river ran past the city each morning.<|im_end|>"]


def test_a_token_joining_template_text_and_reply_is_an_error():
    # its split pattern keeps one punctuation mark with the word after it, and the corpus teaches ":red"
    tok = build_tokenizer("qwen3_5", texts=["A:red green blue; B:red"] * 40)
    tok.chat_template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + ':' + m['content'] + '<|im_end|>' }}"
                         "{%- endfor %}")
    with pytest.raises(ToolkitError, match="joins an assistant reply") as info:
        supervised_example(tok, ONE, where="d.jsonl:2")
    assert info.value.where == "d.jsonl:2"


def test_template_errors_and_empty_replies_are_one_line_errors():
    tok = tokenizer_for("qwen3_5")
    with pytest.raises(ToolkitError, match="System message must be at the beginning") as info:
        supervised_example(tok, ONE + [SYSTEM, {"role": "assistant", "content": "ok"}], where="d.jsonl:9")
    assert info.value.where == "d.jsonl:9" and "\n" not in str(info.value)
    with pytest.raises(ToolkitError, match="empty"):
        supervised_example(tok, ONE[:1] + [{"role": "assistant", "content": "  "}], where="d.jsonl:9")
    with pytest.raises(ToolkitError, match="no assistant message"):
        supervised_example(tok, ONE[:1])


def test_a_tokenizer_without_offsets_is_an_error():
    tok = tokenizer_for("llama3")

    class NoOffsets(type(tok)):
        def __call__(self, *args, return_offsets_mapping=False, **kwargs):
            if return_offsets_mapping:
                raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
            return super().__call__(*args, **kwargs)

    tok.__class__ = NoOffsets
    with pytest.raises(ToolkitError, match="fast tokenizer with offsets") as info:
        supervised_example(tok, ONE, where="d.jsonl:1")
    assert info.value.where == "d.jsonl:1"


# ---------------------------------------------------------------- through the data path, the loader and the CLI


def test_records_with_reasoning_content_through_example_from_record():
    tok = tokenizer_for("qwen3_5", {"enable_thinking": False})
    ex = example_from_record({"messages": REASONING}, tok, fmt="auto", text_field="text", strip_instructions=True,
                             max_length=512, source="s", tier=1, where="r.jsonl:1")
    stripped = [m for m in REASONING if m["role"] != "system"]
    assert decoded_spans(tok, ex.input_ids, ex.labels) == expected_spans("qwen3_5", stripped)
    assert "Be brief" not in tok.decode(ex.input_ids)
    with pytest.raises(ToolkitError, match="reasoning_content must be a string"):
        example_from_record({"messages": ONE[:1] + [{"role": "assistant", "content": "x", "reasoning_content": 3}]},
                            tok, fmt="auto", text_field="text", strip_instructions=False, max_length=512, source="s",
                            tier=1, where="r.jsonl:2")


def test_recipe_chat_template_kwargs_reach_the_prompt(tmp_path):
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    build_tokenizer("qwen3_5").save_pretrained(tmp_path / "tok")
    for kwargs, ending in (({}, "<think>\n"), ({"enable_thinking": False}, "<think>\n\n</think>\n\n")):
        tok = load_tokenizer(str(tmp_path / "tok"), ModelConfig(name_or_path=str(tmp_path / "tok"),
                                                                 chat_template_kwargs=kwargs))
        assert chat_prompt(tok, ONE[:1]).endswith("<|im_start|>assistant\n" + ending)


def test_analysis_prompts_use_the_same_rendering():
    from analysis import capture, steering

    for family in ("llama3", "gpt2"):
        tok = tokenizer_for(family)
        assert capture.prompt_text({"prompt": "Hello"}, tok) == chat_prompt(tok, [{"role": "user", "content": "Hello"}])
        assert capture.prompt_text({"messages": ONE}, tok) == render(tok, ONE, add_generation_prompt=False)
        text = capture.prompt_text({"prompt": "Hello"}, tok)
        assert capture.encode(text, tok)[0].tolist() == encode_prompt(tok, text)
        assert steering.prompt_ids(tok, "Hello") == encode_prompt(tok, text)
    assert capture.prompt_text({"prompt": "Hello", "response": "Hi."}, tokenizer_for("gpt2")) == "Hello\nHi.<|endoftext|>"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The `toolkit` command in this process (its entry point, as `python -m toolkit` runs it)."""
    from toolkit.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_show_example(tmp_path, capsys):
    build_tokenizer("qwen3_5").save_pretrained(tmp_path / "model")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "a text source is skipped"}) + "\n")
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"messages": MULTI}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {tmp_path / 'model'}, chat_template_kwargs: {{enable_thinking: false}}}}\n"
        f"run: {{output_dir: {tmp_path / 'run'}}}\n"
        f"data:\n  sources:\n    - {{name: t, path: {data}}}\n    - {{name: c, path: {chat}, train_on: last}}\n")
    code, out, err = run_cli(capsys, "validate", str(recipe), "--show-example")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"# {chat}:1 (source 'c', train_on: last)"
    assert "chat template with chat_template_kwargs {'enable_thinking': False}" in lines[1]
    assert render(tokenizer_for("qwen3_5", {"enable_thinking": False}), MULTI, add_generation_prompt=False) in out
    assert lines[-1] == repr("The forest was quiet at night.<|im_end|>")
    # tiny-hybrid trains its tokenizer when a run starts: nothing to show before
    code, out, err = run_cli(capsys, "validate", str(recipe), "--show-example", "--set", "model.name_or_path=tiny-hybrid")
    assert code == 0 and out.count("\n") == 1 and "does not exist yet" in out
    # a template the toolkit cannot mask: one line, at the data line
    bad = QWEN35.replace("'\\n</think>\\n\\n' + content", "'\\n</think>\\n\\n' + content|upper")
    assert bad != QWEN35
    bad_recipe = tmp_path / "bad.yaml"
    bad_recipe.write_text(recipe.read_text().replace("chat_template_kwargs",
                                                     f"chat_template: {json.dumps(bad)}, chat_template_kwargs"))
    code, out, err = run_cli(capsys, "validate", str(bad_recipe), "--show-example")
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("error: "), err
    assert f"{chat}:1" in err and "cannot locate" in err and "tiny-qwen3_5" not in err
