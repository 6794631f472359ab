"""Running the `toolkit` CLI inside the test process, through the console script's own entry point."""

from __future__ import annotations

from toolkit.cli import _state
from toolkit.cli import main as cli_main


def run_in_process(capsys, *args) -> tuple[int, str, str]:
    """`toolkit ARGS` in this process: (exit code, stdout, stderr). --debug from an earlier call is reset."""
    _state["debug"] = False
    capsys.readouterr()
    try:
        cli_main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
