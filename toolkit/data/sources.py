"""Data sources: read records (JSONL, JSON, parquet, CSV, text, hub datasets, builtin corpora), tokenize
them, split off a validation set and hand out training examples in deterministic shuffled epochs.

Every record keeps a `where` ("file.jsonl:LINE", "file.parquet[row N]", "dataset:ID[row N]",
"builtin:NAME[N]") so a bad record is reported at its place. Row numbers are 0-based, line numbers 1-based.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

from toolkit.data.formatting import Example, example_from_record, record_text
from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import DataConfig, SourceConfig

DATASETS_BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv"}


class Records(list):
    """A list of (where, record) pairs that also carries how many malformed lines were skipped."""

    bad_lines: int = 0


def read_records(src: SourceConfig, index: int) -> Records:
    """(where, record) pairs of one source, at most `src.max_examples` of them.

    A malformed JSONL line raises ToolkitError(where="file:line") unless `on_bad_line: skip`; then it
    is skipped and counted in the result's `.bad_lines`."""
    if src.builtin:
        from toolkit.data.corpus import load_builtin  # gathered at run time; imported only when used

        try:
            corpus = load_builtin(src.builtin)
        except ToolkitError as exc:  # an unknown name: point at the recipe key
            raise ToolkitError(exc.message, where=exc.where, hint=exc.hint,
                               key=exc.key or f"data.sources.{index}.builtin") from None
        rows = [(f"builtin:{src.builtin}[{n}]", r) for n, r in enumerate(corpus)]
    elif src.dataset:
        rows = _read_hub(src, index)
    else:
        path = Path(src.path)
        if not path.is_file():
            raise ToolkitError(f"data file not found: {src.path}", key=f"data.sources.{index}.path")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _read_jsonl(path, src)
        if suffix == ".txt":
            rows = _read_txt(path)
        elif suffix in DATASETS_BUILDERS:
            rows = _read_with_datasets(path, DATASETS_BUILDERS[suffix], index)
        else:
            raise ToolkitError(f"unsupported data file type '{suffix}'", key=f"data.sources.{index}.path",
                               hint="use .jsonl, .json, .parquet, .csv or .txt")
    return Records(rows[: src.max_examples] if src.max_examples else rows)


def jsonl_rows(path: Path, data: bytes | None = None) -> Iterator[tuple[str, dict | None, str | None]]:
    """(where, record, problem) for each non-blank line of a JSONL file (or of its bytes `data`):
    `problem` says why a line is not a JSON object (bad JSON, not UTF-8, another JSON type)."""
    lines = data.splitlines() if data is not None else Path(path).read_bytes().splitlines()
    for lineno, raw in enumerate(lines, start=1):  # bytes: a line that is not UTF-8 is a bad line like any other
        if not raw.strip():
            continue  # blank lines (a trailing newline, spacing) are not records
        try:
            record = json.loads(raw.decode("utf-8"))
            problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
        except UnicodeDecodeError as exc:
            record, problem = None, f"not UTF-8 text (byte {exc.start + 1})"
        except json.JSONDecodeError as exc:
            record, problem = None, f"not valid JSON: {exc.msg} (column {exc.colno})"
        yield f"{path}:{lineno}", (record if problem is None else None), problem


def _read_jsonl(path: Path, src: SourceConfig) -> Records:
    out = Records()
    for where, record, problem in jsonl_rows(path):
        if src.max_examples and len(out) >= src.max_examples:
            break
        if problem is None:
            out.append((where, record))
        elif src.on_bad_line == "skip":
            out.bad_lines += 1
        else:
            raise ToolkitError(problem, where=where, hint="fix the line, or set on_bad_line: skip for this source")
    return out


