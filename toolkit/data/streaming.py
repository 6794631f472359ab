"""A source read as a stream (`streaming: true`): a hub dataset or a directory of shards too large to cache.

Records come from a `datasets.IterableDataset` in file order and are tokenized as they are drawn, by the
same `tokenize_batch` as cached sources (windows, too_long, errors at their row). The curriculum sees
the same source interface (next_examples, state_dict), so caps, floors, the bandit and warmup gates work
unchanged. Resume is exact: the state holds the stream's own `state_dict()` from before the record being
handed out and how many of that record's examples were taken. No shuffle buffer (its contents cannot be
restored), so each epoch reads the stream in the same order. Validation takes the stream's first records
(val_fraction of them, at most val_max_examples); training skips them.
Memory holds one record's examples at a time; nothing grows with the stream.
"""

from __future__ import annotations

from toolkit.data.formatting import Example
from toolkit.data.tokenize import tokenize_batch
from toolkit.errors import ToolkitError, first_line

STREAM_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


class StreamingSource:
    def __init__(self, cfg, index: int, opts, tokenizer, data_cfg, seed: int):
        self.name, self.tier, self.tags, self.weight = cfg.name, cfg.tier, list(cfg.tags), cfg.weight
        self.cfg, self.index, self.opts, self.tokenizer, self.seed = cfg, index, opts, tokenizer, seed
        self.where = f"dataset:{cfg.dataset}" if cfg.dataset else str(cfg.path)
        self.stats = {"streaming": True, "records": 0, "examples": 0}
        self.val, self.val_records = self._validation(data_cfg)
        self.epoch, self._taken = 0, 0
        self._epoch_records = self._epoch_examples = 0  # a stream that yields nothing must not spin
        self._open(None)

    # ---- the stream
    def _open(self, state: dict | None) -> None:
        self._ds = open_stream(self.cfg, self.index)
        if self.val_records:
            self._ds = self._ds.skip(self.val_records)
        if state is not None:
            self._ds.load_state_dict(state)
        self._it = iter(self._ds)
        self._pending: list[Example] = []
        self._record_state = self._ds.state_dict()

    def _examples(self, row: dict, n: int) -> list[Example]:
        out = tokenize_batch({k: [v] for k, v in row.items()}, [n], tokenizer=self.tokenizer, opts=self.opts,
                             where_prefix=self.where)
        if any(out["error"]):
            k = next(i for i, e in enumerate(out["error"]) if e)
            raise ToolkitError(out["error"][k], where=out["where"][k], hint=out["hint"][k])
        return [Example(input_ids=ids, labels=list(ids) if labels is None else labels, source=self.name,
                        tier=self.tier) for ids, labels in zip(out["input_ids"], out["labels"]) if ids]

    def _validation(self, data_cfg) -> tuple[list[Example], int]:
        from toolkit.data.sources import val_count

        if data_cfg.val_fraction <= 0:
            return [], 0
        head = []  # up to twice the cap: enough to tell how many records a small stream can spare
        for n, row in zip(range(2 * data_cfg.val_max_examples), open_stream(self.cfg, self.index)):
            head.append(row)
        k = data_cfg.val_max_examples if len(head) == 2 * data_cfg.val_max_examples else val_count(len(head), data_cfg)
        val = [ex for n, row in enumerate(head[:k]) for ex in self._examples(row, n)]
        return val[: data_cfg.val_max_examples], k

    # ---- the source interface
    def has_examples(self) -> bool:
        return True

    def next_examples(self, n: int) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            if not self._pending:
                self._record_state = self._ds.state_dict()  # before the record: resume re-reads it
                try:
                    row = next(self._it)
                except StopIteration:
                    if not self._epoch_examples:
                        raise ToolkitError(f"source '{self.name}' streamed no usable training examples",
                                           key=f"data.sources.{self.index}") from None
                    self.epoch, self._epoch_records, self._epoch_examples = self.epoch + 1, 0, 0
                    self._open(None)
                    continue
                self._pending = self._examples(row, self.val_records + self._epoch_records)
                self._taken = 0
                self._epoch_records += 1
                self.stats["records"] += 1
            take = self._pending[: n - len(out)]
            self._pending = self._pending[len(take):]
            self._taken += len(take)
            self._epoch_examples += len(take)
            self.stats["examples"] += len(take)
            out.extend(take)
        return out

    def report(self) -> dict:
        return {"train": "streamed", "val": len(self.val), "tier": self.tier, **self.stats}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "stream": self._record_state, "taken": self._taken, "stats": dict(self.stats),
                "epoch_records": self._epoch_records, "epoch_examples": self._epoch_examples}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.stats = int(state["epoch"]), dict(state["stats"])
        self._epoch_records, self._epoch_examples = int(state["epoch_records"]), int(state["epoch_examples"])
        self._open(state["stream"])
        self._taken = int(state["taken"])
        if self._taken:  # the record being handed out at the checkpoint, less what was taken of it
            row = next(self._it)
            self._pending = self._examples(row, self.val_records + self._epoch_records - 1)[self._taken:]

    def __repr__(self):
        return f"StreamingSource({self.name!r}, epoch={self.epoch})"


def open_stream(cfg, index: int):
    """A `datasets.IterableDataset` over a hub dataset or a file / directory of shards."""
    import datasets

    try:
        if cfg.dataset:
            return datasets.load_dataset(cfg.dataset, split=cfg.split, streaming=True)
        from toolkit.data.cache import source_files

        files = source_files(cfg, index)
        builder = STREAM_BUILDERS[files[0].suffix.lower()]
        extra = {"sample_by": "paragraph"} if builder == "text" else {}  # one record per paragraph, as cached
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True, **extra)
    except ToolkitError:
        raise
    except Exception as exc:
        origin = cfg.dataset or cfg.path
        raise ToolkitError(f"cannot stream '{origin}': {first_line(exc)}",
                           key=f"data.sources.{index}.{'dataset' if cfg.dataset else 'path'}") from None
    return ds.take(cfg.max_examples) if cfg.max_examples else ds
