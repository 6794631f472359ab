"""Data sources and how their examples become batches (toolkit/data)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from toolkit.config.section import Section


class SourceConfig(Section):
    name: str
    path: str | None = None  # JSONL, JSON, parquet, CSV or text file, or a directory of such shards
    dataset: str | None = None  # a Hugging Face datasets hub id
    builtin: str | None = None  # a corpus gathered at run time (see toolkit.data.corpus)
    split: str = "train"
    format: Literal["auto", "chat", "prompt_response", "text"] = "auto"
    text_field: str = "text"
    tier: int | None = Field(None, ge=1, le=3)
    tags: list[str] = []
    weight: float = Field(1.0, gt=0)
    strip_instructions: bool = False  # drop system prompt/constitution from the training context
    # which assistant turns carry loss; "last" for multi-turn data whose earlier assistant turns are
    # counter-examples (e.g. tier-3 directive data where the user declines an earlier suggestion)
    train_on: Literal["all", "last"] = "all"
    on_bad_line: Literal["error", "skip"] = "error"
    max_examples: int | None = Field(None, ge=1)
    # read the source as a stream (a hub dataset or a directory of shards larger than the disk cache
    # should hold): tokenized as it is drawn, in file order, resumed exactly from its position
    streaming: bool = False

    @model_validator(mode="after")
    def _one_origin(self):
        given = [k for k in ("path", "dataset", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"source '{self.name}' needs exactly one of path, dataset, builtin")
        if self.streaming and self.builtin:
            raise ValueError(f"source '{self.name}': a builtin corpus cannot be streamed (it is small; "
                             "remove streaming: true)")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = []
    max_length: int = Field(512, ge=8)
    # auto: pack where the model keeps packed examples apart exactly (checked at start), else bucket
    # pack: several examples per row, sequence boundaries honoured by attention, conv1d and GDN recurrence
    # bucket: examples of similar length share a micro-batch, right-padded
    batching: Literal["auto", "bucket", "pad", "pack"] = "auto"
    # a text record longer than max_length: cut into max_length windows (every token trained) or, when
    # false, handled by too_long like a chat example. Default: windows for pretrain, too_long for finetune
    text_windows: bool | None = None
    # an example longer than max_length: keep its start, keep its end, drop it, or stop with an error
    too_long: Literal["truncate_right", "truncate_left", "drop", "error"] = "truncate_right"
    # tokenized sources are cached here (Arrow, memory-mapped), keyed by content, tokenizer and options;
    # default $TOOLKIT_CACHE or ~/.cache/toolkit/data
    cache_dir: str | None = None
    num_proc: int | None = Field(None, ge=1)  # tokenizer processes for a first build; default: the CPUs
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    val_max_examples: int = Field(64, ge=1)
    # draw examples of similar length together (TRL's group_by_length): each source sorts every window of this
    # many examples of its shuffled epoch by length, longest first and shortest first in turn, so a step's batch
    # pads little; 0 (or 1): off. TRL's window is 50 batches. A streamed source (read in order) refuses it
    group_by_length: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self
