"""Builtin corpora: real text this machine already has, gathered at run time (never copied into the repo).

A recipe names one with `builtin:` in a source; `load_builtin(name)` returns records shaped like JSONL
rows: `{"text": ...}` for plain text, `{"messages": [...]}` for chat. Order and content are
deterministic for a given Python and package version.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from pathlib import Path

from toolkit.errors import ToolkitError, did_you_mean

BUILTIN_CORPORA = {
    "python-docs": "paragraphs of the Python standard library's docstrings (text)",
    "chatterbot": "English dialogues of the chatterbot-corpus package (chat)",
    "chatterbot-text": "the same dialogues as plain text, one line per turn (text)",
}

# Imported for their docstrings. Plain, side-effect-free modules only: nothing that opens a window or
# a browser, prints on import, is deprecated (warns), or belongs to the test suite.
STDLIB_MODULES = tuple(sorted("""
    abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections
    collections.abc colorsys concurrent.futures configparser contextlib contextvars copy csv
    dataclasses datetime decimal difflib dis email email.message enum filecmp fnmatch fractions
    ftplib functools gc getopt gettext glob graphlib gzip hashlib heapq hmac html html.parser
    http http.client http.cookies http.server importlib inspect io ipaddress itertools json keyword
    linecache locale logging logging.handlers lzma math mimetypes numbers operator os os.path
    pathlib pickle pkgutil platform pprint queue quopri random re reprlib sched secrets select
    selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 statistics string
    struct subprocess sys tarfile tempfile textwrap threading time timeit token tokenize tomllib
    trace traceback types typing unicodedata unittest urllib.parse urllib.request uuid warnings
    weakref wsgiref xml.dom.minidom xml.etree.ElementTree zipfile zlib zoneinfo
""".split()))

MIN_PARAGRAPH, MAX_PARAGRAPH = 80, 2000  # characters; shorter is a one-liner, longer is a table


def load_builtin(name: str, max_docs: int | None = None) -> list[dict]:
    """Records of the builtin corpus `name` (a fresh list; first `max_docs` records if given)."""
    if name not in BUILTIN_CORPORA:
        hint = did_you_mean(name, BUILTIN_CORPORA) or f"builtin corpora: {', '.join(BUILTIN_CORPORA)}"
        raise ToolkitError(f"unknown builtin corpus '{name}'", hint=hint)
    records = _gather(name)
    if max_docs is not None:
        records = records[:max_docs]
    return [_copy(r) for r in records]


@functools.lru_cache(maxsize=None)
def _gather(name: str) -> tuple[dict, ...]:
    if name == "python-docs":
        return tuple({"text": t} for t in _python_doc_paragraphs())
    dialogues = _chatterbot_dialogues()
    if name == "chatterbot":
        return tuple({"messages": _as_chat(d)} for d in dialogues if len(d) >= 2)
    return tuple({"text": "\n".join(d)} for d in dialogues)


def _copy(record: dict) -> dict:
    if "messages" in record:
        return {"messages": [dict(m) for m in record["messages"]]}
    return dict(record)


# ---------------------------------------------------------------- python-docs


def _python_doc_paragraphs() -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for modname in STDLIB_MODULES:
        module = _safe_import(modname)
        if module is None:
            continue
        with warnings.catch_warnings():  # reading typing.io and the like warns
            warnings.simplefilter("ignore")
            docs = list(_module_docs(module))
        for doc in docs:
            for para in (doc or "").split("\n\n"):
                para = para.strip()
                if MIN_PARAGRAPH <= len(para) <= MAX_PARAGRAPH and para not in seen:
                    seen.add(para)
                    out.append(para)
    return out


def _safe_import(modname: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(modname)
    except Exception:  # a module this Python lacks or cannot import: skip it
        return None


def _module_docs(module):
    """Docstrings of the module, then of its own public classes, functions and methods, by name."""
    yield inspect.getdoc(module)
    owners = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}  # io -> _io, json -> _json
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) not in owners:
            continue
        if inspect.isclass(obj):
            yield inspect.getdoc(obj)
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and _is_method(member):
                    yield _own_doc(member)
        elif inspect.isroutine(obj):
            yield inspect.getdoc(obj)


def _is_method(obj) -> bool:
    return inspect.isroutine(obj) or isinstance(obj, (classmethod, staticmethod, property))


def _own_doc(obj) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


# ---------------------------------------------------------------- chatterbot


def _chatterbot_dir() -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        raise ToolkitError("the chatterbot corpora need the chatterbot-corpus package",
                           hint="pip install chatterbot-corpus") from None
    return Path(chatterbot_corpus.__file__).parent / "data" / "english"


def _chatterbot_dialogues() -> list[tuple[str, ...]]:
    import yaml

    seen: set[tuple[str, ...]] = set()
    out: list[tuple[str, ...]] = []
    for path in sorted(_chatterbot_dir().glob("*.yml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        for conversation in data.get("conversations") or []:
            turns = tuple(str(t).strip() for t in conversation if t is not None and str(t).strip())
            if turns and turns not in seen:
                seen.add(turns)
                out.append(turns)
    return out


def _as_chat(turns: tuple[str, ...]) -> list[dict]:
    if len(turns) % 2:  # a closing user line with no answer: drop it so the chat ends on the assistant
        turns = turns[:-1]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
