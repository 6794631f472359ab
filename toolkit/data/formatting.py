"""One record (a JSONL row) -> one tokenized `Example` with its loss mask.

Formats: chat ({"messages": [...]}), prompt_response ({"prompt", "response", "system"?}) and text
({text_field: ...}). Chat loss covers only the assistant spans the chat template marks with
{% generation %}; text loss covers every token.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import ToolkitError

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
                        max_length: int, source: str, tier: int | None, where: str) -> Example | None:
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
        input_ids, labels = _chat_ids(messages, tokenizer, where)
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


def _chat_ids(messages: list[dict], tokenizer, where: str) -> tuple[list[int], list[int]]:
    hint = "set model.chat_template to a template that marks assistant turns with {% generation %}"
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    except Exception as exc:  # jinja errors (e.g. "roles must alternate") or no template at all
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ToolkitError(f"the chat template failed on this conversation: {first}", where=where, hint=hint) from None
    input_ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    if not any(mask):
        if not any(m["role"] == "assistant" for m in messages):
            raise ToolkitError("the conversation has no assistant message to train on", where=where)
        raise ToolkitError("the chat template marks no assistant tokens, so there is nothing to train on",
                           where=where, hint=hint)
    labels = [tok if m else IGNORE for tok, m in zip(input_ids, mask)]
    return input_ids, labels
