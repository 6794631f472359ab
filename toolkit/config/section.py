"""The base of every recipe section, and the check that keeps keys of one interchangeable kind out of another."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KeyOfAnotherKind(ValueError):
    """A key set for a kind it does not belong to; `key` lets the error point at that key's line."""

    def __init__(self, key: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.key, self.hint = key, hint


def reject_other_kinds(section: type[BaseModel], data, kind_key: str, keys_by_kind: dict[str, tuple[str, ...]]):
    """For a flat section whose `kind_key` picks one of several interchangeable parts (the curriculum's sampler
    and reward): a key that belongs to another part is an error, never silently ignored (`window` with exp3).
    A key at its default (as a resolved recipe writes every key) or null counts as not set."""
    fields = section.model_fields
    kind = data.get(kind_key, fields[kind_key].default) if isinstance(data, dict) else None
    if isinstance(kind, str):  # else the field's own validation reports a kind that is not a name
        _reject(data, kind_key, kind, keys_by_kind, fields)
    return data


def reject_other_members(data, kind_key: str, members: dict[str, type[BaseModel]], default_kind: str):
    """The same for a discriminated union of sections (`members`: kind -> section): a key that only other kinds
    have (`must_match` under `kind: judge`) names the kinds it belongs to, where pydantic would only say
    "extra inputs are not permitted". Other kinds' keys left null or at their default (a recipe resolved before
    the kinds were split writes them all) are dropped."""
    kind = data.get(kind_key, default_kind) if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in members:
        return data  # not a mapping, or an unknown kind: the union's own error says so
    keys_by_kind = {name: tuple(member.model_fields) for name, member in members.items()}
    fields = {k: f for member in members.values() for k, f in member.model_fields.items()}
    _reject(data, kind_key, kind, keys_by_kind, fields)
    return {k: v for k, v in data.items() if k in keys_by_kind[kind] or k not in fields}


def _reject(data, kind_key: str, kind, keys_by_kind: dict[str, tuple[str, ...]], fields: dict):
    """Raise KeyOfAnotherKind for the first key of `data` set (not null, not at its default) that only kinds
    other than `kind` have."""
    own = keys_by_kind.get(kind, ())
    for key, value in data.items():
        owners = [other for other, keys in keys_by_kind.items() if other != kind and key in keys and key not in own
                  and key != kind_key]
        if owners and value is not None and value != fields[key].get_default(call_default_factory=True):
            kinds = " or ".join(f"'{o}'" for o in owners)
            raise KeyOfAnotherKind(key, f"'{key}' belongs to {kind_key} {kinds}, not '{kind}'",
                                   hint=f"remove {key}, or set it to null, for {kind_key} '{kind}'")
