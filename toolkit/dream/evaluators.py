"""Evaluators: judge a dream scenario's response with a score in [0, 1], pass/fail and a reason.

Four interchangeable kinds behind one batched call, `evaluate(scenarios, responses) -> [Verdict]`:

- rules: phrases (case-insensitive substrings) and regular expressions that must / must not
  appear in the response; score = share of rules satisfied, passed = all satisfied
- classifier: a scikit-learn pipeline (word + character TF-IDF, logistic regression) trained on
  labeled JSONL rows; score = P(label 1). It is saved with skops in `run_dir/dream/` and reused
  while the examples file is unchanged; loading it trusts only the classes the pipeline is made of
- judge: another Hugging Face causal LM fills a prompt template and generates a number
- python: a "module:function" called with (scenario, response)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from toolkit.config.evaluators import (ClassifierEvaluatorConfig, EvaluatorConfig, JudgeEvaluatorConfig,
                                      PythonEvaluatorConfig, RulesEvaluatorConfig)
from toolkit.config.model import ModelConfig
from toolkit.errors import ToolkitError, first_line
from toolkit.util.imports import load_function
from toolkit.util.jsonl import jsonl_rows

KEY = "dream.evaluator"
QUOTE_CHARS = 80  # longest quoted text in a reason
JUDGE_BATCH = 8  # prompts per judge generate() call
CV_FOLDS = 5
MODEL_FILE = "evaluator.skops"
INFO_FILE = "evaluator.json"
# The only types a saved classifier may hold beyond skops' own safe defaults: the classes `new_pipeline` builds
# (some skops/scikit-learn versions do not trust them by default). Anything else, functions above all, is refused:
# skops calls what a file names while loading it.
ALLOWED_TYPES = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "numpy.float64",  # TfidfVectorizer's dtype parameter
})
WITH_SCENARIO = "scenario+response"  # evaluator.json's "input" when the classifier reads "scenario\nresponse"


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]
    passed: bool
    reason: str  # short and human-readable: the failed rule, the probability, the judge's raw text


@runtime_checkable
class Evaluator(Protocol):
    def evaluate(self, scenarios: list[str], responses: list[str]) -> list[Verdict]: ...


def build_evaluator(cfg: EvaluatorConfig, run_dir: Path, model_cfg: ModelConfig | None = None,
                    main: bool = True) -> Evaluator | None:
    """The evaluator `cfg.kind` names. `run_dir` holds the classifier; `model_cfg` (the recipe's model
    section) lends the judge its loading options. Only the `main` process judges: the others load the
    classifier the main process trained (call them after it) and get no judge model at all (None)."""
    if cfg.kind == "rules":
        return RulesEvaluator(cfg)
    if cfg.kind == "classifier":
        return ClassifierEvaluator(cfg, run_dir, may_train=main)
    if cfg.kind == "judge":
        return JudgeEvaluator(cfg, model_cfg) if main else None
    return PythonEvaluator(cfg)


def _quote(text: str) -> str:
    """`text` on one line, cut to QUOTE_CHARS, in double quotes (reasons stay one short line)."""
    text = " ".join(text.split())
    if len(text) > QUOTE_CHARS:
        text = text[:QUOTE_CHARS - 1] + "…"
    return f'"{text}"'


def _check_lengths(scenarios: list[str], responses: list[str]) -> None:
    if len(scenarios) != len(responses):
        raise ValueError(f"{len(scenarios)} scenarios but {len(responses)} responses")


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ToolkitError(f"invalid regular expression /{pattern}/: {exc}", key=key) from None


# ---------------------------------------------------------------- rules


class RulesEvaluator:
    """Phrases match case-insensitively; regular expressions match as written (add `(?i)` to ignore case).
    Only the response is checked."""

    def __init__(self, cfg: RulesEvaluatorConfig):
        # (description of the failure, test that holds when the rule is satisfied), in recipe order
        self.rules = []
        for phrase in cfg.must_include:
            self.rules.append((f"missing {_quote(phrase)}", lambda r, p=phrase.lower(): p in r.lower()))
        for i, pattern in enumerate(cfg.must_match):
            regex = _compile(pattern, f"{KEY}.must_match.{i}")
            self.rules.append((f"no match for /{pattern}/", lambda r, x=regex: x.search(r) is not None))
        for phrase in cfg.must_not_include:
            self.rules.append((f"contains forbidden {_quote(phrase)}", lambda r, p=phrase.lower(): p not in r.lower()))
        for i, pattern in enumerate(cfg.must_not_match):
            regex = _compile(pattern, f"{KEY}.must_not_match.{i}")
            self.rules.append((f"matched forbidden /{pattern}/", lambda r, x=regex: x.search(r) is None))

    def evaluate(self, scenarios: list[str], responses: list[str]) -> list[Verdict]:
        _check_lengths(scenarios, responses)
        return [self._one(response) for response in responses]

    def _one(self, response: str) -> Verdict:
        failed = [why for why, holds in self.rules if not holds(response)]
        score = 1 - len(failed) / len(self.rules)
        return Verdict(score, not failed, failed[0] if failed else f"all {len(self.rules)} rules hold")


# ---------------------------------------------------------------- classifier


def classifier_text(scenario: str | None, response: str) -> str:
    """What the classifier sees: the response, or "scenario\\nresponse" when it was trained on
    rows with a scenario. Training and scoring both go through here."""
    return response if scenario is None else f"{scenario}\n{response}"


def read_examples(path: Path, data: bytes) -> tuple[list[str], list[int], bool]:
    """Texts, 0/1 labels and whether the rows carry a scenario, from labeled JSONL `data` read from `path`.
    Rows are {"text", "label"} or {"scenario", "response", "label"}, one shape per file; labels 0/1 or
    false/true."""
    texts, labels, with_scenario = [], [], None
    for where, row, problem in jsonl_rows(path, data):
        if problem:
            raise ToolkitError(problem, where=where)
        if with_scenario is None:
            with_scenario = "scenario" in row
        elif with_scenario != ("scenario" in row):
            raise ToolkitError('rows mix {"text"} and {"scenario", "response"}', where=where,
                               hint="use one shape in the whole file")
        fields = ("scenario", "response") if with_scenario else ("text",)
        for field in fields:
            if not isinstance(row.get(field), str):
                raise ToolkitError(f'"{field}" must be a string', where=where)
        label = row.get("label")
        if type(label) not in (int, bool) or label not in (0, 1):  # type(): 1.0 and "1" are not labels
            raise ToolkitError(f'"label" must be 0, 1, false or true, got {json.dumps(label)}', where=where)
        texts.append(classifier_text(row.get("scenario"), row["response"]) if with_scenario
                     else classifier_text(None, row["text"]))
        labels.append(int(label))
    if len(set(labels)) < 2:
        raise ToolkitError(f"{path} needs rows labeled both 0 and 1 (has {len(labels)} rows, "
                           f"labels {sorted(set(labels))})", key=f"{KEY}.examples")
    return texts, labels, bool(with_scenario)


def new_pipeline():
    """Word and character n-gram TF-IDF into a logistic regression: learns phrasing from a few dozen rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
    ])
    # C=10: a light penalty, so a few dozen clear examples give confident probabilities
    return Pipeline([("features", features), ("model", LogisticRegression(C=10.0, max_iter=1000, random_state=0))])


