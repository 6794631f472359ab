"""Data: sources, chat formatting with loss masks, and batching."""

from toolkit.data.batching import check_batching_supported, collate, micro_batches, padding_waste
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
    "padding_waste",
    "read_records",
    "source_texts",
]
