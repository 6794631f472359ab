"""Functions a recipe names as `module:function` (score functions, python evaluators)."""

from __future__ import annotations

import importlib

from toolkit.errors import ToolkitError


def load_function(spec: str, key: str):
    """`module:function` named in the recipe at `key`, imported; a bad spec is a ToolkitError at that key."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ToolkitError(f"expected 'module:function', got '{spec}'", key=key)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, SyntaxError) as exc:  # a syntax error names its file and line
        raise ToolkitError(f"cannot import '{spec}': {exc}", key=key) from None
    if not callable(fn):
        raise ToolkitError(f"'{spec}' is not callable", key=key)
    return fn
