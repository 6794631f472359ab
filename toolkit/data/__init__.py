"""Data: sources, chat formatting with loss masks, and batching."""

from toolkit.data.batching import (
    check_batching_supported,
    collate,
    micro_batches,
    packing_check,
    padding_waste,
    resolve_batching,
    to_device,
)
from toolkit.data.formatting import IGNORE, Example, example_from_record
from toolkit.data.sources import Source, load_sources, read_records, source_texts

__all__ = [
    "IGNORE",
    "Example",
    "Source",
    "check_batching_supported",
    "collate",
    "example_from_record",
    "load_sources",
    "micro_batches",
    "packing_check",
    "padding_waste",
    "read_records",
    "resolve_batching",
    "source_texts",
    "to_device",
]
