"""Reading a recipe's YAML: the `extends:` chain (parents first, deep-merged), `--set a.b=value` overrides,
seed 000's flat key spellings, and the file:line of every key, so a validation error names where it was
written. Knows no section: the schema (toolkit.recipe.Recipe) is passed in where one is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag, ValidationError

from toolkit.config.section import KeyOfAnotherKind
from toolkit.errors import ToolkitError, did_you_mean, first_line

# seed 000's flat config keys, at the top level or in `curriculum:`; renamed per file and per --set,
# so a later layer overrides either spelling
SEED_ALIASES = {"curriculum_warmup_steps": "warmup_steps", "curriculum_warmup_sources": "warmup_sources"}


def _canonical_keys(data: dict, locations: dict) -> None:
    for alias, name in SEED_ALIASES.items():
        for path in ((alias,), ("curriculum", alias)):
            parent = data if len(path) == 1 else data.get("curriculum")
            if not isinstance(parent, dict) or alias not in parent:
                continue
            section = data.setdefault("curriculum", {})
            if not isinstance(section, dict):
                continue  # pydantic reports the malformed section
            section[name] = parent.pop(alias)
            for key in [k for k in locations if k[:len(path)] == path]:
                locations[("curriculum", name) + key[len(path):]] = locations.pop(key)


def _canonical_override(keys: list) -> list:
    if keys and keys[0] in SEED_ALIASES:
        return ["curriculum", SEED_ALIASES[keys[0]], *keys[1:]]
    if len(keys) > 1 and keys[0] == "curriculum" and keys[1] in SEED_ALIASES:
        return ["curriculum", SEED_ALIASES[keys[1]], *keys[2:]]
    return keys


def load_with_extends(path: Path, seen: tuple) -> tuple[dict, dict]:
    if not path.is_file():
        raise ToolkitError("recipe file not found", where=str(path))
    if path.resolve() in seen:
        raise ToolkitError("`extends` forms a cycle", where=f"{path}:extends")
    data, locations = _read_yaml(path)
    _canonical_keys(data, locations)
    parent = data.get("extends")
    if parent is None:
        return data, locations
    if not isinstance(parent, str):
        raise ToolkitError("`extends` must be a file path", where=locations.get(("extends",), str(path)))
    parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    base, base_locations = load_with_extends(parent_path, seen + (path.resolve(),))
    base.pop("extends", None)
    return _deep_merge(base, data), {**base_locations, **locations}


def _read_yaml(path: Path) -> tuple[dict, dict]:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ToolkitError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ToolkitError("a recipe must be a mapping of sections", where=str(path))
    locations: dict[tuple, str] = {}
    _index_lines(node, (), path, locations)
    return data, locations


def _index_lines(node, prefix: tuple, path: Path, out: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            out[key] = f"{path}:{key_node.start_mark.line + 1}"
            _index_lines(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = f"{path}:{item.start_mark.line + 1}"
            _index_lines(item, prefix + (i,), path, out)


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(data: dict, locations: dict, item: str) -> None:
    if "=" not in item:
        raise ToolkitError(f"--set expects key.path=value, got '{item}'", where="--set")
    dotted, raw = item.split("=", 1)
    keys = _canonical_override([int(k) if k.isdigit() else k for k in dotted.strip().split(".")])
    where = f"--set {item}"
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ToolkitError(f"the value is not valid YAML: {getattr(exc, 'problem', None) or first_line(exc)}",
                           where=where, hint="quote it: --set 'key=\"text\"'") from None
    node = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ToolkitError(f"'{key}' is not an index of the {len(node)}-item list", where=where)
        elif not isinstance(node, dict) or isinstance(key, int):
            raise ToolkitError(f"'{'.'.join(map(str, keys[:i]))}' is not a section", where=where)
        if last:
            node[key] = value
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    for stale in [k for k in locations if k[:len(keys)] == tuple(keys)]:
        del locations[stale]  # lines of the file's value that the override replaced
    locations[tuple(keys)] = where
    for n in range(1, len(keys)):  # a section the override brings into being is the override's too
        locations.setdefault(tuple(keys[:n]), where)


def locate(locations: dict, key_path: tuple, default: Path) -> str:
    """file:line of the deepest key of `key_path` that the recipe spells out."""
    for n in range(len(key_path), 0, -1):
        if key_path[:n] in locations:
            return locations[key_path[:n]]
    return str(default)


def as_toolkit_error(exc: ValidationError, locations: dict, path: Path, schema: type[BaseModel]) -> ToolkitError:
    """The first validation error as one line at the file:line of its key; unknown keys get a did-you-mean."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    raw = _drop_union_tags(loc)
    loc, _, annotation = _walk(schema, raw)
    members = tagged_members(annotation)  # the error is about a tagged union itself (its kind, its shape)
    hint = None
    if isinstance(stray := (err.get("ctx") or {}).get("error"), KeyOfAnotherKind):
        loc, hint = (*loc, stray.key), stray.hint  # the section's validator names the stray key: point at its line
    if err["type"] == "invalid_kind":  # a tagged union's tag: point at `kind` and show what was given
        given = err["input"].get("kind") if isinstance(err["input"], dict) else None
        return _error(f"kind must be one of {', '.join(repr(k) for k in members)} (got {given!r})",
                      locations, (*loc, "kind"), path, did_you_mean(str(given), list(members)))
    if members and err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return _error(f"must be a mapping with a kind ({' | '.join(members)}) and that kind's keys "
                      f"(got {err['input']!r})", locations, loc, path)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(schema, raw[:-1])
        return _error(f"unknown key '{loc[-1]}'", locations, loc, path,
                      did_you_mean(loc[-1], valid) or f"valid keys: {', '.join(valid)}")
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict | list):
        message += f" (got {err['input']!r})"
    return _error(message, locations, loc, path, hint)


