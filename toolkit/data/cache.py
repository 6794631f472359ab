"""Tokenize a source once: Arrow files in a cache, memory-mapped by every later start and process.

The cache key hashes the source's content (the file's bytes, a directory's files, a builtin corpus's
records, a hub dataset's fingerprint), the tokenizer (its vocabulary and merges, special tokens, chat
template and template arguments) and every option that decides the rows (`TokenizeOptions`). A changed
byte, tokenizer or option builds anew; the same ones map what is there. One process builds while the
others wait on a file lock, then map it (so rank 0 builds under `main_process_first`); a build writes
into a temporary directory that is renamed into place when complete, so an interrupted build leaves
nothing that a later start could mistake for a cache.

Cost: the first start reads the source once and tokenizes it in `num_proc` processes (batched fast
tokenizer calls); the cache takes about 4 bytes per token. A later start hashes the files (xxh3, GB/s)
and maps the Arrow files: its memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from toolkit.chat import template_kwargs
from toolkit.data.tokenize import JSON_COLUMN, WHERE_COLUMN, TokenizeOptions, features, tokenize_batch
from toolkit.errors import ToolkitError, first_line

CACHE_VERSION = 2  # bump when the rows a build writes change for the same inputs
MANIFEST = "manifest.json"
DATASETS_BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROWS_PER_PROCESS = 1000  # below this a source is tokenized in-process (a pool costs more than it saves)
READ_CHUNK = 1 << 20  # hashing reads a MiB at a time: memory stays flat in file size


def cache_root(configured: str | None) -> Path:
    """data.cache_dir, else $TOOLKIT_CACHE, else ~/.cache/toolkit/data."""
    if configured:
        return Path(configured)
    if os.environ.get("TOOLKIT_CACHE"):
        return Path(os.environ["TOOLKIT_CACHE"])
    return Path.home() / ".cache" / "toolkit" / "data"


def tokenized_rows(src, index: int, opts: TokenizeOptions, tokenizer, root: Path, num_proc: int | None):
    """The source's tokenized rows as a memory-mapped `datasets.Dataset` (columns: see toolkit.data.tokenize),
    built on first use."""
    import datasets
    from filelock import FileLock

    key = _hash(json.dumps({"version": CACHE_VERSION, "content": _content_hash(src, index),
                            "tokenizer": tokenizer_fingerprint(tokenizer), "options": opts.key(),
                            "origin": [src.path, src.dataset, src.builtin, src.split, src.max_examples]},
                           sort_keys=True))
    final = root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', src.name)[:60]}-{key[:20]}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if not (final / MANIFEST).is_file():
            _build(src, index, opts, tokenizer, final, key, num_proc)
        try:
            parts = _open(final)
        except Exception:  # a damaged cache (a truncated or edited file) is rebuilt, never trained on
            _build(src, index, opts, tokenizer, final, key, num_proc)
            parts = _open(final)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _open(final: Path) -> list:
    """The cache's Arrow files, memory-mapped, after checking each one's size against the manifest."""
    import datasets

    manifest = json.loads((final / MANIFEST).read_text())
    for name, size in manifest["sizes"].items():
        if (final / name).stat().st_size != size:
            raise ValueError(f"{final / name} has changed size")
    return [datasets.Dataset.from_file(str(final / f)) for f in manifest["files"]]


def _build(src, index: int, opts: TokenizeOptions, tokenizer, final: Path, key: str, num_proc: int | None) -> None:
    building = final.with_name(final.name + ".building")
    shutil.rmtree(building, ignore_errors=True)  # what an interrupted build left
    building.mkdir(parents=True)
    try:
        raw, where_prefix = raw_rows(src, index, building / "raw")
        procs = max(1, min(num_proc or os.cpu_count() or 1, len(raw) // ROWS_PER_PROCESS))
        raw.map(tokenize_batch, batched=True, batch_size=1000, with_indices=True, num_proc=procs if procs > 1 else None,
                remove_columns=raw.column_names, features=features(), new_fingerprint=key,
                fn_kwargs={"tokenizer": tokenizer, "opts": opts, "where_prefix": where_prefix},
                cache_file_name=str(building / "rows.arrow"), desc=f"tokenizing {src.name}")
        del raw
        shutil.rmtree(building / "raw")
        files = sorted(p.name for p in building.glob("rows*.arrow"))
        sizes = {f: (building / f).stat().st_size for f in files}
        (building / MANIFEST).write_text(json.dumps({"files": files, "sizes": sizes, "key": key}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(building, final)  # complete or absent: a rename is atomic
    finally:
        shutil.rmtree(building, ignore_errors=True)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in the tokenizer that decides token ids and rendered conversations."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    meta = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map,
            "template": tokenizer.chat_template, "template_kwargs": template_kwargs(tokenizer),
            "bos": tokenizer.bos_token, "eos": tokenizer.eos_token_id}
    return _hash(vocab + json.dumps(meta, sort_keys=True, default=str))


def _hash(text: str | bytes) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(text.encode() if isinstance(text, str) else text)


def _content_hash(src, index: int) -> str:
    import xxhash

    if src.builtin:
        from toolkit.data.corpus import load_builtin

        return _hash(json.dumps(_builtin(src, index, load_builtin), sort_keys=True))
    if src.dataset:
        return _hub(src, index)._fingerprint
    digest = xxhash.xxh3_128()
    for path in source_files(src, index):
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading raw rows


def source_files(src, index: int) -> list[Path]:
    """The file of a path source, or the files of a directory of shards (one suffix, sorted by name)."""
    path = Path(src.path)
    key = f"data.sources.{index}.path"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        suffixes = {p.suffix.lower() for p in files}
        if len(suffixes) != 1:
            raise ToolkitError(f"directory {path} must hold shards of one file type, found "
                               f"{sorted(suffixes) or 'no files'}", key=key)
    elif path.is_file():
        files = [path]
    else:
        raise ToolkitError(f"data file not found: {src.path}", key=key)
    suffix = files[0].suffix.lower()
    if suffix not in (".jsonl", ".txt", *DATASETS_BUILDERS):
        raise ToolkitError(f"unsupported data file type '{suffix}'", key=key,
                           hint="use .jsonl, .json, .parquet, .csv or .txt")
    return files


def raw_rows(src, index: int, scratch: Path | None):
    """(datasets.Dataset of raw rows, where-prefix for table rows). JSONL lines and text paragraphs are
    streamed into a table of (where, JSON text) rows; JSON/parquet/CSV files and hub datasets are read
    by `datasets` as tables of their columns."""
    import datasets

    if src.dataset:
        return _limit(_hub(src, index), src), f"dataset:{src.dataset}"
    if src.path:
        files = source_files(src, index)
        builder = DATASETS_BUILDERS.get(files[0].suffix.lower())
        if builder:
            try:
                table = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                              cache_dir=scratch and str(scratch))
            except Exception as exc:
                raise ToolkitError(f"cannot read {src.path}: {first_line(exc)}",
                                   key=f"data.sources.{index}.path") from None
            return _limit(table, src), str(src.path)
    cols = datasets.Features({WHERE_COLUMN: datasets.Value("string"), JSON_COLUMN: datasets.Value("string")})
    try:
        table = datasets.Dataset.from_generator(_json_table_rows, features=cols, cache_dir=str(scratch),
                                                gen_kwargs={"src": src, "index": index})
    except datasets.exceptions.DatasetGenerationError as exc:
        if isinstance(exc.__cause__, ToolkitError):
            raise exc.__cause__ from None
        raise
    return table, ""


def json_rows(src, index: int) -> Iterator[tuple[str, str]]:
    """(where, JSON text) for each record of a JSONL, text or builtin source, at most max_examples."""
    from toolkit.data.corpus import load_builtin

    if src.builtin:
        rows = ((f"builtin:{src.builtin}[{n}]", json.dumps(r)) for n, r in enumerate(_builtin(src, index, load_builtin)))
    else:
        files = source_files(src, index)
        read = _jsonl_lines if files[0].suffix.lower() == ".jsonl" else _paragraphs
        rows = (row for path in files for row in read(path, src))
    for n, row in enumerate(rows):
        if src.max_examples and n >= src.max_examples:
            return
        yield row


def _json_table_rows(src, index: int) -> Iterator[dict]:
    for where, text in json_rows(src, index):
        yield {WHERE_COLUMN: where, JSON_COLUMN: text}


def _jsonl_lines(path: Path, src) -> Iterator[tuple[str, str]]:
    """Non-blank lines as text; a line that is not UTF-8 stops the build (or is a bad line, skipped later)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{lineno}", raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if src.on_bad_line != "skip":
                    raise ToolkitError(f"not UTF-8 text (byte {exc.start + 1})", where=f"{path}:{lineno}",
                                       hint="fix the line, or set on_bad_line: skip for this source") from None
                yield f"{path}:{lineno}", ""  # not JSON: counted as a bad line


