"""Chat prompts: the one place where messages become text and text becomes token ids.

Training, the dream loop, the monitor, the server and the analysis tools all render through here, so a
model is trained on exactly the prompt text it sees at inference (same template, same
`tokenizer.chat_template_kwargs`, e.g. `{enable_thinking: false}` from the recipe's
`model.chat_template_kwargs`).

- `render(tokenizer, messages, add_generation_prompt=...)`: the model's own chat template, unchanged, with
  the tokenizer's `chat_template_kwargs`. A tokenizer without a template (GPT-2) gets `PLAIN_CHAT_TEMPLATE`
  (passed per call, never stored on the tokenizer): each non-assistant message's content and a newline,
  each assistant reply and the EOS token; the generation prompt adds nothing.
- `chat_prompt(tokenizer, messages)`: what the model sees before it answers.
- `encode_prompt(tokenizer, text)`: the BOS rule. The tokenizer's special tokens are added only when the
  text does not already start with the BOS token (Llama-3, Mistral and Gemma templates write BOS
  themselves), so there is never a second BOS.
- `supervised_example(tokenizer, messages, train_on=...)`: token ids and labels for assistant-only loss.

How the loss mask is found. The conversation is rendered once (F) and tokenized once with offsets; the
mask is located in F's TEXT, never by comparing token ids of partial renders: a generation prompt's text
can be a prefix of F while its token ids are not (Qwen3.5 in thinking mode: the prompt ends `<think>\n`,
F goes on `\n</think>\n\n` and `\n\n` is one token). For assistant message i, with
P = render(messages[:i], add_generation_prompt=True), the prompt inference would use:

1. The anchor: where the reply may start. Usually F starts with P and the anchor is len(P). When it does
   not, the template rewrites earlier turns or the prompt's header (Qwen3/3.5 strip earlier `<think>`
   blocks and the non-thinking prompt writes an empty one), and the anchor is where F parts from P and
   from render(messages[:i]): past every earlier message, never inside this one.
2. The end-of-turn text: what render(messages[:i+1]) writes right after the reply, less trailing
   whitespace (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, EOS for the plain format).
3. The reply: the first occurrence of the content (as given, else stripped: templates may `|trim` it)
   from the anchor on that F continues with the end-of-turn text, with no end-of-turn text in between.
   A `reasoning_content` the template renders there (Qwen3/3.5, on the turns after the last user message)
   moves the start to the reasoning, so reasoning, `</think>` and content are learned; the opening
   `<think>` and an empty think block are the template's, context not target. Whitespace alone between
   the prompt and the reply (Mistral's `[/INST]` + ` ` + reply) is generated text and is learned with it.
   A content with an inline `<think>...</think>` the template does not write verbatim is read as Qwen's
   templates read it (reasoning inside the block, reply after it).
4. Region = [reply start, end of the end-of-turn text). A token is supervised when its characters overlap
   a region (as transformers does for `{% generation %}` spans); one that also reaches outside the region
   by anything but whitespace is an error, since no mask would be right.

The same text method serves every template; `{% generation %}` markers are neither needed nor read (a
template with them renders the same text and gets the same mask). Whatever the toolkit cannot mask exactly
(reply text not found, end-of-turn text missing or different in the full conversation, a tokenizer
without offsets, a template error) is a one-line `ToolkitError` naming the template, at the data line:
never a silent wrong mask.
"""

from __future__ import annotations

from toolkit.errors import ToolkitError, first_line
from toolkit.loss import IGNORE  # label of a token that carries no loss

# For a tokenizer without a chat template (GPT-2 and other base models). Passed through
# apply_chat_template's `chat_template=` argument, never assigned to the tokenizer.
PLAIN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{{- message['content'] + (eos_token or '') }}"
    "{%- else %}{{- message['content'] + '\\n' }}{%- endif %}"
    "{%- endfor %}"
)
PLAIN_TEMPLATE_DESCRIPTION = ("plain text (the tokenizer has no chat template): each message's content, then a "
                              "newline after a user/system message and the EOS token after an assistant reply; "
                              "the prompt adds nothing")

TEMPLATE_HINT = ("the template must write each assistant message's content unchanged and end the turn with an "
                 "end-of-turn token; set model.chat_template to one that does, e.g. toolkit.model.CHAT_TEMPLATE "
                 "(ChatML; {% generation %} markers are not needed)")


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_kwargs(tokenizer) -> dict:
    """Extra template variables (the recipe's model.chat_template_kwargs, set on the tokenizer by the loader)."""
    return dict(getattr(tokenizer, "chat_template_kwargs", None) or {})


