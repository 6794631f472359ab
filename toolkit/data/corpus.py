"""Builtin corpora: real text this machine already has, gathered at run time (never copied into the repo).

A recipe names one with `builtin:` in a source; `load_builtin(name)` returns records shaped like JSONL
rows: `{"text": ...}` for plain text, `{"messages": [...]}` for chat. Order and content are
deterministic for a given Python and package version.

They differ in shape on purpose, so a curriculum can move from one kind of source to another:
conversation (chatterbot), prose (python-docs, python-topics), reference entries (python-dictionary)
and technical markdown (package-docs).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import re
import warnings
from pathlib import Path

from toolkit.errors import ToolkitError, did_you_mean

BUILTIN_CORPORA = {
    "python-docs": "paragraphs of the Python standard library's docstrings (text)",
    "chatterbot": "English dialogues of the chatterbot-corpus package (chat)",
    "chatterbot-text": "the same dialogues as plain text, one line per turn (text)",
    "python-topics": "prose paragraphs of the Python language reference topics in pydoc_data (text)",
    "python-dictionary": "'> define NAME' / '< NAME: summary' entries for builtins and stdlib names (text)",
    "package-docs": "markdown paragraphs of the toolkit's dependencies' README descriptions (text)",
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

# Always installed with the toolkit (pyproject dependencies), so package-docs needs no extra install.
# A fixed list, not whatever the environment holds, so the corpus is the same on every machine.
DOC_DISTRIBUTIONS = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors",
                     "pydantic", "PyYAML", "typer", "rich", "tensorboard", "matplotlib", "numpy")
MIN_SUMMARY = 15  # characters; a shorter first line ("Return self.") defines nothing
GENERIC_SUMMARIES = {"An enumeration."}  # what enum gives a member class with no docstring of its own


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
    texts = {"python-docs": _python_doc_paragraphs, "python-topics": _python_topic_paragraphs,
             "python-dictionary": _python_dictionary, "package-docs": _package_doc_paragraphs}
    if name in texts:
        return tuple({"text": t} for t in texts[name]())
    dialogues = _chatterbot_dialogues()
    if name == "chatterbot":
        return tuple({"messages": _as_chat(d)} for d in dialogues if len(d) >= 2)
    return tuple({"text": "\n".join(d)} for d in dialogues)


def _copy(record: dict) -> dict:
    if "messages" in record:
        return {"messages": [dict(m) for m in record["messages"]]}
    return dict(record)


def _keep_unique(paragraphs, seen: set[str], out: list[str]) -> None:
    """Append the stripped paragraphs of a readable length that `seen` does not hold yet."""
    for para in paragraphs:
        para = para.strip()
        if MIN_PARAGRAPH <= len(para) <= MAX_PARAGRAPH and para not in seen:
            seen.add(para)
            out.append(para)


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
            _keep_unique((doc or "").split("\n\n"), seen, out)
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


# ---------------------------------------------------------------- python-topics

_UNDERLINE = re.compile(r"([*=\-~^\"])\1{2,}")  # reST heading underlines: *****, =====, -----


def _python_topic_paragraphs() -> list[str]:
    from pydoc_data.topics import topics  # the language reference as text, shipped for help()

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        paragraphs = re.split(r"\n[ \t]*\n", topics[key])
        _keep_unique((p for p in paragraphs if _is_prose(p)), seen, out)
    return out


def _is_prose(paragraph: str) -> bool:
    """Not a heading (text over an underline), grammar rule (`::=`), doctest session or indented
    code/example block."""
    lines = paragraph.strip("\n").splitlines()
    if not lines or "::=" in paragraph or lines[0].startswith(">>>"):
        return False
    if any(_UNDERLINE.fullmatch(line.strip()) for line in lines):
        return False
    return not all(line[:1].isspace() for line in lines)


# ---------------------------------------------------------------- python-dictionary


def _python_dictionary() -> list[str]:
    entries: dict[str, str] = {}
    for modname in STDLIB_MODULES:
        module = _safe_import(modname)
        if module is None:
            continue
        prefix = "" if modname == "builtins" else modname + "."  # `len`, not `builtins.len`
        with warnings.catch_warnings():  # reading typing.io and the like warns
            warnings.simplefilter("ignore")
            docs = [(name, _own_doc(obj)) for name, obj in _public_functions_and_classes(module)]
        for name, doc in docs:
            summary = _summary(name, doc)  # the object's own docstring: an inherited one defines the base
            if summary and prefix + name not in entries:
                entries[prefix + name] = summary
    return [f"> define {q}\n< {q}: {entries[q]}" for q in sorted(entries)]


def _public_functions_and_classes(module):
    """The module's own public functions and classes (not re-exports, not constants: a constant's
    docstring is its type's, which would define `True` as `bool`)."""
    owners = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) not in owners:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            yield name, obj


def _summary(name: str, doc: str | None) -> str | None:
    """First sentence of the docstring's first prose paragraph; C builtins open with a signature
    (`int([x]) -> integer`), which says nothing, so that paragraph is skipped."""
    for para in (doc or "").split("\n\n"):
        first = para.strip().splitlines()[0] if para.strip() else ""
        if not first or first.startswith(name + "(") or " -> " in first:
            continue
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(para.split()), maxsplit=1)[0]
        return sentence if len(sentence) >= MIN_SUMMARY and sentence not in GENERIC_SUMMARIES else None
    return None


# ---------------------------------------------------------------- package-docs

_MARKUP = ("<", "![", "[![")  # raw HTML, images and badges: markup with no text to learn from


def _package_doc_paragraphs() -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for dist in DOC_DISTRIBUTIONS:
        paragraphs = _markdown_split(_description(dist))
        _keep_unique((p for p in paragraphs if not p.lstrip().startswith(_MARKUP)), seen, out)
    return out


def _description(dist: str) -> str:
    try:
        metadata = importlib.metadata.distribution(dist).metadata
    except importlib.metadata.PackageNotFoundError:
        return ""
    return metadata["Description"] or metadata.get_payload() or ""  # header, or the body since 2.1


def _markdown_split(text: str) -> list[str]:
    """Paragraphs on blank lines, except inside a ``` fence: a code block stays one paragraph."""
    paragraphs: list[str] = []
    current: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if line.strip() or fenced:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


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
            if not isinstance(conversation, list):  # a malformed entry (a bare string): not a dialogue
                continue
            turns = tuple(str(t).strip() for t in conversation if t is not None and str(t).strip())
            if turns and turns not in seen:
                seen.add(turns)
                out.append(turns)
    return out


def _as_chat(turns: tuple[str, ...]) -> list[dict]:
    if len(turns) % 2:  # a closing user line with no answer: drop it so the chat ends on the assistant
        turns = turns[:-1]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
