"""Data sources: read records (JSONL, JSON, parquet, CSV, text, hub datasets, builtin corpora), tokenize
them, split off a validation set and hand out training examples in deterministic shuffled epochs.

Every record keeps a `where` ("file.jsonl:LINE", "file.parquet[row N]", "dataset:ID[row N]",
"builtin:NAME[N]") so a bad record is reported at its place. Row numbers are 0-based, line numbers 1-based.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from toolkit.config.data import DataConfig, SourceConfig
from toolkit.data.formatting import Example, record_text
from toolkit.errors import ToolkitError
from toolkit.util.jsonl import parse_record
from toolkit.util.rng import rng_state, set_rng_state, stable_seed  # noqa: F401 (the state pair: tests import it here)


class Records(list):
    """A list of (where, record) pairs that also carries how many malformed lines were skipped."""

    bad_lines: int = 0


def read_records(src: SourceConfig, index: int) -> Records:
    """(where, record) pairs of one source in memory, at most `src.max_examples` of them: for small reads
    (validate, analysis). Training reads sources through the tokenized cache (`load_sources`).

    A malformed JSONL line raises ToolkitError(where="file:line") unless `on_bad_line: skip`; then it
    is skipped and counted in the result's `.bad_lines`."""
    from toolkit.data.cache import DATASETS_BUILDERS, json_rows, raw_rows, source_files

    out = Records()
    if src.dataset or DATASETS_BUILDERS.get(source_files(src, index)[0].suffix.lower() if src.path else ""):
        table, prefix = raw_rows(src, index, scratch=None)
        out.extend((f"{prefix}[row {n}]", dict(row)) for n, row in enumerate(table))
        return out
    for where, text in json_rows(src, index):
        if not text:  # a line that is not UTF-8 (on_bad_line: skip)
            out.bad_lines += 1
            continue
        record, problem = parse_record(text)
        if problem is None:
            out.append((where, record))
        elif src.on_bad_line == "skip":
            out.bad_lines += 1
        else:
            raise ToolkitError(problem, where=where, hint="fix the line, or set on_bad_line: skip for this source")
    return out


class ExampleTable:
    """Examples held in a memory-mapped Arrow table (the tokenized cache): `rows` picks which of its rows
    belong here. Indexing and `take` build `Example`s on demand, so memory does not grow with the corpus."""

    def __init__(self, table, rows: np.ndarray, source: str, tier: int | None):
        self.table, self.rows, self.source, self.tier = table, rows, source, tier

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return self.take([i])[0]

    def __iter__(self):
        for start in range(0, len(self.rows), 256):
            yield from self.take(range(start, min(start + 256, len(self.rows))))

    def take(self, positions) -> list[Example]:
        picked = self.table[[int(self.rows[p]) for p in positions]]
        return [Example(input_ids=ids, labels=list(ids) if labels is None else labels, source=self.source,
                        tier=self.tier) for ids, labels in zip(picked["input_ids"], picked["labels"])]


class Source:
    """One source's examples: `train` handed out by `next_examples` in shuffled epochs, `val` kept apart.
    `stats` counts what the build did (documents, tokens, bad lines, windows, truncations, drops) for the journal."""

    def __init__(self, cfg: SourceConfig, train, val: list[Example], seed: int, stats: dict | None = None,
                 group_by_length: int = 0, train_lengths: np.ndarray | None = None):
        self.name, self.tier, self.tags, self.weight = cfg.name, cfg.tier, list(cfg.tags), cfg.weight
        self.train, self.val = train, val
        self.stats = stats or {}
        self.seed = seed
        self.group_by_length = group_by_length if group_by_length > 1 else 0  # a window of 1 changes nothing
        self._lengths = train_lengths if self.group_by_length else None  # each train example's token count
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        # each epoch's order depends only on (seed, name, epoch): resuming needs just (epoch, position)
        order = np.random.default_rng(stable_seed(self.seed, self.name, "epoch", epoch)).permutation(len(self.train))
        if self._lengths is None:
            return order
        # the windows alternate across epochs too: an epoch's last window and the next one's first meet alike
        windows_before = epoch * -(-len(order) // self.group_by_length)
        return group_by_length(order, self._lengths, self.group_by_length, descending_first=windows_before % 2 == 0)

    def next_examples(self, n: int) -> list[Example]:
        out = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            take = self._order[self.position : self.position + n - len(out)]
            out.extend(self.train.take(take))
            self.position += len(take)
        return out

    def report(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "tier": self.tier, **self.stats}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_train": len(self.train),
                "group_by_length": self.group_by_length}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_train", len(self.train)) != len(self.train):
            raise ToolkitError(
                f"source '{self.name}' had {state['num_train']} training examples at the checkpoint and has "
                f"{len(self.train)} now, so its data order cannot resume exactly",
                key="data.sources", hint="restore the data as it was, or start a new run")
        if state.get("group_by_length", 0) != self.group_by_length:  # the epoch order depends on it
            raise ToolkitError(
                f"source '{self.name}' was drawn with group_by_length {state.get('group_by_length', 0)} and the "
                f"recipe now says {self.group_by_length}, so its data order cannot resume exactly",
                key="data.group_by_length", hint="resume with the value the run started with, or start a new run")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)

    def __repr__(self):
        return f"Source({self.name!r}, train={len(self.train)}, val={len(self.val)})"


