"""Recipes: one YAML file describes a run; pydantic validates every section up front.

Each component owns its section (toolkit/config/: model, data, curriculum, train, monitor, dream and its
evaluators, analysis, serve); the Recipe composes them. Loading order (toolkit/config/loading.py): the file's
`extends:` chain (parents first, deep-merged), then `--set a.b=value` overrides, then validation. Every mistake
is a `ToolkitError` naming file:line and the key path. Relative paths in a recipe are taken from the working
directory, as in Axolotl and torchtune.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.config.analysis import AnalysisConfig, EvalConfig
from toolkit.config.checks import check_output_dir, check_probe_rows, check_recipe_files, probe_row_problem
from toolkit.config.curriculum import CurriculumConfig, PhaseConfig, RepetitionGuardConfig
from toolkit.config.data import DataConfig, SourceConfig
from toolkit.config.dream import DreamConfig, FailureConfig, TemperatureConfig
from toolkit.config.evaluators import (ClassifierEvaluatorConfig, EvaluatorConfig, JudgeEvaluatorConfig,
                                      PythonEvaluatorConfig, RulesEvaluatorConfig, evaluator_config)
from toolkit.config.loading import (apply_override, as_toolkit_error, load_with_extends, locate, section_type,
                                    tagged_members)
from toolkit.config.model import GDN_GATE_PARAMS, LoraConfig, ModelConfig, TinyHybridConfig
from toolkit.config.monitor import MonitorConfig
from toolkit.config.run import LoggingConfig, RunConfig
from toolkit.config.section import Section
from toolkit.config.serve import ServeConfig
from toolkit.config.train import TrainConfig
from toolkit.errors import ToolkitError

__all__ = [  # the sections, importable from here as before the split
    "AnalysisConfig", "ClassifierEvaluatorConfig", "CurriculumConfig", "DataConfig", "DreamConfig", "EvalConfig", "EvaluatorConfig",
    "FailureConfig", "GDN_GATE_PARAMS", "JudgeEvaluatorConfig", "LoadedRecipe", "LoggingConfig", "LoraConfig", "ModelConfig",
    "MonitorConfig", "PhaseConfig", "PythonEvaluatorConfig", "Recipe", "RepetitionGuardConfig", "RulesEvaluatorConfig", "RunConfig", "ServeConfig", "SourceConfig",
    "TemperatureConfig", "TinyHybridConfig", "TrainConfig", "all_recipe_keys", "check_files", "check_output_dir",
    "check_probe_rows", "dump_recipe", "evaluator_config", "load_recipe", "probe_row_problem",
]


class Recipe(Section):
    extends: str | None = None
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    regime: Literal["finetune", "from_scratch"] = "finetune"
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    dream: DreamConfig = DreamConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)


# ---------------------------------------------------------------- loading


class LoadedRecipe:
    """A validated recipe plus where each key came from (for errors raised after validation)."""

    def __init__(self, recipe: Recipe, path: Path, locations: dict[tuple, str], resolved: dict, overrides=()):
        self.recipe = recipe
        self.overrides = list(overrides)
        self.path = path
        self.locations = locations
        self.resolved = resolved

    def where(self, key: str) -> str:
        """file:line where the dotted `key` ("data.sources.0.path") is set, or the recipe file."""
        parts = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        return locate(self.locations, parts, self.path)

    def place(self, err: ToolkitError) -> ToolkitError:
        """Give an error raised with a recipe `key` the file:line where that key is set."""
        if err.key and not err.where:
            err.where = self.where(err.key)
            if err.where.startswith("--set"):
                err.key = None  # the override already names it
        return err

    def command_line(self, command: str) -> str:
        """The command that reruns this recipe with the same overrides (for journal hints)."""
        sets = " ".join(f"--set {shlex.quote(o)}" for o in self.overrides)
        return f"toolkit {command} {shlex.quote(str(self.path))} {sets}".strip()


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    path = Path(path)
    data, locations = load_with_extends(path, seen=())
    for item in overrides or []:
        apply_override(data, locations, item)
    data.pop("extends", None)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise as_toolkit_error(exc, locations, path, Recipe) from None
    loaded = LoadedRecipe(recipe, path, locations, recipe.model_dump(mode="json", exclude={"extends"}), overrides or ())
    from toolkit.curriculum.plan import check_curriculum  # the plan reads the recipe: import here, not at the top

    try:
        check_curriculum(recipe)
    except ToolkitError as err:
        raise loaded.place(err) from None
    return loaded


def check_files(loaded: LoadedRecipe) -> None:
    """Before any model loads or step runs: every file, directory and module the recipe names exists and
    is what it should be. Raises a ToolkitError placed at the key's file:line."""
    try:
        check_recipe_files(loaded.recipe)
    except ToolkitError as err:
        raise loaded.place(err) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude={"extends"}), sort_keys=False)


def all_recipe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Every key a recipe accepts, dotted (`train.max_steps`); `data.sources[].name` for lists."""
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = section_type(field.annotation)
        if members := tagged_members(field.annotation):  # a union by kind: every kind's keys, each once
            keys.extend(dict.fromkeys(k for member in members.values() for k in all_recipe_keys(member, f"{dotted}.")))
        elif sub is not None and not sub.model_fields:
            keys.append(dotted)  # a section later issues fill
        elif sub is not None:
            is_list = "list" in str(field.annotation)
            keys.extend(all_recipe_keys(sub, f"{dotted}[]." if is_list else f"{dotted}."))
        else:
            keys.append(dotted)
    return keys