def _error(message: str, locations: dict, loc: tuple, path: Path, hint: str | None = None) -> ToolkitError:
    """A ToolkitError at the file:line of `loc`; a key set by --set is named by the override itself."""
    where = locate(locations, loc, path)
    key = None if where.startswith("--set") else (".".join(str(p) for p in loc) or None)
    return ToolkitError(message, where=where, key=key, hint=hint)


def _drop_union_tags(loc: tuple) -> tuple:
    # pydantic adds the union member's type name to the location ("str", "list[str]"); users never wrote those
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"})))


def _walk(schema: type[BaseModel], loc: tuple) -> tuple[tuple, Any, Any]:
    """(`loc` without the tags pydantic adds for a tagged union's member, the section at its end or None, the
    annotation of the field it ends at or None): an error under `dream.evaluator` with `kind: judge` is at
    ("dream", "evaluator", "judge", key)."""
    model: Any = schema
    out, parts, annotation = [], iter(loc), None
    for part in parts:
        out.append(part)
        annotation = None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            model = None
            continue
        annotation = field.annotation
        members = tagged_members(field.annotation)
        model = section_type(field.annotation)
        if members:
            tag = next(parts, None)
            if tag in members:
                model = members[tag]
            elif tag is not None:
                out.append(tag)
    return tuple(out), model, annotation


def tagged_members(annotation) -> dict[str, type]:
    """{tag: section} of a tagged (discriminated) union anywhere in `annotation`, else {}."""
    found = {}
    for arg in get_args(annotation):
        if get_origin(arg) is Annotated:
            inner, *meta = get_args(arg)
            tags = [m.tag for m in meta if isinstance(m, Tag)]
            if tags:
                found[tags[0]] = inner
                continue
        found |= tagged_members(arg)
    return found


def _fields_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """Valid key names of the section at `loc` (for did-you-mean)."""
    _, model, _ = _walk(schema, loc)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def section_type(annotation) -> type | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # list[SourceConfig], X | None
        found = section_type(arg)
        if found is not None:
            return found
    return None
