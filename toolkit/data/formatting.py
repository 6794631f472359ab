"""One record (a JSONL row) -> one tokenized `Example` with its loss mask.

Formats: chat ({"messages": [...]}), prompt_response ({"prompt", "response", "system"?}) and text
({text_field: ...}). Chat loss covers only the assistant spans the chat template marks with
{% generation %} or, for a template without those markers, the spans found by rendering the conversation
turn by turn; `train_on: last` keeps only the final one. Text loss covers every token.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import ToolkitError, first_line

IGNORE = -100  # label of a token that carries no loss (PyTorch cross_entropy's ignore_index)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    source: str
    tier: int | None = None

    def __len__(self):
        return len(self.input_ids)


def detect_format(record: dict, text_field: str) -> str | None:
    if "messages" in record:
        return "chat"
    if "prompt" in record and "response" in record:
        return "prompt_response"
    if text_field in record:
        return "text"
    return None


def record_messages(record: dict, fmt: str, where: str) -> list[dict]:
    """The conversation of a chat or prompt_response record, validated."""
    if fmt == "prompt_response":
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str):
                raise ToolkitError(f"'{key}' must be a string", where=where, hint="prompt_response records need "
                                   "string 'prompt' and 'response' keys (and optionally 'system')")
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": str(record["system"])})
        return messages
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ToolkitError("'messages' must be a non-empty list of {role, content} objects", where=where)
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise ToolkitError(f"messages[{n}] must be an object with string 'role' and 'content'", where=where,
                               hint=f"got {str(msg)[:80]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def record_text(record: dict, *, fmt: str = "auto", text_field: str = "text") -> str | None:
    """Raw text of a record (chat contents joined), for training a tokenizer; None if it has none."""
    fmt = detect_format(record, text_field) if fmt == "auto" else fmt
    if fmt == "chat" and isinstance(record.get("messages"), list):
        return "\n".join(str(m.get("content", "")) for m in record["messages"] if isinstance(m, dict))
    if fmt == "prompt_response":
        return "\n".join(str(record[k]) for k in ("system", "prompt", "response") if record.get(k))
    if fmt == "text" and isinstance(record.get(text_field), str):
        return record[text_field]
    return None


def example_from_record(record: dict, tokenizer, *, fmt: str, text_field: str, strip_instructions: bool,
                        max_length: int, source: str, tier: int | None, where: str,
                        train_on: str = "all") -> Example | None:
    """Tokenize one record. Returns None when truncation to `max_length` leaves no token to learn
    (the caller counts these as skipped); raises ToolkitError(where=where) for a malformed record."""
    if not isinstance(record, dict):
        raise ToolkitError(f"a record must be a JSON object, got {type(record).__name__}", where=where)
    detected = detect_format(record, text_field) if fmt == "auto" else fmt
    if detected is None:
        raise ToolkitError(f"cannot tell the record's format from its keys {sorted(record)[:8]}", where=where,
                           hint=f"expected 'messages' (chat), 'prompt'+'response', or '{text_field}' (text)")
    if detected == "chat" and "messages" not in record:
        raise ToolkitError("format is chat but the record has no 'messages'", where=where)
    if detected == "text":
        input_ids, labels = _text_ids(record, tokenizer, text_field, where)
    else:
        messages = record_messages(record, detected, where)
        if strip_instructions:
            # context distillation: the instructions shaped the response but are not in what we train on
            messages = [m for m in messages if m["role"] != "system"]
        input_ids, labels = _chat_ids(messages, tokenizer, where, train_on)
    input_ids, labels = input_ids[:max_length], labels[:max_length]  # keep the start
    # labels[0] is never a target (the model predicts token t from tokens < t), so look from 1 on
    if all(label == IGNORE for label in labels[1:]):
        return None
    return Example(input_ids=input_ids, labels=labels, source=source, tier=tier)


def _text_ids(record: dict, tokenizer, text_field: str, where: str) -> tuple[list[int], list[int]]:
    text = record.get(text_field)
    if not isinstance(text, str) or not text:
        raise ToolkitError(f"'{text_field}' must be a non-empty string", where=where)
    ids = list(tokenizer(text).input_ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # the model learns where a document ends
    return ids, list(ids)


def _chat_ids(messages: list[dict], tokenizer, where: str, train_on: str = "all") -> tuple[list[int], list[int]]:
    hint = ("set model.chat_template to a template that marks assistant turns with {% generation %}, "
            "e.g. toolkit.model.CHAT_TEMPLATE (ChatML)")

    def render(msgs: list[dict], **kwargs) -> dict:
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kwargs)
        except Exception as exc:  # jinja errors (e.g. "roles must alternate") or no template at all
            raise ToolkitError(f"the chat template failed on this conversation: {first_line(exc)}", where=where,
                               hint=hint) from None

    out = render(messages, return_assistant_tokens_mask=True)
    input_ids = list(out["input_ids"])
    spans = _mask_spans(list(out["assistant_masks"]))
    if not spans:
        if not any(m["role"] == "assistant" for m in messages):
            raise ToolkitError("the conversation has no assistant message to train on", where=where)
        spans = _incremental_spans(messages, input_ids, tokenizer, render, where, hint)
    if train_on == "last":
        spans = spans[-1:]  # earlier assistant turns are context only
    labels = [IGNORE] * len(input_ids)
    for start, end in spans:
        labels[start:end] = input_ids[start:end]
    return input_ids, labels


def _mask_spans(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of 1s in an assistant mask."""
    spans = []
    for i, m in enumerate(mask):
        if m and spans and spans[-1][1] == i:
            spans[-1] = (spans[-1][0], i + 1)
        elif m:
            spans.append((i, i + 1))
    return spans


def _incremental_spans(messages: list[dict], input_ids: list[int], tokenizer, render, where: str,
                       hint: str) -> list[tuple[int, int]]:
    """Assistant spans for a template without {% generation %} markers (the official Qwen/Llama ones):
    assistant turn i is what render(messages[:i+1]) adds to render(messages[:i], add_generation_prompt=True),
    less the whitespace the template puts after its end-of-turn token. Every partial render must be a
    prefix of the next and of the full conversation, else the template rewrites earlier turns (e.g. strips
    <think> blocks) and the spans cannot be found this way."""
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = list(render(messages[:i], add_generation_prompt=True)["input_ids"]) if i else None
        upto = list(render(messages[: i + 1])["input_ids"])
        if before is None or upto[: len(before)] != before or input_ids[: len(upto)] != upto:
            raise ToolkitError("the chat template marks no assistant tokens, and rendering the conversation turn "
                               "by turn cannot locate them (the template rewrites earlier turns, e.g. strips <think> "
                               "blocks, or the conversation opens with an assistant turn)", where=where, hint=hint)
        end = len(upto)
        while end > len(before) and not tokenizer.decode(upto[end - 1 : end]).strip():
            end -= 1
        spans.append((len(before), end))
    return spans