def _paragraphs(path: Path, src) -> Iterator[tuple[str, str]]:
    """One text record per blank-line-separated paragraph, read line by line; `where` is its first line."""
    para, start = [], 0
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    start = start or lineno
                    para.append(line.rstrip("\n"))
                elif para:
                    yield f"{path}:{start}", json.dumps({"text": "\n".join(para)})
                    para, start = [], 0
        except UnicodeDecodeError as exc:
            raise ToolkitError(f"not UTF-8 text (byte {exc.start + 1})", where=str(path)) from None
    if para:
        yield f"{path}:{start}", json.dumps({"text": "\n".join(para)})


def _builtin(src, index: int, load_builtin) -> list[dict]:
    try:
        records = load_builtin(src.builtin)
        return records[: src.max_examples] if src.max_examples else records
    except ToolkitError as exc:  # an unknown name: point at the recipe key
        raise ToolkitError(exc.message, where=exc.where, hint=exc.hint,
                           key=exc.key or f"data.sources.{index}.builtin") from None


def _hub(src, index: int):
    import datasets

    try:
        return datasets.load_dataset(src.dataset, split=src.split)
    except Exception as exc:
        raise ToolkitError(f"cannot load dataset '{src.dataset}' split '{src.split}': {first_line(exc)}",
                           key=f"data.sources.{index}.dataset") from None


def _limit(table, src):
    return table.select(range(min(src.max_examples, len(table)))) if src.max_examples else table
