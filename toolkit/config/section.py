"""The base of every recipe section, and the check that keeps keys of one interchangeable kind out of another."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KeyOfAnotherKind(ValueError):
    """A key set for a kind it does not belong to; `key` lets the error point at that key's line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def reject_other_kinds(section: type[BaseModel], data, kind_key: str, keys_by_kind: dict[str, tuple[str, ...]]):
    """For a section whose `kind_key` picks one of several interchangeable parts: a key that belongs to
    another part is an error, never silently ignored (`must_match` under `kind: judge`, `window` with exp3).
    A key at its default (as a resolved recipe writes every key) or null counts as not set."""
    if not isinstance(data, dict):
        return data
    fields = section.model_fields
    kind = data.get(kind_key, fields[kind_key].default)
    for other, keys in keys_by_kind.items():
        if other == kind:
            continue
        stray = [k for k in keys if k not in keys_by_kind.get(kind, ())
                 and data.get(k) is not None and data[k] != fields[k].get_default(call_default_factory=True)]
        if stray:
            raise KeyOfAnotherKind(stray[0], f"'{stray[0]}' belongs to {kind_key} '{other}', not '{kind}'")
    return data
