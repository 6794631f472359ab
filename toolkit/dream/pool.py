"""The dream source: training examples the dream loop made from failures, as a curriculum source.

It grows rather than replaces real data: the curriculum draws it like any other source (its own
tier, cap and floor) once it holds an example. Records are de-duplicated, kept up to `pool_size`
(`retention`: the newest, or the hardest: those whose scenarios passed least), appended to
RUN/dream/examples.jsonl as they arrive, and held in the checkpoint (re-tokenized on resume).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from toolkit.data.formatting import example_from_record
from toolkit.util.rng import stable_seed
from toolkit.journal import JsonlWriter


class DreamSource:
    def __init__(self, cfg, tokenizer, max_length: int, seed: int, run_dir: Path, write: bool = True):
        self.name, self.tier, self.tags, self.weight = cfg.source, cfg.tier, ["dream"], cfg.weight
        self.pool_size, self.retention = cfg.pool_size, cfg.retention
        self.tokenizer, self.max_length, self.seed = tokenizer, max_length, seed
        self.val: list = []
        self.skipped = 0
        self.records: dict[str, dict] = {}  # key -> record, in arrival order
        self.examples: dict[str, object] = {}  # key -> tokenized Example
        self.epoch, self.order, self.position = 0, [], 0
        self.log = JsonlWriter(Path(run_dir) / "dream" / "examples.jsonl", enabled=write)

    def report(self) -> dict:
        return {"train": len(self.examples), "val": 0, "tier": self.tier, "no_target_skipped": self.skipped}

    @property
    def train(self):
        return self.examples.values()  # a view: len() is cheap, the curriculum asks every step

    def add(self, record: dict) -> bool:
        """Keep a record {"messages": [...], ...meta}; False when it duplicates one already kept."""
        key = _key(record["messages"])
        if key in self.records or not self._tokenize(key, record):
            return False
        self.records[key] = record
        self.log.write(record)
        while len(self.records) > self.pool_size:
            self._drop(self._least_wanted())
        return True

    def _tokenize(self, key: str, record: dict) -> bool:
        example = example_from_record(
            {"messages": record["messages"]}, self.tokenizer, fmt="chat", text_field="text", strip_instructions=True,
            max_length=self.max_length, source=self.name, tier=self.tier, where=f"dream:{key[:12]}")
        if example is None:
            self.skipped += 1
            return False
        self.examples[key] = example
        return True

    def _least_wanted(self) -> str:
        if self.retention == "hardest":  # drop what the model passed most often; oldest first among equals
            return max(self.records, key=lambda k: self.records[k].get("pass_rate", 0.0))
        return next(iter(self.records))

    def _drop(self, key: str) -> None:
        del self.records[key], self.examples[key]

    def next_examples(self, n: int) -> list:
        out = []
        while len(out) < n:
            if self.position >= len(self.order):  # a new epoch over what the pool holds now
                self.epoch, self.position = self.epoch + 1, 0
                self.order = sorted(self.examples)
                random.Random(stable_seed(self.seed, self.name, "epoch", self.epoch)).shuffle(self.order)
            key = self.order[self.position]
            self.position += 1
            if key in self.examples:  # dropped from the pool since the epoch began
                out.append(self.examples[key])
        return out

    def state_dict(self) -> dict:
        return {"records": list(self.records.values()), "epoch": self.epoch, "order": list(self.order),
                "position": self.position, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        kept, self.records, self.examples = self.examples, {}, {}
        for record in state["records"]:
            key = _key(record["messages"])
            if key in kept:  # a rank taking rank 0's pool after a cycle re-tokenizes only what is new
                self.records[key], self.examples[key] = record, kept[key]
            elif self._tokenize(key, record):
                self.records[key] = record
        self.epoch, self.order, self.position = state["epoch"], list(state["order"]), state["position"]
        self.skipped = state["skipped"]


def _key(messages: list[dict]) -> str:
    """Records teaching the same reply to the same conversation are one record."""
    text = json.dumps([[m["role"], " ".join(m["content"].split()).lower()] for m in messages])
    return hashlib.sha256(text.encode()).hexdigest()