def cross_validate(texts: list[str], labels: list[int]) -> tuple[int, float | None]:
    """(folds, mean accuracy) of stratified k-fold; (0, None) when a class has a single row."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = min(CV_FOLDS, min(labels.count(0), labels.count(1)))
    if folds < 2:
        return 0, None
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return folds, float(cross_val_score(new_pipeline(), texts, labels, cv=splits).mean())


class ClassifierEvaluator:
    """Trains on `cfg.examples` once per examples-file content: `run_dir/dream/evaluator.skops` holds the
    pipeline and `evaluator.json` the sha256 of the examples it came from, so a rerun loads it.
    `trained` tells whether this instance trained (True) or loaded (False); with `may_train` False (a
    process other than the main one) a missing or stale classifier is an error, never a second writer."""

    def __init__(self, cfg: ClassifierEvaluatorConfig, run_dir: Path, may_train: bool = True):
        self.threshold = cfg.threshold
        examples = Path(cfg.examples)
        try:
            data = examples.read_bytes()
        except OSError as exc:
            raise ToolkitError(f"cannot read examples file: {first_line(exc)}", key=f"{KEY}.examples") from None
        out = Path(run_dir) / "dream"
        self.model_path, self.info_path = out / MODEL_FILE, out / INFO_FILE
        sha256 = hashlib.sha256(data).hexdigest()
        self.info = self._saved_info(sha256)
        self.trained = self.info is None
        if self.trained and not may_train:
            raise ToolkitError("no classifier trained on these examples: the main process writes it first",
                               where=str(self.model_path), key=f"{KEY}.examples")
        if self.trained:
            self.pipeline, self.info = self._train(examples, data, sha256)
        else:
            self.pipeline = self._load()
        self.with_scenario = self.info["input"] == WITH_SCENARIO

    def _saved_info(self, sha256: str) -> dict | None:
        """The saved classifier's info when it came from these examples under this scikit-learn, else None."""
        import sklearn

        try:
            info = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None  # none yet, or a half-written one: train afresh
        fresh = info.get("sha256") == sha256 and info.get("sklearn") == sklearn.__version__
        return info if fresh and self.model_path.is_file() else None

    def _train(self, examples: Path, data: bytes, sha256: str) -> tuple:
        import sklearn
        import skops.io

        texts, labels, with_scenario = read_examples(examples, data)
        folds, accuracy = cross_validate(texts, labels)
        pipeline = new_pipeline().fit(texts, labels)
        info = {
            "examples": str(examples),
            "sha256": sha256,
            "rows": len(labels),
            "passing_rows": sum(labels),
            "input": WITH_SCENARIO if with_scenario else "response",
            "cv_folds": folds,
            "cv_accuracy": accuracy,
            "sklearn": sklearn.__version__,
        }
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        # the old info goes first and the new one comes last, each file written atomically: after a crash
        # no info vouches for a model trained on other examples
        self.info_path.unlink(missing_ok=True)
        tmp = self.model_path.with_name(MODEL_FILE + ".tmp")
        skops.io.dump(pipeline, tmp)
        os.replace(tmp, self.model_path)
        tmp = self.info_path.with_name(INFO_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.info_path)
        return pipeline, info

    def _load(self):
        """Load with skops, trusting beyond its defaults only the exact classes `new_pipeline` builds
        (ALLOWED_TYPES). Listing a file's types reads its schema and runs nothing from it."""
        import skops.io
        from sklearn.pipeline import Pipeline

        where, hint = str(self.model_path), "delete it to retrain from the examples"
        try:
            untrusted = skops.io.get_untrusted_types(file=self.model_path)
        except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:  # not a file this toolkit wrote
            raise ToolkitError(f"not a readable skops file: {first_line(exc)}", where=where, hint=hint) from None
        unexpected = sorted(set(untrusted) - ALLOWED_TYPES)
        if unexpected:
            raise ToolkitError(f"refusing to load a classifier holding unexpected types: {', '.join(unexpected)}",
                               where=where, hint=hint)
        pipeline = skops.io.load(self.model_path, trusted=untrusted)
        if not isinstance(pipeline, Pipeline):
            raise ToolkitError(f"holds a {type(pipeline).__name__}, not the classifier pipeline", where=where, hint=hint)
        return pipeline

    def evaluate(self, scenarios: list[str], responses: list[str]) -> list[Verdict]:
        _check_lengths(scenarios, responses)
        if not responses:
            return []
        texts = [classifier_text(s if self.with_scenario else None, r) for s, r in zip(scenarios, responses)]
        passing = list(self.pipeline.classes_).index(1)
        probabilities = self.pipeline.predict_proba(texts)[:, passing]
        return [Verdict(float(p), bool(p >= self.threshold), f"p(pass)={p:.2f}") for p in probabilities]