def template_description(tokenizer) -> str:
    """One line for the journal: which template renders the prompts."""
    if not has_template(tokenizer):
        return PLAIN_TEMPLATE_DESCRIPTION
    kwargs = template_kwargs(tokenizer)
    return "the tokenizer's chat template" + (f" with chat_template_kwargs {kwargs}" if kwargs else "")


def template_name(tokenizer) -> str:
    """How errors name the template: whose it is."""
    if not has_template(tokenizer):
        return "the plain chat format (the tokenizer has no chat template)"
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    return f"the chat template of {name} (or the recipe's model.chat_template)"


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool, where: str | None = None) -> str:
    """The conversation as text through the tokenizer's template (or the plain format), with its kwargs."""
    kwargs = template_kwargs(tokenizer)
    if not has_template(tokenizer):
        kwargs["chat_template"] = PLAIN_CHAT_TEMPLATE
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **kwargs)
    except Exception as exc:  # jinja errors ("roles must alternate"), a template that needs other inputs
        raise ToolkitError(f"{template_name(tokenizer)} failed on this conversation: {first_line(exc)}",
                           where=where, hint=TEMPLATE_HINT) from None
    if not isinstance(text, str):
        raise ToolkitError(f"{template_name(tokenizer)} did not render to text", where=where, hint=TEMPLATE_HINT)
    return text


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt that asks the model for the next assistant turn (training renders the same text)."""
    return render(tokenizer, messages, add_generation_prompt=True)


def _add_special_tokens(tokenizer, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered text: the tokenizer's special tokens (its BOS) only when the text does not
    start with the BOS token already (templates that write BOS themselves)."""
    return list(tokenizer(text, add_special_tokens=_add_special_tokens(tokenizer, text))["input_ids"])


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """`encode_prompt` of many texts in two batched tokenizer calls (fast tokenizers encode a batch in Rust)."""
    out: list[list[int]] = [[] for _ in texts]
    for special in (True, False):
        picked = [i for i, t in enumerate(texts) if _add_special_tokens(tokenizer, t) == special]
        if picked:
            for i, ids in zip(picked, _encode_batch(tokenizer, [texts[i] for i in picked], special)):
                out[i] = list(ids)
    return out


def _encode_batch(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):  # no offsets: about 20% faster
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=special)]
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


# ---------------------------------------------------------------- assistant-only loss


