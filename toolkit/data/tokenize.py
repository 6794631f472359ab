"""Records -> training rows, a batch at a time: the one place long records are cut or truncated.

`tokenize_batch` turns a batch of records into columns (`input_ids`, `labels`, `doc`, `note`, `error`,
`where`, `hint`). It runs inside `datasets.map` (batched, in several processes) for cached sources and
on small batches for streamed ones. A record may give several rows (windows of a long text), one, or a
note-only row with no tokens (dropped, no target left, malformed line) so the build can count them;
a malformed record gives an error row that the caller raises with its `where`.

Long records (see `DataConfig.text_windows`, `DataConfig.too_long`):
- a text record, with windows on: cut into max_length windows that overlap by one token, so every
  token after the document's first is a target exactly once;
- otherwise `too_long`: truncate_right keeps the start, truncate_left the end, drop drops the
  example, error stops with the record's `where`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from toolkit.chat import IGNORE, encode_prompts, supervised_example
from toolkit.data.formatting import record_conversation
from toolkit.util.jsonl import parse_record
from toolkit.errors import ToolkitError

JSON_COLUMN = "_toolkit_json"  # a raw row holding one record as JSON text (JSONL lines, text paragraphs)
WHERE_COLUMN = "_toolkit_where"

COLUMNS = ("input_ids", "labels", "doc", "note", "error", "where", "hint")
# notes counted per source and journaled
WINDOWED, DROPPED, NO_TARGET, BAD_LINE = "windowed", "dropped", "no_target", "bad_line"


@dataclass(frozen=True)
class TokenizeOptions:
    """Everything besides the record and the tokenizer that decides its rows (part of the cache key)."""

    fmt: str
    text_field: str
    strip_instructions: bool
    train_on: str
    max_length: int
    too_long: str
    text_windows: bool
    skip_bad_lines: bool

    @classmethod
    def of(cls, src, data_cfg, text_windows: bool) -> TokenizeOptions:
        return cls(fmt=src.format, text_field=src.text_field, strip_instructions=src.strip_instructions,
                   train_on=src.train_on, max_length=data_cfg.max_length, too_long=data_cfg.too_long,
                   text_windows=text_windows, skip_bad_lines=src.on_bad_line == "skip")

    def key(self) -> dict:
        return asdict(self)


def features():
    """The Arrow schema of tokenized rows (fixed, so an all-note batch still writes)."""
    import datasets

    ids = datasets.Sequence(datasets.Value("int32"))
    text = datasets.Value("string")
    types = {"input_ids": ids, "labels": ids, "doc": datasets.Value("int64")}
    return datasets.Features({name: types.get(name, text) for name in COLUMNS})


def tokenize_batch(batch: dict, indices: list[int], *, tokenizer, opts: TokenizeOptions, where_prefix: str) -> dict:
    """datasets.map function: a batch of raw rows (columns) -> tokenized rows (see the module docstring)."""
    rows = _batch_rows(batch)
    wheres = batch.get(WHERE_COLUMN) or [f"{where_prefix}[row {i}]" for i in indices]
    out = {name: [] for name in COLUMNS}
    parsed = [_parse(row, where, opts) for row, where in zip(rows, wheres)]
    texts = [p[1] for p in parsed if p[0] == "text"]
    text_ids = iter(_text_ids(tokenizer, texts))
    for doc, (where, (kind, value)) in zip(indices, zip(wheres, parsed)):
        try:
            if kind == "error":
                raise value
            if kind == BAD_LINE:
                _add(out, doc, note=BAD_LINE)
                continue
            if kind == "text":
                ids, labels = next(text_ids), None
            else:
                ids, labels = supervised_example(tokenizer, value, train_on=opts.train_on, where=where)
            _add_example(out, doc, ids, labels, opts, where, is_text=kind == "text")
        except ToolkitError as exc:  # returned, not raised: a worker process cannot pickle it back intact
            _add(out, doc, error=exc.message, where=exc.where or where, hint=exc.hint)
    return out


def _batch_rows(batch: dict) -> list[dict | str]:
    """Each row of a batch: the JSON text of a raw JSONL/text row, or a dict of a table's columns."""
    if JSON_COLUMN in batch:
        return list(batch[JSON_COLUMN])
    columns = [c for c in batch if c != WHERE_COLUMN]
    # a table has every column on every row: a column a record lacks is null there, not part of the record
    return [{c: v for c, v in zip(columns, values) if v is not None} for values in zip(*(batch[c] for c in columns))]


def _parse(row, where: str, opts: TokenizeOptions):
    """("text", str) | ("chat", messages) | (BAD_LINE, None) | ("error", ToolkitError) for one row."""
    try:
        if isinstance(row, str):
            row, problem = parse_record(row)
            if problem and opts.skip_bad_lines:
                return BAD_LINE, None
            if problem:
                raise ToolkitError(problem, where=where, hint="fix the line, or set on_bad_line: skip for this source")
        messages = record_conversation(row, fmt=opts.fmt, text_field=opts.text_field,
                                       strip_instructions=opts.strip_instructions, where=where)
        if messages is not None:
            return "chat", messages
        text = row.get(opts.text_field)
        if not isinstance(text, str) or not text:
            raise ToolkitError(f"'{opts.text_field}' must be a non-empty string", where=where)
        return "text", text
    except ToolkitError as exc:
        return "error", exc


def _text_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of documents, each closed by EOS so the model learns where a document ends."""
    ids = encode_prompts(tokenizer, texts)
    if tokenizer.eos_token_id is not None:
        for one in ids:
            one.append(tokenizer.eos_token_id)
    return ids


def _add_example(out: dict, doc: int, ids: list[int], labels: list[int] | None, opts: TokenizeOptions,
                 where: str, is_text: bool) -> None:
    n = opts.max_length
    if len(ids) <= n:
        pieces, note = [(ids, labels)], None
    elif is_text and opts.text_windows:
        pieces, note = _windows(ids, n), WINDOWED
    elif opts.too_long == "error":
        raise ToolkitError(f"{len(ids)} tokens, more than data.max_length={n}", where=where,
                           hint="raise data.max_length, or set data.too_long: truncate_right, truncate_left or drop")
    elif opts.too_long == "drop":
        return _add(out, doc, note=DROPPED)
    elif opts.too_long == "truncate_left":
        pieces, note = [(ids[-n:], labels[-n:] if labels else None)], opts.too_long
    else:
        pieces, note = [(ids[:n], labels[:n] if labels else None)], opts.too_long
    if labels is not None and all(label == IGNORE for label in pieces[0][1][1:]):
        return _add(out, doc, note=NO_TARGET)  # labels[0] is never a target (tokens predict the next one)
    if len(pieces[0][0]) < 2:
        return _add(out, doc, note=NO_TARGET)
    for k, (piece_ids, piece_labels) in enumerate(pieces):
        _add(out, doc, input_ids=piece_ids, labels=piece_labels, note=note if k == 0 else None)


def _windows(ids: list[int], n: int) -> list[tuple[list[int], None]]:
    """max_length windows overlapping by one token: window k's first token (never a target) is window
    k-1's last (a target there), so every token but the first is trained once."""
    stride = n - 1
    return [(ids[start : start + n], None) for start in range(0, len(ids) - 1, stride)]


def _add(out: dict, doc: int, *, input_ids=(), labels=None, note=None, error=None, where=None, hint=None) -> None:
    for name, value in zip(COLUMNS, (list(input_ids), labels, doc, note, error, where, hint)):
        out[name].append(value)
