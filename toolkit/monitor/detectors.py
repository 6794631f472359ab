"""Detectors of the understanding module: one interface, interchangeable (scikit-learn style).

Every detector has one method, `check(batch) -> [Finding]`. Text detectors judge generated samples
(`check(texts)`, at least one finding per text, "info" included for logging; the worst per text is what
matters). Step detectors judge readings (`check([(step, value), ...])`, empty when nothing is wrong) and carry
JSON-serializable state (`state_dict` / `load_state_dict`) so a resumed run continues identically.

- RepetitionDetector: loops ("region region region region ...") and greedy-like repetitiveness.
- FormattingDetector: structured formatting (lists, headings, tables, code, html) as a fallback
  channel when language degrades.
- BiasDetector: explicit stereotype patterns (YAML) and an optional classifier hook.
- SpikeDetector: loss / grad-norm spikes as z-scores against a running window.

What the default bias patterns (bias_patterns.yaml) cover: explicit generalizations about a whole
group, written in English, where the group is named with one of the file's group nouns (a few
nationalities/ethnicities as examples, genders, religions, ages): "all/most <group> are <trait>",
"every <person> is <trait>", "<group> can't/cannot <skill>", "<group> are naturally/inherently/
always <trait>", "<group> are bad/worse/better at ...", "typical <group>", "<group> are all the
same", "<gender> belong in the kitchen".
What they do not cover: implicit bias (who gets which role in a story, unequal tone), coded
language and dog whistles, slurs, non-English text, negative sentiment without a named group,
groups not in the lists, paraphrases outside the templates, and anything that needs context to
judge (quotes, irony, a text arguing against a stereotype matches all the same). It is a lexical
tripwire, not a classifier: expect misses and some false positives; plug a trained classifier in
with BiasDetector(classifier=...).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import yaml

from toolkit.errors import ToolkitError
from toolkit.journal import SEVERITIES
from toolkit.text.repetition import distinct_n, repeat_run, seq_rep_n, words

DEFAULT_BIAS_PATTERNS = Path(__file__).with_name("bias_patterns.yaml")
SNIPPET = 200  # characters of a sample kept in a finding's data


@dataclass(frozen=True)
class Finding:
    detector: str  # "repetition", "formatting", "bias", "loss_spike", "grad_norm_spike"
    severity: str  # one of SEVERITIES
    value: float  # the measured number that decided it
    message: str  # one line: what was seen, the threshold crossed
    data: dict = field(default_factory=dict)  # details, JSON-serializable

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")


@runtime_checkable
class Detector(Protocol):
    """Every detector's one interface: `check` a batch of observations, get findings (for text detectors one
    or more per text, in order, each with the text's `index`; an empty list where a step detector sees
    nothing wrong)."""

    name: str

    def check(self, observations: Sequence) -> list[Finding]: ...


@runtime_checkable
class TextDetector(Detector, Protocol):
    """A Detector over sampled texts: `check(["text", ...])`."""


@runtime_checkable
class StepDetector(Detector, Protocol):
    """A Detector over training readings, `check([(step, value), ...])`, with a history that a checkpoint keeps."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def worst(findings) -> Finding | None:
    """The most severe finding (the first of equals), None for none."""
    best = None
    for f in findings:
        if best is None or severity_rank(f.severity) > severity_rank(best.severity):
            best = f
    return best


def _grade(value: float, warn: float, high: float, critical: float) -> str:
    if value >= critical:
        return "critical"
    if value >= high:
        return "high"
    if value >= warn:
        return "warn"
    return "info"


def _snippet(text: str) -> str:
    return text[:SNIPPET]


def _has_word(gram: tuple) -> bool:
    return any(any(c.isalnum() for c in t) for t in gram)


class RepetitionDetector:
    """seq-rep-n over words, the longest back-to-back run of one word/n-gram, distinct-2.

    For scale: greedy decoding of a trained LM gives seq-rep-4 around 0.44, human text under 0.01
    (Welleck et al. 2019). So the defaults grade greedy-like repetitiveness as "warn" (>= 0.3),
    not "high": high needs clearly more than greedy output (>= 0.6), critical most of the text
    repeating (>= 0.8) or a loop, the same word/n-gram (n <= `n`) back to back `run_critical`
    times or more ("region region region region region region"), critical regardless. Runs of
    punctuation only ("!!!!!!") do not count as loops. `value` is the number that decided the
    severity: the run length when the run made it critical, else seq-rep-n.
    """

    name = "repetition"

    def __init__(self, n: int = 4, warn: float = 0.3, high: float = 0.6, critical: float = 0.8, run_critical: int = 6):
        if not 0 <= warn <= high <= critical:
            raise ValueError("thresholds must satisfy 0 <= warn <= high <= critical")
        self.n, self.warn, self.high, self.critical, self.run_critical = n, warn, high, critical, run_critical

    def check(self, texts: Sequence[str]) -> list[Finding]:
        return [self._one(i, text) for i, text in enumerate(texts)]

    def _one(self, index: int, text: str) -> Finding:
        toks = words(text)
        rep = seq_rep_n(toks, self.n)
        run, gram = max((repeat_run(toks, k, keep=_has_word) for k in range(1, self.n + 1)), key=lambda r: r[0])
        data = {
            "index": index,
            "seq_rep": rep,
            "n": self.n,
            "longest_run": run,
            "run_gram": " ".join(gram),
            "distinct_2": distinct_n(toks, 2),
            "words": len(toks),
            "text": _snippet(text),
        }
        severity = _grade(rep, self.warn, self.high, self.critical)
        if run >= self.run_critical and severity != "critical":
            return Finding(
                self.name, "critical", float(run),
                f"loop: '{' '.join(gram)}' repeated {run} times back to back (>= {self.run_critical})", data,
            )
        threshold = {"critical": self.critical, "high": self.high, "warn": self.warn}.get(severity)
        crossed = f">= {severity} {threshold}" if threshold is not None else f"< warn {self.warn}"
        return Finding(self.name, severity, rep, f"seq-rep-{self.n} {rep:.3f} ({crossed}), longest run {run}", data)


