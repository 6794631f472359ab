"""Issue 14: every user mistake on the command line is one line on stderr naming the file, key or option,
with exit code 2 -- never a traceback -- and valid recipes are not refused.

The table runs the console script's own entry point (`toolkit.cli.main`) in this process; a few tests
run a real subprocess to check what a shell sees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_in_process
from toolkit.errors import ToolkitError

REPO = Path(__file__).resolve().parents[1]
LORA = REPO / "recipes" / "lora-r64.yaml"


def cli(capsys, *args) -> tuple[int, str, str]:
    return run_in_process(capsys, *args)


def run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_one_line(code: int, err: str, *needles: str, exit_code: int = 2) -> None:
    lines = err.strip().splitlines()
    assert code == exit_code, (code, err)
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 2, err
    for needle in needles:
        assert needle in err, (needle, err)


# ---------------------------------------------------------------- a small world of files


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A valid base recipe and the files the table's recipes name, in tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "probes_bad.jsonl").write_text(json.dumps({"question": "why?"}) + "\n")
    (tmp_path / "probes.jsonl").write_text(json.dumps({"prompt": "why?"}) + "\n")
    (tmp_path / "seeds.jsonl").write_text(json.dumps({"situation": "a user asks for tabs"}) + "\n")
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "seeds_dir").mkdir()
    (tmp_path / "tuned").mkdir()
    (tmp_path / "notok").mkdir()
    (tmp_path / "notok" / "config.json").write_text(json.dumps({"model_type": "qwen3_5_text"}))
    (tmp_path / "badmod.py").write_text("def judge(scenario, response)\n    return 1.0\n")
    (tmp_path / "base.yaml").write_text(
        "run: {name: t, output_dir: run}\n"
        "model: {name_or_path: tiny-hybrid}\n"
        "data:\n  sources:\n    - {name: a, path: data.jsonl}\n"
        "train: {max_steps: 10}\n"
        "monitor: {enabled: false}\n"
        "logging: {trackers: []}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


RULES = "evaluator: {kind: rules, must_include: [ok]}"

# (id, recipe text written to r.yaml or None, command line with {R} = r.yaml / base.yaml, expected in stderr)
TABLE = [
    # ---- typos in commands and options, bad option values
    ("command-typo", None, ["finetun"], ["No such command 'finetun'", "finetune"]),
    ("command-typo-validate", None, ["validat", "{R}"], ["validat"]),
    ("subcommand-typo-analyze", None, ["analyze", "head-dif"], ["head-dif"]),
    ("subcommand-typo-steer", None, ["steer", "trian"], ["trian"]),
    ("subcommand-typo-curriculum", None, ["curriculum", "explian", "{R}"], ["explian"]),
    ("option-typo-resume", None, ["finetune", "{R}", "--resum"], ["--resum"]),
    ("option-typo-set", None, ["pretrain", "{R}", "--sett", "x=1"], ["--sett"]),
    ("option-typo-global", None, ["--debugg", "validate", "{R}"], ["--debugg"]),
    ("missing-recipe-argument", None, ["finetune"], ["Missing argument"]),
    ("missing-eval-argument", None, ["eval"], ["Missing argument"]),
    ("stop-at-not-int", None, ["finetune", "{R}", "--stop-at", "abc"], ["--stop-at"]),
    ("set-without-value", None, ["validate", "{R}", "--set"], ["--set"]),
    ("explain-missing-step", None, ["curriculum", "explain", "{R}"], ["--step"]),
    ("explain-step-not-int", None, ["curriculum", "explain", "{R}", "--step", "x"], ["--step"]),
    ("explain-unknown-source", None, ["curriculum", "explain", "{R}", "--step", "1", "--source", "b"],
     ["--source", "unknown source 'b'"]),
    ("dream-cycles-zero", None, ["dream", "{R}", "--cycles", "0"], ["--cycles"]),
    ("serve-port-range", None, ["serve", "run", "--port", "70000"], ["--port"]),
    ("serve-open-host-no-token", None, ["serve", "run", "--host", "0.0.0.0"], ["--host", "token"]),
    ("journal-tail-zero", None, ["journal", "run", "--tail", "0"], ["--tail"]),
    ("journal-not-a-run", None, ["journal", "tuned"], ["tuned", "no journal.jsonl"]),
    ("head-diff-missing-tuned-option", None, ["analyze", "head-diff", "--base", "x"], ["--tuned"]),
    ("head-diff-tuned-not-found", None,
     ["analyze", "head-diff", "--base", "x", "--tuned", "nope", "--prompts", "probes.jsonl"], ["--tuned nope"]),
    ("head-diff-prompts-not-found", None,
     ["analyze", "head-diff", "--base", "x", "--tuned", "tuned", "--prompts", "missing.jsonl"], ["missing.jsonl"]),
    ("head-diff-probes-wrong-shape", None,
     ["analyze", "head-diff", "--base", "x", "--tuned", "tuned", "--prompts", "probes_bad.jsonl"],
     ["probes_bad.jsonl:1", "'prompt'"]),
    ("head-diff-base-dir-not-found", None,
     ["analyze", "head-diff", "--base", "./nope", "--tuned", "tuned", "--prompts", "probes.jsonl"], ["--base ./nope"]),
    ("head-diff-alpha-range", None,
     ["analyze", "head-diff", "--base", "x", "--tuned", "tuned", "--prompts", "probes.jsonl", "--alpha", "2"],
     ["--alpha"]),
    ("steer-probe-tuned-not-found", None,
     ["steer", "probe", "--model", "x", "--pairs", "p.jsonl", "--layers", "1", "--out", "o", "--tuned", "nope"],
     ["--tuned nope"]),
    # ---- bad --set expressions
    ("set-no-equals", None, ["validate", "{R}", "--set", "train.max_steps"], ["--set", "key.path=value"]),
    ("set-bad-yaml", None, ["validate", "{R}", "--set", "train.max_steps=[1,"], ["--set train.max_steps=[1,"]),
    ("set-bad-yaml-brace", None, ["validate", "{R}", "--set", "lora.targets={a: [}"], ["--set lora.targets={a: [}"]),
    ("set-unknown-section", None, ["validate", "{R}", "--set", "trian.x=3"], ["--set trian.x=3", "'train'"]),
    ("set-unknown-key", None, ["validate", "{R}", "--set", "train.max_step=4"], ["--set train.max_step=4",
                                                                               "'max_steps'"]),
    ("set-wrong-type", None, ["validate", "{R}", "--set", "train.max_steps=abc"], ["--set train.max_steps=abc"]),
    ("set-out-of-range", None, ["validate", "{R}", "--set", "train.max_steps=0"], ["--set train.max_steps=0"]),
    ("set-bad-index", None, ["validate", "{R}", "--set", "data.sources.5.path=x"], ["--set data.sources.5.path=x",
                                                                                   "not an index"]),
    ("set-into-a-value", None, ["validate", "{R}", "--set", "train.max_steps.x=1"], ["--set train.max_steps.x=1",
                                                                                    "not a section"]),
    ("set-bad-literal", None, ["validate", "{R}", "--set", "curriculum.sampler=ucb2"], ["--set curriculum.sampler"]),
    ("set-fp16", None, ["validate", "{R}", "--set", "train.precision=fp16"], ["--set train.precision", "bf16"]),
    ("set-tier-range", None, ["validate", "{R}", "--set", "data.sources.0.tier=7"], ["--set data.sources.0.tier=7"]),
    ("set-empty-key", None, ["validate", "{R}", "--set", "=3"], ["--set =3"]),
    ("set-dream-without-seeds", None, ["validate", "{R}", "--set", "dream.enabled=true"], ["--set dream.enabled",
                                                                                          "seeds"]),
    ("set-template-syntax", None, ["finetune", "{R}", "--set", "model.chat_template='{% for m in messages %}'"],
     ["--set model.chat_template", "Jinja"]),
    ("set-output-dir-file", None, ["finetune", "{R}", "--set", "run.output_dir=afile/run"],
     ["--set run.output_dir=afile/run", "is a file"]),
    ("set-output-dir-proc", None, ["finetune", "{R}", "--set", "run.output_dir=/proc/run"],
     ["--set run.output_dir=/proc/run", "system directory"]),
    ("set-max-steps-outside-explain", None, ["curriculum", "explain", "{R}", "--step", "99"], ["outside the run"]),
    # ---- recipe YAML errors, unknown keys, wrong types
    ("yaml-unclosed", "train: [1, 2\n", ["validate", "{R}"], ["{R}:", "not valid YAML"]),
    ("yaml-tab", "train:\n\tmax_steps: 3\n", ["validate", "{R}"], ["{R}:2", "not valid YAML"]),
    ("yaml-list-top", "- a\n- b\n", ["validate", "{R}"], ["{R}", "mapping"]),
    ("recipe-missing", None, ["validate", "nope.yaml"], ["nope.yaml", "not found"]),
    ("extends-missing", "extends: nope.yaml\n", ["validate", "{R}"], ["nope.yaml", "not found"]),
    ("extends-cycle", "extends: r.yaml\n", ["validate", "{R}"], ["extends", "cycle"]),
    ("extends-not-str", "extends: 3\n", ["validate", "{R}"], ["{R}:1", "extends"]),
    ("unknown-top-key", "extends: base.yaml\ntrian:\n  max_steps: 3\n", ["validate", "{R}"],
     ["{R}:2", "'train'"]),
    ("unknown-nested-key", "extends: base.yaml\ntrain:\n  max_step: 3\n", ["validate", "{R}"],
     ["{R}:3", "'max_steps'"]),
    ("unknown-source-key", "extends: base.yaml\ndata:\n  sources:\n    - {name: a, pth: data.jsonl}\n",
     ["validate", "{R}"], ["{R}:4", "'path'"]),
    ("wrong-type-int", "extends: base.yaml\ntrain:\n  max_steps: many\n", ["validate", "{R}"],
     ["{R}:3", "train.max_steps"]),
    ("wrong-type-section", "extends: base.yaml\ndata: [1]\n", ["validate", "{R}"], ["{R}:2", "data"]),
    ("wrong-literal-regime", "extends: base.yaml\nregime: scratch\n", ["validate", "{R}"], ["{R}:2", "regime"]),
    ("wrong-literal-schedule", "extends: base.yaml\ntrain:\n  schedule: cosin\n", ["validate", "{R}"],
     ["{R}:3", "train.schedule"]),
    ("dropout-range", "extends: base.yaml\nlora:\n  dropout: 1.5\n", ["validate", "{R}"], ["{R}:3", "lora.dropout"]),
    ("vocab-too-small", "extends: base.yaml\nmodel:\n  tiny:\n    vocab_size: 10\n", ["validate", "{R}"],
     ["{R}:4", "model.tiny.vocab_size"]),
    ("tracker-unknown", "extends: base.yaml\nlogging:\n  trackers: [neptune]\n", ["validate", "{R}"],
     ["{R}:3", "logging.trackers"]),
    ("monitor-no-probes", "extends: base.yaml\nmonitor:\n  probes: []\n", ["validate", "{R}"],
     ["{R}:3", "monitor.probes"]),
    ("source-no-origin", "data:\n  sources:\n    - {name: a}\n", ["validate", "{R}"], ["{R}:3", "exactly one of"]),
    ("source-names-repeat", "data:\n  sources:\n    - {name: a, path: data.jsonl}\n    - {name: a, path: data.jsonl}\n",
     ["validate", "{R}"], ["{R}:1", "unique"]),
    ("caps-range", "extends: base.yaml\ncurriculum:\n  caps: {a: 2}\n", ["validate", "{R}"],
     ["{R}:3", "curriculum.caps"]),
    ("caps-unknown-source", "extends: base.yaml\ncurriculum:\n  caps: {b: 0.5}\n", ["validate", "{R}"],
     ["{R}:3", "unknown source 'b'"]),
    ("phase-needs-until", "extends: base.yaml\ncurriculum:\n  phases:\n    - {name: x}\n    - {name: y}\n",
     ["validate", "{R}"], ["{R}:4", "needs `until`"]),
    ("phase-until-backwards",
     "extends: base.yaml\ncurriculum:\n  phases:\n    - {name: x, until: 5}\n    - {name: y, until: 3}\n"
     "    - {name: z}\n", ["validate", "{R}"], ["{R}:5", "ends at step 3"]),
    ("phase-fraction-range", "extends: base.yaml\ncurriculum:\n  phases:\n    - {name: x, until: 1.5}\n",
     ["validate", "{R}"], ["{R}:4", "(0, 1]"]),
    ("reward-score-without-fn", "extends: base.yaml\ncurriculum:\n  reward: score\n", ["validate", "{R}"],
     ["{R}:2", "score_fn"]),
    ("warmup-without-sources", "extends: base.yaml\ncurriculum:\n  warmup_steps: 5\n", ["validate", "{R}"],
     ["{R}:2", "warmup_sources"]),
    ("dream-enabled-without-seeds", "extends: base.yaml\ndream:\n  enabled: true\n", ["validate", "{R}"],
     ["{R}:2", "seeds"]),
    ("head-diff-without-probes", "extends: base.yaml\nanalysis:\n  head_diff: true\n", ["validate", "{R}"],
     ["{R}:2", "probes"]),
    # ---- missing files for every path-bearing key: `validate` reads the recipe alone, a run checks them all
    # before a model loads or a step runs
    ("missing-data-path", "extends: base.yaml\ndata:\n  sources:\n    - {name: a, path: missing.jsonl}\n",
     ["finetune", "{R}"], ["{R}:4", "data file not found: missing.jsonl"]),
    ("missing-dream-seeds", f"extends: base.yaml\ndream:\n  enabled: true\n  seeds: missing.jsonl\n  {RULES}\n",
     ["finetune", "{R}"], ["{R}:4", "dream.seeds", "missing.jsonl"]),
    ("dream-seeds-is-dir", f"extends: base.yaml\ndream:\n  enabled: true\n  seeds: seeds_dir\n  {RULES}\n",
     ["finetune", "{R}"], ["{R}:4", "dream.seeds", "directory"]),
    ("missing-classifier-examples",
     "extends: base.yaml\ndream:\n  enabled: true\n  seeds: seeds.jsonl\n  evaluator:\n    kind: classifier\n"
     "    examples: missing.jsonl\n", ["finetune", "{R}"], ["{R}:7", "dream.evaluator.examples"]),
    ("missing-evaluator-module",
     "extends: base.yaml\ndream:\n  enabled: true\n  seeds: seeds.jsonl\n  evaluator:\n    kind: python\n"
     "    function: nosuchmod_xyz:judge\n", ["finetune", "{R}"], ["{R}:7", "dream.evaluator.function",
                                                                  "nosuchmod_xyz"]),
    ("missing-probes-file", "extends: base.yaml\nanalysis:\n  head_diff: true\n  probes: missing.jsonl\n",
     ["finetune", "{R}"], ["{R}:4", "analysis.probes", "missing.jsonl"]),
    ("probes-wrong-shape", "extends: base.yaml\nanalysis:\n  head_diff: true\n  probes: probes_bad.jsonl\n",
     ["finetune", "{R}"], ["probes_bad.jsonl:1", "'prompt'"]),
    ("probes-bad-json", "extends: base.yaml\nanalysis:\n  head_diff: true\n  probes: bad.jsonl\n",
     ["finetune", "{R}"], ["bad.jsonl:1"]),
    ("missing-probes-before-training", "extends: base.yaml\nanalysis:\n  head_diff: true\n  probes: missing.jsonl\n",
     ["finetune", "{R}"], ["{R}:4", "analysis.probes", "missing.jsonl"]),
    ("missing-eval-prompts", "extends: base.yaml\neval:\n  prompts: missing.jsonl\n", ["finetune", "{R}"],
     ["{R}:3", "eval.prompts"]),
    ("missing-bias-patterns", "extends: base.yaml\nmonitor:\n  bias:\n    patterns: missing.yaml\n",
     ["finetune", "{R}"], ["{R}:4", "monitor.bias.patterns"]),
    ("missing-score-fn-module", "extends: base.yaml\ncurriculum:\n  reward: score\n  score_fn: nosuchmod_xyz:f\n",
     ["finetune", "{R}"], ["{R}:4", "curriculum.score_fn"]),
    ("score-fn-no-colon", "extends: base.yaml\ncurriculum:\n  reward: score\n  score_fn: justamodule\n",
     ["finetune", "{R}"], ["{R}:4", "module:function"]),
    ("evaluator-syntax-error",
     "extends: base.yaml\ndream:\n  enabled: true\n  seeds: seeds.jsonl\n  evaluator:\n    kind: python\n"
     "    function: badmod:judge\n", ["finetune", "{R}"], ["{R}:7", "badmod.py, line 1"]),
    ("cache-dir-is-file", "extends: base.yaml\ndata:\n  cache_dir: afile\n", ["finetune", "{R}"],
     ["{R}:3", "data.cache_dir"]),
    ("output-dir-is-file", "extends: base.yaml\nrun:\n  output_dir: afile\n", ["finetune", "{R}"],
     ["{R}:3", "run.output_dir", "is a file"]),
    ("output-dir-under-proc", "extends: base.yaml\nrun:\n  output_dir: /proc/self/run\n", ["pretrain", "{R}"],
     ["{R}:3", "run.output_dir", "system directory"]),
    # ---- bad model dirs and templates
    ("model-dir-missing", "extends: base.yaml\nmodel:\n  name_or_path: ./no/such/model\n", ["finetune", "{R}"],
     ["{R}:3", "model.name_or_path", "not found"]),
    ("model-dir-without-tokenizer", "extends: base.yaml\nmodel:\n  name_or_path: ./notok\n", ["finetune", "{R}"],
     ["{R}:3", "model.name_or_path", "no tokenizer files"]),
    ("template-syntax", "extends: base.yaml\nmodel:\n  chat_template: '{% if %}'\n", ["finetune", "{R}"],
     ["{R}:3", "model.chat_template"]),
    # ---- bad data rows (read before any model loads)
    ("data-row-bad-json", "extends: base.yaml\ndata:\n  sources:\n    - {name: a, path: bad.jsonl, format: chat}\n",
     ["validate", "{R}", "--show-example"], ["bad.jsonl:1"]),
]


@pytest.mark.parametrize("recipe_text, argv, expected", [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_bad_input_is_one_line_exit_2(world, capsys, recipe_text, argv, expected):
    recipe = "base.yaml"
    if recipe_text is not None:
        (world / "r.yaml").write_text(recipe_text)
        recipe = "r.yaml"
    code, _, err = cli(capsys, *(a.replace("{R}", recipe) for a in argv))
    assert_one_line(code, err, *(e.replace("{R}", recipe) for e in expected))


def test_the_table_is_large():
    assert len(TABLE) >= 60 and len({t[0] for t in TABLE}) == len(TABLE)


# ---------------------------------------------------------------- one test per measured failure


def test_usage_errors_in_a_real_shell_are_one_line_exit_2(tmp_path):
    """typer bundles its own click: its usage errors must not escape `main` as a traceback."""
    for args in (["finetun"], ["finetune", "--resum"], ["finetune"], ["finetune", "x.yaml", "--stop-at", "abc"]):
        out = run_cli(*args, cwd=tmp_path)
        assert_one_line(out.returncode, out.stderr)
        assert out.stderr.startswith("error: toolkit")


def test_set_with_broken_yaml_names_the_override(world, capsys):
    code, _, err = cli(capsys, "validate", "base.yaml", "--set", "train.max_steps=[1,")
    assert_one_line(code, err, "--set train.max_steps=[1,", "not valid YAML")


def test_python_evaluator_with_a_syntax_error_names_its_file_and_the_key(world, capsys):
    (world / "r.yaml").write_text("extends: base.yaml\ndream:\n  enabled: true\n  seeds: seeds.jsonl\n"
                                  "  evaluator: {kind: python, function: badmod:judge}\n")
    code, _, err = cli(capsys, "dream", "r.yaml")
    assert_one_line(code, err, "r.yaml:5", "dream.evaluator.function", "badmod.py, line 1")


def test_tuned_path_that_does_not_exist(world, capsys):
    code, _, err = cli(capsys, "analyze", "head-diff", "--base", "x", "--tuned", "no-run", "--prompts", "probes.jsonl")
    assert_one_line(code, err, "--tuned no-run", "not found")


def test_output_dir_a_file_unwritable_or_under_proc(world, capsys, monkeypatch):
    code, _, err = cli(capsys, "finetune", "base.yaml", "--set", "run.output_dir=afile")
    assert_one_line(code, err, "--set run.output_dir=afile", "is a file")
    code, _, err = cli(capsys, "finetune", "base.yaml", "--set", "run.output_dir=/proc/run")
    assert_one_line(code, err, "/proc/run", "system directory")
    original = Path.mkdir

    def refuse(self, *args, **kwargs):  # root ignores permission bits: refuse the way a read-only disk does
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = cli(capsys, "finetune", "base.yaml", "--set", "run.output_dir=locked")
    assert_one_line(code, err, "--set run.output_dir=locked", "cannot write", "Permission denied")


def test_ctrl_c_before_the_loop_exits_130_with_one_line(world, capsys, monkeypatch):
    import toolkit.train.loop as loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    code, _, err = cli(capsys, "finetune", "base.yaml")
    assert_one_line(code, err, "interrupted", exit_code=130)


def test_model_dir_without_tokenizer_files_blames_the_model_dir(world, capsys, tiny_model_dir):
    bare = world / "bare-model"
    bare.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name == "config.json" or f.suffix == ".safetensors":
            shutil.copy(f, bare / f.name)
    (world / "r.yaml").write_text("extends: base.yaml\nmodel:\n  name_or_path: ./bare-model\n")
    code, _, err = cli(capsys, "finetune", "r.yaml")
    assert_one_line(code, err, "r.yaml:3", "model.name_or_path", "no tokenizer files")
    assert "data.jsonl" not in err
    # past the preflight too: the loader refuses a tokenizer without a vocabulary
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    (bare / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(ToolkitError) as info:
        load_tokenizer(str(bare), ModelConfig(name_or_path=str(bare)))
    assert info.value.key == "model.name_or_path"


def test_broken_chat_template_blames_model_chat_template(world, capsys, tiny_model_dir):
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    (world / "r.yaml").write_text("extends: base.yaml\nmodel:\n  chat_template: '{% for m in messages %}{{ m }}'\n")
    code, _, err = cli(capsys, "finetune", "r.yaml")
    assert_one_line(code, err, "r.yaml:3", "model.chat_template")
    broken = "{% for m in messages %}{{ m['content'] | nosuchfilter }}{% endfor %}"
    runtime = "{{ messages[7]['content'] }}"
    for template in (broken, runtime, "{{ raise_exception('no') }}"):
        with pytest.raises(ToolkitError) as info:
            load_tokenizer(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir), chat_template=template))
        assert info.value.key == "model.chat_template" and info.value.where is None, template


def test_set_of_an_unknown_section_names_the_override(world, capsys):
    code, _, err = cli(capsys, "validate", "base.yaml", "--set", "trian.x=3")
    assert_one_line(code, err, "--set trian.x=3", "did you mean 'train'")
    assert "base.yaml" not in err


def test_head_diff_probes_of_the_wrong_shape_name_the_file_and_line(world, capsys):
    (world / "probes_bad.jsonl").write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"messages": "hi"}) + "\n")
    code, _, err = cli(capsys, "analyze", "head-diff", "--base", "x", "--tuned", "tuned", "--prompts",
                       "probes_bad.jsonl")
    assert_one_line(code, err, "probes_bad.jsonl:2", "'messages'")
    from analysis.capture import read_prompts

    with pytest.raises(ToolkitError, match=r"probes_bad\.jsonl:2"):
        read_prompts(world / "probes_bad.jsonl")


def test_missing_probes_file_stops_finetune_before_the_first_step(world, capsys):
    (world / "r.yaml").write_text("extends: base.yaml\nanalysis:\n  head_diff: true\n  probes: missing.jsonl\n")
    code, _, err = cli(capsys, "finetune", "r.yaml")
    assert_one_line(code, err, "r.yaml:4", "analysis.probes", "missing.jsonl")
    assert not (world / "run" / "journal.jsonl").exists()  # nothing trained


def test_dream_disabled_drops_caps_naming_the_dream_source(monkeypatch, capsys):
    from toolkit.curriculum.plan import CurriculumPlan
    from toolkit.recipe import load_recipe

    monkeypatch.chdir(REPO)
    code, _, err = cli(capsys, "validate", LORA, "--set", "dream.enabled=false")
    assert code == 0, err
    plan = CurriculumPlan.from_recipe(load_recipe(LORA, ["dream.enabled=false"]).recipe)
    assert "dream" not in plan.cfg.caps and "dream" not in plan.names
    assert [n["key"] for n in plan.notes] == ["curriculum.caps.dream"]
    # a cap naming a source that is neither a data source nor the dream loop's is still an error
    with pytest.raises(ToolkitError, match="unknown source 'dreem'"):
        load_recipe(LORA, ["dream.enabled=false", "curriculum.caps={dreem: 0.3}"])


@pytest.mark.parametrize("max_steps", [1, 2, 3, 4, 5])
def test_short_runs_of_a_phased_recipe_are_valid(monkeypatch, max_steps):
    """Fractional phase ends of a short run round onto each other: such a phase is empty (and journaled),
    not an error. Every step still belongs to exactly one phase, in order."""
    from toolkit.curriculum.plan import CurriculumPlan
    from toolkit.recipe import load_recipe

    monkeypatch.chdir(REPO)
    plan = CurriculumPlan.from_recipe(load_recipe(LORA, [f"train.max_steps={max_steps}"]).recipe)
    spans = [(p.start, p.end) for p in plan.phases]
    assert spans[0][0] == 0 and spans[-1][1] == max_steps
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert plan.phases[-1].end - plan.phases[-1].start >= 1
    skipped = {n["phase"] for n in plan.notes if n["note"] == "phase_empty"}
    assert skipped.isdisjoint(p.name for p in plan.phases)
    plan.validate()
    # an integer phase end that does not advance is still the user's mistake
    with pytest.raises(ToolkitError, match="ends at step"):
        load_recipe(LORA, [f"train.max_steps={max_steps}", "curriculum.phases.1.until=0"])