def supervised_example(tokenizer, messages: list[dict], *, train_on: str = "all",
                       where: str | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation: labels are the ids on each assistant reply and its end-of-turn
    token, IGNORE elsewhere; `train_on="last"` keeps only the final reply. See the module docstring."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise ToolkitError("the conversation has no assistant message to train on", where=where)
    full = render(tokenizer, messages, add_generation_prompt=False, where=where)
    regions = [reply_region(tokenizer, messages, i, full, where)
               for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_on == "last":
        regions = regions[-1:]  # earlier assistant turns are context only
    input_ids, offsets = _encode_with_offsets(tokenizer, full, where)
    labels = [IGNORE] * len(input_ids)
    for start, end in regions:
        for k in _covering_tokens(tokenizer, full, offsets, start, end, where):
            labels[k] = input_ids[k]
    return input_ids, labels


def supervised_spans(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """The supervised token ids of an example, one list per contiguous run (for display and tests)."""
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels):
        if label != IGNORE:
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = label != IGNORE
    return spans


def reply_region(tokenizer, messages: list[dict], i: int, full: str, where: str | None = None) -> tuple[int, int]:
    """[start, end) in `full` (the rendered conversation) of assistant message i's reply and end-of-turn text.

    A content with an inline `<think>...</think>` that the template does not write verbatim is read the way
    the Qwen/DeepSeek templates read it: the text after the last `</think>` is the reply, the text inside
    the block its reasoning."""
    message = messages[i]
    content = message.get("content")
    reasoning = message.get("reasoning_content")
    reasoning = reasoning.strip() if isinstance(reasoning, str) else ""
    if not isinstance(content, str) or not content.strip():
        raise ToolkitError(f"messages[{i}] (assistant) is empty: there is no reply to learn", where=where)
    prompt = render(tokenizer, messages[:i], add_generation_prompt=True, where=where) if i else ""
    if full.startswith(prompt):  # the usual case: the reply is generated right after the prompt
        anchor, after_prompt = len(prompt), True
    else:  # the template rewrites earlier turns (or the prompt's header): past the earlier messages, not further
        before = render(tokenizer, messages[:i], add_generation_prompt=False, where=where)
        anchor, after_prompt = min(_common_prefix(full, prompt), _common_prefix(full, before)), False
    upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False, where=where)
    readings = [(content, reasoning)]
    if "</think>" in content and content.split("</think>")[-1].strip():
        inline = content.split("</think>")[0].split("<think>")[-1].strip()
        readings.append((content.split("</think>")[-1], reasoning or inline))
    errors = []
    for reply, reply_reasoning in readings:
        try:
            return _locate(tokenizer, i, reply, reply_reasoning, full, upto, anchor, after_prompt, where)
        except ToolkitError as err:
            errors.append(err)
    raise errors[0]


def _locate(tokenizer, i: int, content: str, reasoning: str, full: str, upto: str, anchor: int, after_prompt: bool,
            where: str | None) -> tuple[int, int]:
    name = template_name(tokenizer)
    variants = list(dict.fromkeys([content, content.strip()]))
    # the reply is the last thing `upto` renders: its last occurrence (the one ending latest; exact on a tie)
    found = [(upto.rfind(v) + len(v), len(v), v) for v in variants if upto.rfind(v) >= 0]
    if not found:
        raise ToolkitError(f"{name} does not write messages[{i}]'s content unchanged, so the toolkit cannot locate "
                           "the reply to train on", where=where, hint=TEMPLATE_HINT)
    reply_end, _, variant = max(found)
    end_of_turn = upto[reply_end:].rstrip()
    if not end_of_turn:
        raise ToolkitError(f"{name} writes nothing after an assistant reply to end the turn, so the model would "
                           "never learn to stop", where=where, hint=TEMPLATE_HINT)
    for v in [variant] + [v for v in variants if v != variant]:
        at = _find_reply(full, v, end_of_turn, anchor)
        if at is not None:
            break
    else:
        raise ToolkitError(f"{name} renders messages[{i}] differently in the whole conversation than on its own "
                           f"(its content followed by {end_of_turn!r} is not there), so the toolkit cannot locate "
                           "the reply to train on", where=where, hint=TEMPLATE_HINT)
    start, end = at, at + len(v) + len(end_of_turn)
    if reasoning:
        r = full.find(reasoning, anchor, at)
        if r >= 0:
            return r, end  # the template renders the reasoning here: reasoning, </think> and content are learned
    if after_prompt and anchor < start and full[anchor:start].isspace():
        start = anchor  # whitespace the template writes between prompt and reply is generated too (Mistral's " ")
    return start, end


def _find_reply(full: str, text: str, end_of_turn: str, anchor: int) -> int | None:
    """First place from the anchor where `text` stands followed by `end_of_turn`, with no end-of-turn between."""
    pos = anchor
    while True:
        at = full.find(text, pos)
        if at < 0 or end_of_turn in full[anchor:at]:
            return None
        if full.startswith(end_of_turn, at + len(text)):
            return at
        pos = at + 1


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search on C-level slice compares: long texts stay fast)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _encode_with_offsets(tokenizer, text: str, where: str | None) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        out = tokenizer(text, add_special_tokens=_add_special_tokens(tokenizer, text), return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise ToolkitError(f"assistant-only loss needs a fast tokenizer with offsets: {first_line(exc)}", where=where,
                           hint="load the model's tokenizer.json (a tokenizers-backed tokenizer)") from None
    offsets = out.get("offset_mapping")
    if offsets is None:
        raise ToolkitError("assistant-only loss needs a fast tokenizer with offsets; this one gives none",
                           where=where, hint="load the model's tokenizer.json (a tokenizers-backed tokenizer)")
    return list(out["input_ids"]), [tuple(o) for o in offsets]


def _covering_tokens(tokenizer, text: str, offsets: list[tuple[int, int]], start: int, end: int,
                     where: str | None) -> list[int]:
    """Indices of the tokens whose characters overlap [start, end); refuses a token that joins a region with
    anything but whitespace outside it."""
    tokens = [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not tokens:
        raise ToolkitError("no token covers an assistant reply (the tokenizer's offsets do not match its text)",
                           where=where, hint="load the model's tokenizer.json (a tokenizers-backed tokenizer)")
    first, last = offsets[tokens[0]][0], offsets[tokens[-1]][1]
    if text[first:start].strip() or text[end:last].strip():
        joined = text[min(first, start):max(last, end)]
        raise ToolkitError(f"the tokenizer joins an assistant reply and the template text around it into one token "
                           f"({joined[:60]!r}), so the reply cannot be masked exactly", where=where,
                           hint=TEMPLATE_HINT)
    return tokens
