"""The run's name, output directory and seed, and where its metrics are logged."""

from __future__ import annotations

from typing import Literal

from toolkit.config.section import Section


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0


Tracker = Literal["tensorboard", "wandb", "mlflow"]


class LoggingConfig(Section):
    trackers: list[Tracker] = ["tensorboard"]
    project: str | None = None  # tracker project name; default run.name
    progress: bool = True