# ---------------------------------------------------------------- judge


def parse_score(text: str, pattern: re.Pattern) -> float | None:
    """The first match of `pattern` in `text` as a number (its first group if it has one), else None."""
    match = pattern.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1) if pattern.groups else match.group(0))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class JudgeEvaluator:
    """Another causal LM, fp32 on CPU, fills `cfg.prompt` as plain text (no chat template) and generates
    greedily; the first number it writes over `cfg.max_score` is the score."""

    def __init__(self, cfg: JudgeEvaluatorConfig, model_cfg: ModelConfig | None = None):
        for placeholder in ("{scenario}", "{response}"):
            if placeholder not in cfg.prompt:
                raise ToolkitError(f"the judge prompt has no {placeholder} placeholder", key=f"{KEY}.prompt")
        self.cfg = cfg
        self.pattern = _compile(cfg.score_pattern, f"{KEY}.score_pattern")
        self.model, self.tokenizer = load_judge(cfg.model, model_cfg)

    def prompt(self, scenario: str, response: str) -> str:
        # replace(), not format(): templates may hold other braces (JSON examples), and responses may too
        return self.cfg.prompt.replace("{scenario}", scenario).replace("{response}", response)

    def evaluate(self, scenarios: list[str], responses: list[str]) -> list[Verdict]:
        _check_lengths(scenarios, responses)
        return [self.verdict(text) for text in self.generate([self.prompt(s, r) for s, r in zip(scenarios, responses)])]

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy, batched, left-padded: the dream loop's own generation (its judge settings never leak in)."""
        from toolkit.text.generate import generate

        return generate(self.model, self.tokenizer, prompts, temperature=0.0, max_new_tokens=self.cfg.max_new_tokens,
                        batch_size=JUDGE_BATCH, seed=0)

    def verdict(self, text: str) -> Verdict:
        value = parse_score(text, self.pattern)
        if value is None:
            return Verdict(0.0, False, f"no score in judge output: {_quote(text)}")
        score = min(max(value / self.cfg.max_score, 0.0), 1.0)
        return Verdict(score, score >= self.cfg.threshold,
                       f"judge scored {value:g}/{self.cfg.max_score:g}: {_quote(text)}")


