"""One record (a JSONL row) -> one tokenized `Example` with its loss mask.

Formats: chat ({"messages": [...]}, an assistant message may carry "reasoning_content"), prompt_response
({"prompt", "response", "system"?}) and text ({text_field: ...}). Chat loss covers each assistant reply and
its end-of-turn token as the model's own chat template renders them (`toolkit.chat.supervised_example`);
`train_on: last` keeps only the final one. Text loss covers every token.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.chat import IGNORE, encode_prompt, supervised_example
from toolkit.errors import ToolkitError

__all__ = ["IGNORE", "Example", "detect_format", "example_from_record", "record_conversation",
           "record_messages", "record_text"]


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
    out = []
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise ToolkitError(f"messages[{n}] must be an object with string 'role' and 'content'", where=where,
                               hint=f"got {str(msg)[:80]!r}")
        reasoning = msg.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ToolkitError(f"messages[{n}].reasoning_content must be a string", where=where)
        out.append({"role": msg["role"], "content": msg["content"]})
        if reasoning is not None and msg["role"] == "assistant":
            out[-1]["reasoning_content"] = reasoning  # templates with think blocks (Qwen3, Qwen3.5) render it
    return out


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
    messages = record_conversation(record, fmt=fmt, text_field=text_field, strip_instructions=strip_instructions,
                                   where=where)
    if messages is None:
        input_ids, labels = _text_ids(record, tokenizer, text_field, where)
    else:
        input_ids, labels = supervised_example(tokenizer, messages, train_on=train_on, where=where)
    input_ids, labels = input_ids[:max_length], labels[:max_length]  # keep the start
    # labels[0] is never a target (the model predicts token t from tokens < t), so look from 1 on
    if all(label == IGNORE for label in labels[1:]):
        return None
    return Example(input_ids=input_ids, labels=labels, source=source, tier=tier)


def record_conversation(record: dict, *, fmt: str, text_field: str, strip_instructions: bool,
                        where: str) -> list[dict] | None:
    """The messages a chat or prompt_response record trains on (None for a text record), validated."""
    if not isinstance(record, dict):
        raise ToolkitError(f"a record must be a JSON object, got {type(record).__name__}", where=where)
    detected = detect_format(record, text_field) if fmt == "auto" else fmt
    if detected is None:
        raise ToolkitError(f"cannot tell the record's format from its keys {sorted(record)[:8]}", where=where,
                           hint=f"expected 'messages' (chat), 'prompt'+'response', or '{text_field}' (text)")
    if detected == "chat" and "messages" not in record:
        raise ToolkitError("format is chat but the record has no 'messages'", where=where)
    if detected == "text":
        return None
    messages = record_messages(record, detected, where)
    if strip_instructions:
        # context distillation: the instructions shaped the response but are not in what we train on
        messages = [m for m in messages if m["role"] != "system"]
    return messages


def _text_ids(record: dict, tokenizer, text_field: str, where: str) -> tuple[list[int], list[int]]:
    text = record.get(text_field)
    if not isinstance(text, str) or not text:
        raise ToolkitError(f"'{text_field}' must be a non-empty string", where=where)
    ids = encode_prompt(tokenizer, text)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # the model learns where a document ends
    return ids, list(ids)