def _read_txt(path: Path) -> list[tuple[str, dict]]:
    """One record per blank-line-separated paragraph; `where` is the paragraph's first line."""
    rows, para, start = [], [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ToolkitError(f"not UTF-8 text (byte {exc.start + 1})", where=str(path)) from None
    for lineno, line in enumerate(lines + [""], start=1):
        if line.strip():
            start = start or lineno
            para.append(line)
        elif para:
            rows.append((f"{path}:{start}", {"text": "\n".join(para)}))
            para, start = [], 0
    return rows


def _read_with_datasets(path: Path, builder: str, index: int) -> list[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        raise ToolkitError(f"cannot read {path}: {first_line(exc)}", key=f"data.sources.{index}.path") from None
    return [(f"{path}[row {n}]", dict(row)) for n, row in enumerate(ds)]


def _read_hub(src: SourceConfig, index: int) -> list[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(src.dataset, split=src.split)
    except Exception as exc:
        raise ToolkitError(f"cannot load dataset '{src.dataset}' split '{src.split}': {first_line(exc)}",
                           key=f"data.sources.{index}.dataset") from None
    if src.max_examples:
        ds = ds.select(range(min(src.max_examples, len(ds))))
    return [(f"dataset:{src.dataset}[row {n}]", dict(row)) for n, row in enumerate(ds)]



def stable_seed(*parts) -> int:
    """A seed from values that is the same in every process (Python's hash() of a str is salted per process)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def rng_state(rng: random.Random) -> list:
    """A `random.Random`'s state as JSON-ready lists (components keep their RNGs in state.json)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class Source:
    """One source's examples: `train` handed out by `next_examples` in shuffled epochs, `val` kept apart.

    Counters for logs: `bad_lines` (malformed JSONL lines skipped, on_bad_line: skip) and `skipped`
    (records with no token left to learn after truncation to max_length)."""

    def __init__(self, cfg: SourceConfig, train: list[Example], val: list[Example], seed: int,
                 bad_lines: int = 0, skipped: int = 0):
        self.name, self.tier, self.tags, self.weight = cfg.name, cfg.tier, list(cfg.tags), cfg.weight
        self.train, self.val = train, val
        self.bad_lines, self.skipped = bad_lines, skipped
        self.seed = seed
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        # each epoch's order depends only on (seed, name, epoch): resuming needs just (epoch, position)
        order = list(range(len(self.train)))
        random.Random(stable_seed(self.seed, self.name, "epoch", epoch)).shuffle(order)
        return order

    def next_examples(self, n: int) -> list[Example]:
        out = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            take = self._order[self.position : self.position + n - len(out)]
            out.extend(self.train[i] for i in take)
            self.position += len(take)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_train": len(self.train)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_train", len(self.train)) != len(self.train):
            raise ToolkitError(
                f"source '{self.name}' had {state['num_train']} training examples at the checkpoint and has "
                f"{len(self.train)} now, so its data order cannot resume exactly",
                key="data.sources", hint="restore the data as it was, or start a new run")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)

    def __repr__(self):
        return f"Source({self.name!r}, train={len(self.train)}, val={len(self.val)})"


def val_count(n: int, data_cfg: DataConfig) -> int:
    """How many of a source's n examples go to validation."""
    if data_cfg.val_fraction <= 0 or n < 2:
        return 0
    # int(n * f) < n since f < 1, so at least one example stays for training
    return min(data_cfg.val_max_examples, max(1, int(n * data_cfg.val_fraction)))


def load_sources(data_cfg: DataConfig, tokenizer, seed: int) -> list[Source]:
    sources = []
    for i, cfg in enumerate(data_cfg.sources):
        records = read_records(cfg, i)
        examples, skipped = [], 0
        for where, record in records:
            ex = example_from_record(record, tokenizer, fmt=cfg.format, text_field=cfg.text_field,
                                     strip_instructions=cfg.strip_instructions, max_length=data_cfg.max_length,
                                     source=cfg.name, tier=cfg.tier, where=where, train_on=cfg.train_on)
            if ex is None:
                skipped += 1
            else:
                examples.append(ex)
        if not examples:
            why = (f"all {skipped} examples lost every trained token to truncation at max_length={data_cfg.max_length}"
                   if skipped else f"it yielded no records ({records.bad_lines} bad lines skipped)")
            raise ToolkitError(f"source '{cfg.name}' has no usable training examples: {why}", key=f"data.sources.{i}")
        # the validation split is drawn from a shuffle of its own so it never moves with the epochs
        order = list(range(len(examples)))
        random.Random(stable_seed(seed, cfg.name, "val")).shuffle(order)
        k = val_count(len(examples), data_cfg)
        train = [examples[j] for j in order[: len(order) - k]]
        val = [examples[j] for j in order[len(order) - k :]]
        sources.append(Source(cfg, train, val, seed, bad_lines=records.bad_lines, skipped=skipped))
    return sources


def source_texts(data_cfg: DataConfig) -> Iterator[str]:
    """Raw text of every record of every source, for training the tiny-hybrid tokenizer (no tokenizer yet)."""
    for i, cfg in enumerate(data_cfg.sources):
        for _, record in read_records(cfg, i):
            text = record_text(record, fmt=cfg.format, text_field=cfg.text_field)
            if text:
                yield text
