"""The one user-facing error type.

A `ToolkitError` is a user mistake: the CLI prints it as one line (where, what, hint) and exits
with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib

EXIT_USER_ERROR = 2


class ToolkitError(Exception):
    """One-line user error: `where: message (hint)`. `where` is a file, file:line or file:key.path."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str, where: str | None = None, hint: str | None = None, key: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        self.key = key  # a recipe key path ("lora.targets"); the CLI turns it into file:line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = " ".join(p for p in (self.where, self.key) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())  # never more than one line


def did_you_mean(word: str, choices) -> str | None:
    """A hint naming the closest valid choice, or None."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