def load_judge(path: str, model_cfg: ModelConfig | None):
    """The judge model (eval mode, fp32, CPU) and its tokenizer: a model dir, hub id, adapter dir or run dir,
    loaded by toolkit.weights."""
    from toolkit.weights import load_weights

    base = model_cfg or ModelConfig()
    # the judge is another model: only loading options carry over, not the base's revision or chat template
    judge_cfg = ModelConfig(trust_remote_code=base.trust_remote_code, allow_pickle=base.allow_pickle,
                            attn_implementation=base.attn_implementation)
    return load_weights(path, options=judge_cfg, key=f"{KEY}.model")  # pad = eos where the tokenizer has none


# ---------------------------------------------------------------- python


class PythonEvaluator:
    """`cfg.function(scenario, response)` returns a float score, a (score, passed, reason) tuple, a dict
    with "score" (and optionally "passed", "reason"), or a Verdict. A bare score passes at `cfg.threshold`."""

    def __init__(self, cfg: PythonEvaluatorConfig):
        self.name = cfg.function
        self.threshold = cfg.threshold
        self.fn = load_function(cfg.function, f"{KEY}.function")

    def evaluate(self, scenarios: list[str], responses: list[str]) -> list[Verdict]:
        _check_lengths(scenarios, responses)
        return [self.to_verdict(self.fn(s, r)) for s, r in zip(scenarios, responses)]

    def to_verdict(self, result) -> Verdict:
        if isinstance(result, Verdict):
            score, passed, reason = result.score, result.passed, result.reason
        elif isinstance(result, tuple) and len(result) == 3:
            score, passed, reason = result
        elif isinstance(result, dict) and "score" in result:
            score, passed, reason = result["score"], result.get("passed"), result.get("reason")
        else:
            score, passed, reason = result, None, None
        if isinstance(score, bool) or not isinstance(score, Real) or not 0 <= score <= 1:  # NaN fails too
            raise self.error(f"a score in [0, 1], got {result!r}")
        if passed is None:
            passed = score >= self.threshold
        if not isinstance(passed, (bool, np.bool_)):  # not any truthy value: 1 or "yes" is likely a mistake
            raise self.error(f"passed as a bool, got {passed!r}")
        if reason is None:
            reason = f"score={score:.2f}"
        if not isinstance(reason, str):
            raise self.error(f"reason as a str, got {reason!r}")
        return Verdict(float(score), bool(passed), reason)

    def error(self, expected: str) -> ToolkitError:
        return ToolkitError(f"evaluator function '{self.name}' must return {expected}", key=f"{KEY}.function",
                            hint="return a float, (score, passed, reason), a dict with those keys, or a Verdict")