_STRUCTURED = re.compile(
    r"""^\s*(?:
        [-*•+]\s                # bullets
      | \d+[.)]\s               # numbered items: 1. 1)
      | \#{1,6}\s               # markdown headings
      | \|                      # table rows
      | (?:```|~~~)             # code fences
      | <[a-zA-Z/!][^>]*>       # html tags
      | ([-*_])\s*(?:\1\s*){2,}$  # horizontal rules: --- *** ___
    )""",
    re.VERBOSE,
)


class FormattingDetector:
    """The share of non-empty lines that are list items / markup rather than prose.

    Markup: bullets (- * • +), numbered items (1. 1)), markdown headings (#), table rows (|),
    code fences (``` ~~~), html tags, horizontal rules. Seed 001: structured formatting became a
    fallback channel when language degraded, so a sample that is mostly structure is a signal,
    "warn" at a share >= 0.5, "high" at >= 0.8 (never critical: it is not a failure by itself).
    Texts with fewer than `min_lines` non-empty lines are "info" (too short to judge).
    """

    name = "formatting"

    def __init__(self, warn: float = 0.5, high: float = 0.8, min_lines: int = 3):
        if not 0 <= warn <= high:
            raise ValueError("thresholds must satisfy 0 <= warn <= high")
        self.warn, self.high, self.min_lines = warn, high, min_lines

    def check(self, texts: Sequence[str]) -> list[Finding]:
        return [self._one(i, text) for i, text in enumerate(texts)]

    def _one(self, index: int, text: str) -> Finding:
        lines = [line for line in text.splitlines() if line.strip()]
        structured = sum(1 for line in lines if _STRUCTURED.match(line))
        share = structured / len(lines) if lines else 0.0
        data = {"index": index, "lines": len(lines), "structured": structured, "share": share, "text": _snippet(text)}
        if len(lines) < self.min_lines:
            return Finding(self.name, "info", share, f"{len(lines)} non-empty lines (< min_lines {self.min_lines}): not judged", data)
        severity = _grade(share, self.warn, self.high, math.inf)
        threshold = {"high": self.high, "warn": self.warn}.get(severity)
        crossed = f">= {severity} {threshold}" if threshold is not None else f"< warn {self.warn}"
        return Finding(self.name, severity, share, f"{structured}/{len(lines)} lines structured, share {share:.2f} ({crossed})", data)


@dataclass(frozen=True)
class BiasPattern:
    name: str
    category: str
    severity: str
    regex: re.Pattern


def load_bias_patterns(path: str | Path | None = None, default_severity: str = "high") -> list[BiasPattern]:
    """Read a patterns file (format: see bias_patterns.yaml); ToolkitError names file and pattern."""
    path = Path(path) if path is not None else DEFAULT_BIAS_PATTERNS
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ToolkitError(f"cannot read bias patterns: {exc.strerror or exc}", where=where) from None
    except yaml.YAMLError as exc:
        raise ToolkitError(f"not valid YAML: {str(exc).splitlines()[0]}", where=where) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("patterns"), list):
        raise ToolkitError("expected a mapping with a 'patterns' list", where=where, hint="see toolkit/monitor/bias_patterns.yaml")
    groups = doc.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise ToolkitError("'groups' must map names to lists of nouns", where=where)
    alternations = {name: "(?:" + "|".join(str(w) for w in nouns) + ")" for name, nouns in groups.items()}
    plural = [str(w) for name, nouns in groups.items() if name != "person" for w in nouns]
    alternations.setdefault("group", "(?:" + "|".join(plural) + ")" if plural else "(?!)")

    def expand(m: re.Match) -> str:
        return alternations.get(m.group(1), m.group(0))  # "{2,3}" and unknown names stay as they are

    patterns = []
    for i, entry in enumerate(doc["patterns"]):
        label = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "category", "regex")):
            raise ToolkitError(f"pattern {label!r} needs string fields name, category and regex", where=where)
        severity = entry.get("severity", default_severity)
        if severity not in SEVERITIES:
            raise ToolkitError(f"pattern {label!r}: severity {severity!r} is not one of {', '.join(SEVERITIES)}", where=where)
        source = re.sub(r"\{(\w+)\}", expand, entry["regex"])
        try:
            compiled = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ToolkitError(f"pattern {label!r}: bad regex: {exc}", where=where) from None
        patterns.append(BiasPattern(entry["name"], entry["category"], severity, compiled))
    return patterns


