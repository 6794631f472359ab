"""Before any model loads or step runs: every file, directory and module a recipe names exists and is what
it should be. Errors carry the recipe key; `toolkit.recipe.check_files` places them at the key's file:line."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import ToolkitError, first_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def check_recipe_files(r) -> None:
    """Raise a ToolkitError with the recipe key of the first file, directory or module of `r` that is wrong."""
    def need_file(value, key, what, directory_ok=False):
        if value is None:
            return
        path = Path(value).expanduser()
        if not path.exists():
            raise ToolkitError(f"{what} not found: {value}", key=key)
        if path.is_dir() and not directory_ok:
            raise ToolkitError(f"{what} is a directory, not a file: {value}", key=key)

    for i, src in enumerate(r.data.sources):
        need_file(src.path, f"data.sources.{i}.path", "data file", directory_ok=True)
    if r.dream.enabled:
        need_file(r.dream.seeds, "dream.seeds", "dream seeds file")
        ev = r.dream.evaluator
        if ev is not None and ev.kind == "classifier":
            need_file(ev.examples, "dream.evaluator.examples", "classifier examples file")
        if ev is not None and ev.kind == "python":
            _check_function(ev.function, "dream.evaluator.function")
    if r.analysis.head_diff:
        need_file(r.analysis.probes, "analysis.probes", "probe prompts file")
        check_probe_rows(r.analysis.probes)
    need_file(r.eval.prompts, "eval.prompts", "eval prompts file")
    need_file(r.monitor.bias.patterns, "monitor.bias.patterns", "bias patterns file")
    if r.curriculum.reward == "score":
        _check_function(r.curriculum.score_fn, "curriculum.score_fn")
    if r.data.cache_dir is not None and Path(r.data.cache_dir).expanduser().is_file():
        raise ToolkitError(f"data.cache_dir is a file, not a directory: {r.data.cache_dir}", key="data.cache_dir")
    check_output_dir(r.output_dir, create=False)
    _check_model_dir(r.model)
    if r.model.chat_template:
        _check_template_syntax(r.model.chat_template)


def probe_row_problem(row) -> str | None:
    """Why a probe prompt row (head-diff, analysis.probes) has the wrong shape, or None."""
    if not isinstance(row, dict):
        return f"a probe row must be a JSON object, not {type(row).__name__}"
    if isinstance(row.get("messages"), list) and row["messages"] and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in row["messages"]):
        return None
    if isinstance(row.get("prompt"), str) or isinstance(row.get("text"), str):
        return None
    return (f"a probe row needs 'prompt' or 'text' (a string) or 'messages' (a list of {{role, content}}); "
            f"it has {sorted(row) or 'no keys'}")


def check_probe_rows(path: str | Path) -> None:
    """Every row of a probe prompts JSONL has a usable shape; the error names file:line."""
    from toolkit.util.jsonl import jsonl_rows

    count = 0
    for where, row, problem in jsonl_rows(Path(path)):
        problem = problem or probe_row_problem(row)
        if problem:
            raise ToolkitError(problem, where=where)
        count += 1
    if not count:
        raise ToolkitError("the probe prompts file has no rows", where=str(path))


def check_output_dir(path: Path, create: bool) -> None:
    """run.output_dir must be a directory we can write (created when `create`)."""
    key, resolved = "run.output_dir", Path(os.path.abspath(path))
    if any(resolved == Path(d) or Path(d) in resolved.parents for d in SYSTEM_DIRS):
        raise ToolkitError(f"{path} is under a system directory", key=key, hint="choose a directory of your own")
    for parent in (resolved, *resolved.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ToolkitError(f"{parent} is a file, not a directory", key=key, hint="choose another run.output_dir")
            break
    if not create:
        return
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        probe = resolved / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ToolkitError(f"cannot write to {path}: {exc.strerror or first_line(exc)}", key=key,
                           hint="choose a directory you can write") from None


def _check_model_dir(model) -> None:
    path = model.name_or_path
    if path == "tiny-hybrid":
        return
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1  # hub ids are owner/name
    local = Path(path).expanduser()
    if looks_local and not local.is_dir():
        raise ToolkitError(f"model directory not found: {path}", key="model.name_or_path",
                           hint="a local directory, a hub id such as Qwen/Qwen3.5-27B, or tiny-hybrid")
    if local.is_dir() and (local / "config.json").is_file() \
            and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ToolkitError(f"model directory {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)",
                           key="model.name_or_path", hint="copy the tokenizer files next to config.json")


def _check_template_syntax(template: str) -> None:
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except TemplateSyntaxError as exc:
        raise ToolkitError(f"not a valid Jinja template: {first_line(exc)} (template line {exc.lineno})",
                           key="model.chat_template") from None


def _check_function(spec: str | None, key: str) -> None:
    if spec is None:
        return
    from toolkit.util.imports import load_function

    load_function(spec, key)
