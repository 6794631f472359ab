"""Dream evaluators: rules, classifier, judge and python each pass and fail the right responses."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from toolkit.dream.evaluators import (
    ClassifierEvaluator,
    Evaluator,
    JudgeEvaluator,
    PythonEvaluator,
    RulesEvaluator,
    Verdict,
    build_evaluator,
    parse_score,
)
from toolkit.errors import ToolkitError
from toolkit.recipe import JudgeEvaluatorConfig, ModelConfig, evaluator_config

SCENARIO = "Please indent with tabs."
PASS = "Using tabs as you asked."
FAIL = "You should use spaces instead."


# ---------------------------------------------------------------- rules


def rules(**fields):
    return build_evaluator(evaluator_config(kind="rules", **fields), run_dir=None)


def test_rules_pass_and_fail_with_reasons():
    ev = rules(must_include=["TABS"], must_match=[r"as you\s+asked"], must_not_include=["spaces"],
               must_not_match=[r"\bsuggest"])
    assert isinstance(ev, RulesEvaluator) and isinstance(ev, Evaluator)
    ok, missing, forbidden, regex = ev.evaluate([SCENARIO] * 4, [
        PASS,
        "Done, as you asked.",                       # no "tabs"
        "Tabs as you asked, not spaces.",            # forbidden phrase
        "I suggest tabs, as you asked.",             # forbidden regex
    ])
    assert ok == Verdict(1.0, True, "all 4 rules hold")
    assert (missing.passed, missing.score, missing.reason) == (False, 0.75, 'missing "TABS"')
    assert (forbidden.passed, forbidden.reason) == (False, 'contains forbidden "spaces"')
    assert (regex.passed, regex.reason) == (False, r"matched forbidden /\bsuggest/")
    nothing = ev.evaluate([SCENARIO], ["Spaces, I suggest."])[0]
    assert nothing.score == 0.0 and nothing.reason == 'missing "TABS"'  # the first failed rule, recipe order


def test_rules_must_match_reason_and_only_response_checked():
    ev = rules(must_match=[r"\d+ tabs"])
    verdict = ev.evaluate(["use 4 tabs"], ["sure"])[0]
    assert verdict == Verdict(0.0, False, r"no match for /\d+ tabs/")


@pytest.mark.parametrize("field", ["must_match", "must_not_match"])
def test_rules_bad_regex_names_the_key(field):
    with pytest.raises(ToolkitError) as err:
        rules(**{field: ["fine", "broken(["]})
    assert err.value.key == f"dream.evaluator.{field}.1"


# ---------------------------------------------------------------- classifier


def write_examples(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tab_rows(n=20):
    """n passing and n failing rows: passing responses use tabs as asked, failing ones push spaces."""
    topics = ["python", "go", "the makefile", "yaml", "rust", "c", "java", "the config", "tests", "docs"]
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        rows.append({"text": f"Using tabs as you asked for {topic} (file {i}).", "label": 1 if i % 2 else True})
        rows.append({"text": f"You should use spaces instead for {topic} (file {i}).", "label": 0 if i % 2 else False})
    return rows


def classifier(tmp_path, examples, threshold=0.5):
    cfg = evaluator_config(kind="classifier", examples=str(examples), threshold=threshold)
    return build_evaluator(cfg, tmp_path / "run")


def test_classifier_trains_scores_and_saves(tmp_path):
    examples = write_examples(tmp_path / "labels.jsonl", tab_rows())
    ev = classifier(tmp_path, examples)
    assert isinstance(ev, ClassifierEvaluator) and ev.trained
    good, bad = ev.evaluate([SCENARIO, SCENARIO], ["Sure, using tabs as you asked in the script.",
                                                    "Honestly you should use spaces instead here."])
    assert good.passed and good.score > 0.5 and re.fullmatch(r"p\(pass\)=0\.\d\d|p\(pass\)=1\.00", good.reason)
    assert not bad.passed and bad.score < 0.5
    dream = tmp_path / "run" / "dream"
    assert (dream / "evaluator.skops").is_file()
    info = json.loads((dream / "evaluator.json").read_text())
    assert info["rows"] == 40 and info["input"] == "response" and info["cv_folds"] == 5
    assert info["cv_accuracy"] > 0.9 and len(info["sha256"]) == 64


def test_classifier_reloads_then_retrains_on_new_examples(tmp_path):
    examples = write_examples(tmp_path / "labels.jsonl", tab_rows())
    first = classifier(tmp_path, examples)
    saved = tmp_path / "run" / "dream" / "evaluator.skops"
    mtime = saved.stat().st_mtime_ns
    second = classifier(tmp_path, examples)
    assert not second.trained and saved.stat().st_mtime_ns == mtime
    assert second.evaluate([SCENARIO], [PASS]) == first.evaluate([SCENARIO], [PASS])

    write_examples(examples, tab_rows(12))  # new content: the saved classifier no longer vouches for it
    third = classifier(tmp_path, examples)
    assert third.trained and json.loads((saved.parent / "evaluator.json").read_text())["rows"] == 24


def test_classifier_refuses_unexpected_types(tmp_path, monkeypatch):
    examples = write_examples(tmp_path / "labels.jsonl", tab_rows())
    classifier(tmp_path, examples)
    import skops.io

    monkeypatch.setattr(skops.io, "get_untrusted_types", lambda file: ["os.system", "sklearn.pipeline.Pipeline"])
    with pytest.raises(ToolkitError, match="os.system") as err:
        classifier(tmp_path, examples)
    assert err.value.where.endswith("evaluator.skops")


def test_classifier_with_scenarios_reads_scenario_and_response(tmp_path):
    rows = [{"scenario": f"Indent request {i}", "response": row["text"], "label": row["label"]}
            for i, row in enumerate(tab_rows(10))]
    ev = classifier(tmp_path, write_examples(tmp_path / "pairs.jsonl", rows))
    assert ev.with_scenario and ev.info["input"] == "scenario+response"
    good, bad = ev.evaluate(["Indent request 99"] * 2, ["Using tabs as you asked.", "You should use spaces instead."])
    assert good.passed and not bad.passed


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": 3, "label": 1}', '"text" must be a string'),
    ('{"text": "hi", "label": 2}', '"label" must be 0, 1'),
    ('{"text": "hi", "label": "1"}', '"label" must be 0, 1'),
    ('{"scenario": "s", "response": "r", "label": 1}', "rows mix"),
])
def test_classifier_malformed_row_names_file_and_line(tmp_path, line, message):
    examples = tmp_path / "labels.jsonl"
    rows = tab_rows(3)
    examples.write_text(json.dumps(rows[0]) + "\n\n" + line + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(ToolkitError, match=re.escape(message)) as err:
        classifier(tmp_path, examples)
    assert err.value.where == f"{examples}:3"


def test_classifier_needs_two_classes_and_a_file(tmp_path):
    one_class = write_examples(tmp_path / "one.jsonl", [{"text": "tabs", "label": 1}] * 5)
    with pytest.raises(ToolkitError, match="both 0 and 1") as err:
        classifier(tmp_path, one_class)
    assert err.value.key == "dream.evaluator.examples"
    with pytest.raises(ToolkitError, match="cannot read") as err:
        classifier(tmp_path, tmp_path / "missing.jsonl")
    assert err.value.key == "dream.evaluator.examples"


# ---------------------------------------------------------------- judge


@pytest.mark.parametrize("text, expected", [
    (" 7", 7.0),
    ("Score: 8.5 out of 10", 8.5),
    ("8/10, then 3", 8.0),
    ("\n10\n", 10.0),
    ("no number here", None),
    ("", None),
])
def test_parse_score(text, expected):
    assert parse_score(text, re.compile(JudgeEvaluatorConfig.model_fields["score_pattern"].default)) == expected


def test_parse_score_without_group_uses_whole_match():
    assert parse_score("rating=4", re.compile(r"\d")) == 4.0
    assert parse_score("rating=high", re.compile(r"rating=(\w+)")) is None


def judge_cfg(model, **fields):
    return evaluator_config(kind="judge", model=str(model), **fields)


def test_judge_verdicts_from_crafted_outputs(tiny_model_dir):
    ev = build_evaluator(judge_cfg(tiny_model_dir, threshold=0.7), run_dir=None)
    assert isinstance(ev, JudgeEvaluator)
    assert ev.verdict(" 8/10") == Verdict(0.8, True, 'judge scored 8/10: "8/10"')
    assert ev.verdict("12").score == 1.0  # over max_score is capped
    low = ev.verdict("5")
    assert low.score == 0.5 and not low.passed
    none = ev.verdict("fine work " * 20)
    assert (none.score, none.passed) == (0.0, False)
    assert none.reason.startswith('no score in judge output: "fine work') and len(none.reason) < 120


def test_judge_end_to_end_with_tiny_model(tiny_model_dir):
    ev = build_evaluator(judge_cfg(tiny_model_dir, max_new_tokens=4), run_dir=None, model_cfg=ModelConfig())
    assert not ev.model.training  # left padding is generate()'s own; line 215 checks it changes nothing
    assert ev.prompt("S", "R").endswith("User: S\nReply: R\nScore:")
    # lengths differ, so left padding is exercised; 9 prompts span two generate() batches
    scenarios = [f"Use tabs {'please ' * i}" for i in range(9)]
    verdicts = ev.evaluate(scenarios, ["Using tabs."] * 9)
    raw = ev.generate([ev.prompt(scenarios[0], "Using tabs.")])[0]
    assert len(verdicts) == 9 and all(isinstance(v, Verdict) and 0 <= v.score <= 1 for v in verdicts)
    assert " ".join(raw.split())[:40] in verdicts[0].reason
    # padding must not change what the judge says: alone or in a batch, the same greedy output
    assert verdicts[0].reason == ev.verdict(raw).reason


def test_judge_prompt_needs_both_placeholders_and_a_loadable_model(tmp_path, tiny_model_dir):
    with pytest.raises(ToolkitError, match=r"\{response\}") as err:
        build_evaluator(judge_cfg(tiny_model_dir, prompt="Rate {scenario}:"), run_dir=None)
    assert err.value.key == "dream.evaluator.prompt"
    with pytest.raises(ToolkitError) as err:
        build_evaluator(judge_cfg(tiny_model_dir, score_pattern="(unclosed"), run_dir=None)
    assert err.value.key == "dream.evaluator.score_pattern"
    with pytest.raises(ToolkitError) as err:
        build_evaluator(judge_cfg(tmp_path / "no-model"), run_dir=None)
    assert err.value.key == "dream.evaluator.model"


# ---------------------------------------------------------------- python


def score_float(scenario, response):
    return 0.9 if "tabs" in response else 0.2


def score_tuple(scenario, response):
    return (0.4, "tabs" in response, f"tuple for {scenario}")


def score_dict(scenario, response):
    return {"score": 1.0, "passed": "tabs" in response, "reason": "dict"}


def score_dict_only_score(scenario, response):
    return {"score": np.float64(0.6)}


def score_verdict(scenario, response):
    return Verdict(0.3, "tabs" in response, "verdict")


def python_ev(name, threshold=0.5):
    # this module by the name it was imported under, so load_score_fn finds it in sys.modules
    cfg = evaluator_config(kind="python", function=f"{__name__}:{name}", threshold=threshold)
    return build_evaluator(cfg, run_dir=None)


@pytest.mark.parametrize("name, good, bad", [
    ("score_float", Verdict(0.9, True, "score=0.90"), Verdict(0.2, False, "score=0.20")),
    ("score_tuple", Verdict(0.4, True, f"tuple for {SCENARIO}"), Verdict(0.4, False, f"tuple for {SCENARIO}")),
    ("score_dict", Verdict(1.0, True, "dict"), Verdict(1.0, False, "dict")),
    ("score_verdict", Verdict(0.3, True, "verdict"), Verdict(0.3, False, "verdict")),
])
def test_python_return_shapes(name, good, bad):
    ev = python_ev(name)
    assert isinstance(ev, PythonEvaluator)
    assert ev.evaluate([SCENARIO, SCENARIO], [PASS, FAIL]) == [good, bad]


def test_python_bare_score_passes_at_threshold():
    assert python_ev("score_dict_only_score", threshold=0.6).evaluate(["s"], ["r"]) == [Verdict(0.6, True, "score=0.60")]
    assert python_ev("score_float", threshold=0.95).evaluate(["s"], [PASS])[0].passed is False


def returns(value):
    return lambda scenario, response: value


@pytest.mark.parametrize("value", [
    1.5, -0.1, float("nan"), True, "0.5", None, [0.5], (0.5, True), (0.5, "yes", "r"), (0.5, True, 3),
    {"passed": True}, Verdict(2.0, True, "too high"),
])
def test_python_bad_returns_name_the_function(monkeypatch, value):
    monkeypatch.setattr(sys.modules[__name__], "bad_fn", returns(value), raising=False)
    ev = python_ev("bad_fn")
    with pytest.raises(ToolkitError, match=f"'{__name__}:bad_fn'") as err:
        ev.evaluate(["s"], ["r"])
    assert err.value.key == "dream.evaluator.function"


def test_python_function_from_a_module_on_sys_path(tmp_path, monkeypatch):
    (tmp_path / "my_scores.py").write_text("def judge(s, r):\n    return len(r) / 100\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = evaluator_config(kind="python", function="my_scores:judge", threshold=0.1)
    assert build_evaluator(cfg, run_dir=None).evaluate(["s"], ["x" * 20]) == [Verdict(0.2, True, "score=0.20")]
    with pytest.raises(ToolkitError) as err:
        build_evaluator(cfg.model_copy(update={"function": "my_scores:nope"}), run_dir=None)
    assert err.value.key == "dream.evaluator.function"