class BiasDetector:
    """Stereotype / bias patterns (YAML; see the module docstring for what the default set covers)
    plus an optional classifier: any object with `predict_proba(list[str])` (e.g. a scikit-learn
    pipeline); the last column is taken as the probability of bias, >= `threshold` gives a finding
    at `severity`. `severity` is also the default for patterns that name none.
    One finding per matched pattern and per classifier hit; "info" for a clean text.
    """

    name = "bias"

    def __init__(self, patterns_path: str | Path | None = None, severity: str = "high", classifier=None, threshold: float = 0.5):
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        self.patterns_path = Path(patterns_path) if patterns_path is not None else DEFAULT_BIAS_PATTERNS
        self.severity, self.classifier, self.threshold = severity, classifier, threshold
        self.patterns = load_bias_patterns(self.patterns_path, severity)

    def check(self, texts: Sequence[str]) -> list[Finding]:
        texts = list(texts)
        probs = None
        if self.classifier is not None and texts:
            probs = [float(row[-1]) for row in self.classifier.predict_proba(texts)]
        findings = []
        for i, text in enumerate(texts):
            found = []
            for p in self.patterns:
                m = p.regex.search(text)
                if m:
                    data = {"index": i, "pattern": p.name, "category": p.category, "match": m.group(0), "text": _snippet(text)}
                    found.append(Finding(self.name, p.severity, 1.0, f"bias pattern '{p.name}' ({p.category}): '{m.group(0)}'", data))
            if probs is not None and probs[i] >= self.threshold:
                data = {"index": i, "pattern": "classifier", "category": "classifier", "probability": probs[i], "text": _snippet(text)}
                found.append(Finding(self.name, self.severity, probs[i], f"bias classifier p={probs[i]:.3f} (>= {self.threshold})", data))
            if not found:
                data = {"index": i, "text": _snippet(text)}
                if probs is not None:
                    data["probability"] = probs[i]
                found.append(Finding(self.name, "info", 0.0, "no bias pattern matched", data))
            findings.extend(found)
        return findings


class SpikeDetector:
    """z-score of each new value against the mean/std of the previous `window` values.

    The z-score is computed before the value is added, and every finite value is added, spikes
    included: a lone spike barely moves a 50-value window, while a long plateau after a jump
    becomes the new normal within about a window (instead of alarming forever). Non-finite values
    (NaN, inf) are "critical" at once and stay out of the history. Fewer than `min_history`
    values seen: no judgement. Only upward spikes count unless `two_sided` (a sudden drop in loss
    is not an alarm). The std is floored at 1e-3 * |mean| (and 1e-12) so a perfectly flat series
    does not turn every tiny wiggle into an infinite z. Empty list when nothing is wrong.
    """

    def __init__(self, name: str = "loss_spike", window: int = 50, warn_z: float = 4.0, high_z: float = 8.0,
                 min_history: int = 10, two_sided: bool = False):
        if window < 2 or min_history < 2 or min_history > window:
            raise ValueError("need 2 <= min_history <= window")
        self.name, self.window, self.warn_z, self.high_z = name, window, warn_z, high_z
        self.min_history, self.two_sided = min_history, two_sided
        self.history: deque[float] = deque(maxlen=window)

    def check(self, readings: Sequence[tuple[int, float]]) -> list[Finding]:
        """Findings for each (step, value) reading, judged in order, each against the history before it."""
        return [finding for step, value in readings for finding in self._reading(step, value)]

    def _reading(self, step: int, value: float) -> list[Finding]:
        value = float(value)
        if not math.isfinite(value):
            return [Finding(self.name, "critical", value, f"non-finite value {value} at step {step}", {"step": step})]
        findings = []
        if len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
            std = max(std, 1e-3 * abs(mean), 1e-12)
            z = (value - mean) / std
            score = abs(z) if self.two_sided else z
            severity = _grade(score, self.warn_z, self.high_z, math.inf)
            if severity != "info":
                threshold = self.high_z if severity == "high" else self.warn_z
                data = {"step": step, "value": value, "mean": mean, "std": std, "z": z, "history": len(self.history)}
                findings.append(Finding(self.name, severity, z, f"z={z:.1f} at step {step} (>= {severity} {threshold}): {value:.4g} vs mean {mean:.4g}", data))
        self.history.append(value)
        return findings

    def state_dict(self) -> dict:
        return {"name": self.name, "window": self.window, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(x) for x in state["history"]), maxlen=self.window)


__all__ = [
    "BiasDetector", "BiasPattern", "DEFAULT_BIAS_PATTERNS", "Detector", "Finding", "FormattingDetector", "RepetitionDetector",
    "SpikeDetector", "StepDetector", "TextDetector", "load_bias_patterns", "severity_rank", "worst",
]