def group_by_length(order: np.ndarray, lengths: np.ndarray, window: int, descending_first: bool = True) -> np.ndarray:
    """`order` with each window of `window` positions sorted by length, ties in their shuffled order: so
    consecutive draws have similar lengths and pad little, while which examples share a window stays random
    (a window as large as the source sorts the whole epoch: then only ties keep a random order).
    The direction alternates from window to window, starting longest first (as TRL's length-grouped sampler,
    so the largest batch comes early): where two windows meet, short meets short and long meets long, so a
    batch cut across the seam pads no more than one cut inside a window."""
    out = order.copy()
    for k, start in enumerate(range(0, len(order), window)):
        chunk = order[start : start + window]
        keys = -lengths[chunk] if (k % 2 == 0) == descending_first else lengths[chunk]
        out[start : start + window] = chunk[np.argsort(keys, kind="stable")]
    return out


def val_count(n: int, data_cfg: DataConfig) -> int:
    """How many of a source's n documents go to validation."""
    if data_cfg.val_fraction <= 0 or n < 2:
        return 0
    # int(n * f) < n since f < 1, so at least one document stays for training
    return min(data_cfg.val_max_examples, max(1, int(n * data_cfg.val_fraction)))


def load_sources(data_cfg: DataConfig, tokenizer, seed: int, *, text_windows: bool = False,
                 base_dir: Path | None = None) -> list[Source]:
    """Every source of the recipe, tokenized through the cache (streamed sources: as they are drawn).
    `text_windows` is the command's default for `data.text_windows` (pretrain: on)."""
    from toolkit.data.cache import cache_root
    from toolkit.data.tokenize import TokenizeOptions

    windows = text_windows if data_cfg.text_windows is None else data_cfg.text_windows
    root = cache_root(data_cfg.cache_dir)
    sources = []
    for i, cfg in enumerate(data_cfg.sources):
        opts = TokenizeOptions.of(cfg, data_cfg, windows)
        if cfg.streaming:
            from toolkit.data.streaming import StreamingSource

            if data_cfg.group_by_length:
                raise ToolkitError(f"source '{cfg.name}' is streamed, in order, so it cannot be grouped by length",
                                   key="data.group_by_length", hint="set it to 0, or cache the source (streaming: false)")

            sources.append(StreamingSource(cfg, i, opts, tokenizer, data_cfg, seed))
        else:
            sources.append(_cached_source(cfg, i, opts, tokenizer, data_cfg, seed, root))
    return sources


def _cached_source(cfg: SourceConfig, index: int, opts, tokenizer, data_cfg: DataConfig, seed: int, root: Path):
    from toolkit.data.cache import tokenized_rows

    table = tokenized_rows(cfg, index, opts, tokenizer, root, data_cfg.num_proc)
    raise_first_error(table)
    columns = table.data  # the Arrow table: columns read without Python objects per token
    lengths = pc.fill_null(pc.list_value_length(columns.column("input_ids")), 0).to_numpy()
    rows = np.flatnonzero(lengths > 0)
    stats = build_stats(columns, lengths)
    if not len(rows):
        why = (f"every record lost its trained tokens (max_length={data_cfg.max_length}, too_long: "
               f"{data_cfg.too_long}): {stats}" if stats["documents"] else "it yielded no records")
        raise ToolkitError(f"source '{cfg.name}' has no usable training examples: {why}", key=f"data.sources.{index}")
    train, val = split_by_document(rows, columns.column("doc").to_numpy()[rows], data_cfg, seed, cfg.name)
    return Source(cfg, ExampleTable(table, train, cfg.name, cfg.tier),
                  ExampleTable(table, val, cfg.name, cfg.tier).take(range(len(val))), seed, stats,
                  group_by_length=data_cfg.group_by_length, train_lengths=lengths[train])


def raise_first_error(table) -> None:
    """Raise the first malformed record's error (a build returns them as rows, in record order)."""
    errors = table.data.column("error")
    if errors.null_count == len(errors):
        return
    first = pc.index(pc.is_valid(errors), True).as_py()
    row = table[first]
    raise ToolkitError(row["error"], where=row["where"], hint=row["hint"])


def build_stats(columns, lengths: np.ndarray) -> dict:
    """Counts for the journal: documents read, examples and tokens kept, and each note (see tokenize)."""
    from toolkit.data.tokenize import BAD_LINE, DROPPED, NO_TARGET, WINDOWED

    notes = {d["values"]: d["counts"] for d in pc.value_counts(columns.column("note")).to_pylist() if d["values"]}
    docs = columns.column("doc")
    return {"documents": len(pc.unique(docs)) - notes.get(BAD_LINE, 0), "examples": int((lengths > 0).sum()),
            "tokens": int(lengths.sum()), "bad_lines_skipped": notes.get(BAD_LINE, 0),
            "windowed_documents": notes.get(WINDOWED, 0), "no_target_skipped": notes.get(NO_TARGET, 0),
            "too_long": {k: v for k, v in notes.items() if k in ("truncate_right", "truncate_left")}
            | ({"drop": notes[DROPPED]} if DROPPED in notes else {})}


def split_by_document(rows: np.ndarray, docs: np.ndarray, data_cfg: DataConfig, seed: int, name: str):
    """(train rows, val rows): validation takes whole documents (every window of one), drawn by a shuffle
    of its own so it never moves with the epochs, and at most val_max_examples rows."""
    unique = np.unique(docs)
    shuffled = np.random.default_rng(stable_seed(seed, name, "val")).permutation(unique)
    held = np.isin(docs, shuffled[: val_count(len(unique), data_cfg)])
    return rows[~held], rows[held][: data_cfg.val_max_examples]


def source_texts(data_cfg: DataConfig) -> Iterator[str]:
    """Raw text of every record of every source, for training the tiny-hybrid tokenizer (no tokenizer yet)."""
    for i, cfg in enumerate(data_cfg.sources):
        for _, record in read_records(cfg, i):
            text = record_text(record, fmt=cfg.format, text_field=cfg.text_field)
            if text:
                yield text
