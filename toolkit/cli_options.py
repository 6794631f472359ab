"""Options and checks the `toolkit` subcommands share (toolkit/cli.py, toolkit/cli_analysis.py)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated

import typer

from toolkit.errors import ToolkitError

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
# loading options for commands that read a run directory: its resolved recipe never decides what code runs
TrustRemoteCodeOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Let the model's own Python code run "
                                                                               "(the run's recipe is not asked).")]
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Load pickle weights (pytorch_model.bin, "
                                                                      "adapter_model.bin) when no safetensors exist.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set train.max_steps=10 (repeatable).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in run.output_dir.")]
StopAtOpt = Annotated[int | None, typer.Option("--stop-at", help="Checkpoint and stop after this step; resume later "
                                                                 "(e.g. with a changed curriculum).")]


def need_path(path: Path, option: str, what: str, shown: str | None = None) -> None:
    if not path.exists():
        raise ToolkitError(f"{what} not found", where=f"{option} {shown or path}")


def need_local_model(name: str, option: str) -> None:
    """A --base/--model that looks like a local path (not a hub id owner/name) must exist."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        need_path(Path(name).expanduser(), option, "model directory", shown=name)


def quiet_libraries() -> None:
    """Library progress bars and kernel-fallback notices would bury our own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside peft/transformers
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
