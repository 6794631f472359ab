"""Recipes: validation, extends, --set, did-you-mean, one-line errors with file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import ToolkitError
from toolkit.recipe import all_recipe_keys, load_recipe

REPO = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = ["run.output_dir", "run.seed", "train.max_steps", "train.checkpoint_every", "lora.r", "lora.alpha",
                 "lora.targets", "regime"]
SECTIONS = ["run", "model", "regime", "lora", "data", "curriculum", "train", "monitor", "dream", "analysis", "logging"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_required_keys_and_sections_exist():
    keys = all_recipe_keys()
    for key in REQUIRED_KEYS:
        assert key in keys
    for section in SECTIONS:
        assert any(k == section or k.startswith(section + ".") for k in keys), section


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    recipe = write(tmp_path / "r.yaml", "run:\n  name: x\ntrain:\n  max_step: 3\n")
    with pytest.raises(ToolkitError) as err:
        load_recipe(recipe)
    line = err.value.one_line()
    assert f"{recipe}:4" in line and "train.max_step" in line and "did you mean 'max_steps'" in line
    assert "\n" not in line


def test_extends_merges_and_child_wins(tmp_path):
    write(tmp_path / "base.yaml", "run: {name: base, seed: 7}\ntrain: {max_steps: 10, lr: 0.1}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ntrain: {lr: 0.2}\n")
    recipe = load_recipe(child).recipe
    assert (recipe.run.name, recipe.run.seed, recipe.train.max_steps, recipe.train.lr) == ("base", 7, 10, 0.2)


def test_error_in_parent_names_parent_file(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  lr: -1\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ToolkitError, match=r"base\.yaml:2 train\.lr"):
        load_recipe(child)


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ToolkitError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_set_overrides_parse_yaml_values(tmp_path):
    recipe = write(tmp_path / "r.yaml", "train: {max_steps: 10}\n")
    loaded = load_recipe(recipe, ["train.max_steps=42", "lora.targets=[q_proj, v_proj]", "regime=from_scratch"])
    assert loaded.recipe.train.max_steps == 42
    assert loaded.recipe.lora.targets == ["q_proj", "v_proj"]
    assert loaded.recipe.regime == "from_scratch"
    with pytest.raises(ToolkitError, match="--set train.max_step.*did you mean 'max_steps'"):
        load_recipe(recipe, ["train.max_step=4"])


def test_set_reaches_list_items(tmp_path):
    recipe = write(tmp_path / "r.yaml", "data:\n  sources:\n    - {name: a, path: a.jsonl}\n")
    loaded = load_recipe(recipe, ["data.sources.0.path=b.jsonl", "data.sources.0.tier=2"])
    assert (loaded.recipe.data.sources[0].path, loaded.recipe.data.sources[0].tier) == ("b.jsonl", 2)
    with pytest.raises(ToolkitError, match="not an index"):
        load_recipe(recipe, ["data.sources.3.path=c.jsonl"])
    with pytest.raises(ToolkitError, match="--set data.sources.0.tier.*less than or equal to 3"):
        load_recipe(recipe, ["data.sources.0.tier=7"])


def test_semantic_errors(tmp_path):
    recipe = write(tmp_path / "r.yaml", "train:\n  precision: fp16\n")
    with pytest.raises(ToolkitError, match="fp16 gives NaN"):
        load_recipe(recipe)
    recipe = write(tmp_path / "r2.yaml", "data:\n  sources:\n    - {name: a}\n")
    with pytest.raises(ToolkitError, match=r"r2\.yaml:3 data\.sources\.0.*exactly one of path, dataset, builtin"):
        load_recipe(recipe)
    recipe = write(tmp_path / "r3.yaml", "train: [1, 2\n")
    with pytest.raises(ToolkitError, match=r"r3\.yaml:\d+: not valid YAML"):
        load_recipe(recipe)


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    recipe = write(tmp_path / "r.yaml", "trian:\n  max_steps: 3\n")
    out = run_cli("validate", str(recipe))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "Traceback" not in out.stderr
    assert f"{recipe}:1" in out.stderr and "did you mean 'train'" in out.stderr
    debug = run_cli("--debug", "validate", str(recipe))
    assert "Traceback" in debug.stderr


def test_shipped_recipes_validate():
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        out = run_cli("validate", str(recipe.relative_to(REPO)))
        assert out.returncode == 0, (recipe, out.stderr)


def test_runtime_user_errors_are_one_line_too(tmp_path):
    out = run_cli("finetune", "recipes/demo.yaml", "--set", f"run.output_dir={tmp_path / 'run'}",
                  "--set", "model.name_or_path=/no/such/model")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: --set model.name_or_path=/no/such/model: model directory not found: /no/such/model " \
        "(a local directory, a hub id such as Qwen/Qwen3.5-27B, or tiny-hybrid)"
    out = run_cli("finetune", "recipes/demo.yaml", "--set", f"run.output_dir={tmp_path / 'run'}",
                  "--set", "model.name_or_path=tiny-hybrid", "--set", "data.sources.0.path=missing.jsonl")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "data file not found: missing.jsonl" in out.stderr


def test_evaluators_are_a_union_tagged_by_kind(tmp_path):
    from toolkit.recipe import JudgeEvaluatorConfig, RulesEvaluatorConfig

    judge = write(tmp_path / "judge.yaml", "dream:\n  evaluator:\n    kind: judge\n    model: m/j\n")
    assert isinstance(load_recipe(judge).recipe.dream.evaluator, JudgeEvaluatorConfig)
    rules = write(tmp_path / "rules.yaml", "dream:\n  evaluator:\n    must_include: [ok]\n")  # kind defaults to rules
    assert isinstance(load_recipe(rules).recipe.dream.evaluator, RulesEvaluatorConfig)
    typo = write(tmp_path / "typo.yaml", "dream:\n  evaluator:\n    kind: judge\n    model: m/j\n    modle: x\n")
    with pytest.raises(ToolkitError) as err:
        load_recipe(typo)
    assert (err.value.where, err.value.key) == (f"{typo}:5", "dream.evaluator.modle")
    assert "unknown key 'modle'" in str(err.value) and "did you mean 'model'" in str(err.value)
    # a recipe resolved before the kinds were split writes every kind's keys, the others null or at their default
    flat = write(tmp_path / "flat.yaml", "dream:\n  evaluator:\n    kind: rules\n    must_include: [ok]\n"
                 "    threshold: 0.5\n    model: null\n    max_new_tokens: 8\n    function: null\n")
    assert isinstance(load_recipe(flat).recipe.dream.evaluator, RulesEvaluatorConfig)
    for body, line, message in [("kind: jduge", 3, "kind must be one of 'rules', 'classifier', 'judge', 'python' "
                                 "(got 'jduge') (did you mean 'judge'?)"),
                                ("kind: [judge]", 3, "kind must be one of"), ("- judge", 2, "must be a mapping")]:
        other = write(tmp_path / "other.yaml", f"dream:\n  evaluator:\n    {body}\n")
        with pytest.raises(ToolkitError) as err:
            load_recipe(other)
        assert message in err.value.one_line() and err.value.where == f"{other}:{line}", err.value.one_line()
    listed = write(tmp_path / "listed.yaml", "curriculum:\n  sampler: [exp3]\n")  # not a name: no crash
    with pytest.raises(ToolkitError, match="Input should be 'ucb1'"):
        load_recipe(listed)


@pytest.mark.parametrize("section, message", [
    ("dream:\n  enabled: true\n  seeds: s.jsonl\n  evaluator:\n    kind: judge\n    model: x/y\n    must_match: [a]\n",
     "'must_match' belongs to kind 'rules', not 'judge'"),
    ("dream:\n  enabled: true\n  seeds: s.jsonl\n  evaluator:\n    must_include: [a]\n    function: m:f\n",
     "'function' belongs to kind 'python', not 'rules'"),
    ("curriculum:\n  sampler: exp3\n  window: 50\n", "'window' belongs to sampler 'ucb1', not 'exp3'"),
    ("curriculum:\n  gamma: 0.2\n", "'gamma' belongs to sampler 'exp3', not 'weighted'"),
    ("curriculum:\n  reward: neg_loss\n  score_fn: m:f\n", "'score_fn' belongs to reward 'score', not 'neg_loss'"),
    ("dream:\n  evaluator:\n    must_include: [a]\n    threshold: 0.3\n",
     "'threshold' belongs to kind 'classifier' or 'judge' or 'python', not 'rules'"),
])
def test_a_key_of_another_kind_is_an_error_not_ignored(tmp_path, section, message):
    recipe = write(tmp_path / "r.yaml", section)
    with pytest.raises(ToolkitError) as err:
        load_recipe(recipe)
    assert message in str(err.value)
    assert err.value.where == f"{recipe}:{section.count(chr(10))}"  # the stray key's own line (the last one)
