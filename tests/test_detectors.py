import json
import math
import random

import pytest

from toolkit.errors import ToolkitError
from toolkit.monitor.detectors import (
    BiasDetector,
    Detector,
    Finding,
    FormattingDetector,
    RepetitionDetector,
    SpikeDetector,
    StepDetector,
    TextDetector,
    worst,
)
from toolkit.monitor.repetition import distinct_n, longest_repeat_run, seq_rep_n, words

PARAGRAPH = (
    "The committee met on Tuesday to discuss the budget for next year. Several members raised concerns "
    "about the cost of the new library, while others argued that the investment would pay off within a "
    "decade. In the end, they agreed to postpone the vote until more figures were available."
)
GREEDY_LIKE = (
    "The team said that the results were good. The team said that the results were good. The team said "
    "that the results were good, so the paper was sent to the journal in May."
)


# repetition measures


def test_words_lowercases_and_splits_punctuation():
    assert words("Region, region!") == ["region", ",", "region", "!"]
    assert words("") == []


def test_seq_rep_n_basics():
    assert seq_rep_n("a b c d e f".split(), 1) == 0.0
    assert seq_rep_n("a a a a".split(), 1) == pytest.approx(0.75)
    assert seq_rep_n("a b".split(), 4) == 0.0


def test_distinct_n_basics():
    assert distinct_n([], 2) == 1.0
    assert distinct_n("a b c".split(), 2) == 1.0
    assert distinct_n("a b a b".split(), 2) == pytest.approx(2 / 3)


def test_longest_repeat_run_basics():
    assert longest_repeat_run("region region region region".split()) == 4
    assert longest_repeat_run("a b c".split()) == 1
    assert longest_repeat_run([]) == 0
    assert longest_repeat_run("x a b a b a b y".split(), 2) == 3
    assert longest_repeat_run("a b".split(), 3) == 0
    assert longest_repeat_run("a a b a a a a".split()) == 4


# repetition detector


def test_loop_is_critical():
    (f,) = RepetitionDetector().check(["region region region region region region"])
    assert f.severity == "critical"
    assert f.data["longest_run"] == 6 and f.data["run_gram"] == "region"


def test_loop_of_a_bigram_with_punctuation_is_critical():
    (f,) = RepetitionDetector().check(["The region, region, region, region, region, region, region."])
    assert f.severity == "critical"


def test_punctuation_run_is_not_a_loop():
    (f,) = RepetitionDetector().check(["Wow!!!!!!!! That was great."])
    assert f.severity != "critical" and f.data["longest_run"] == 1


def test_normal_paragraph_is_info():
    (f,) = RepetitionDetector().check([PARAGRAPH])
    assert f.severity == "info" and f.value < 0.05


def test_greedy_like_text_warns_but_not_high():
    (f,) = RepetitionDetector().check([GREEDY_LIKE])
    assert f.severity == "warn"
    assert 0.3 <= f.value < 0.6 and f.data["longest_run"] < 6


def test_repetition_one_finding_per_text_with_index():
    fs = RepetitionDetector().check([PARAGRAPH, "", "region " * 10])
    assert [f.data["index"] for f in fs] == [0, 1, 2]
    assert worst(fs).data["index"] == 2


# formatting detector


def test_bullet_list_is_high_and_prose_is_info():
    bullets = "- apples\n- pears\n* plums\n1. first\n2) second\n## Heading"
    prose = "This is a sentence.\nHere is another one.\nAnd a third line of prose."
    high, info = FormattingDetector().check([bullets, prose])
    assert high.severity == "high" and high.value == 1.0
    assert info.severity == "info" and info.value == 0.0


def test_mixed_markup_and_short_text():
    mixed = "Some prose here.\n| a | b |\n<div>x</div>\n```\nmore prose\n```"
    (f,) = FormattingDetector().check([mixed])
    assert f.severity == "warn"  # 4 of 6 lines
    (short,) = FormattingDetector().check(["- a\n- b"])
    assert short.severity == "info" and "min_lines" in short.message


# bias detector


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("All women are bad at math.", "all_group_are"),
        ("All women are bad at math.", "group_worse_better_at"),
        ("Every woman is emotional.", "every_person_is"),
        ("Women can't drive.", "group_cannot"),
        ("Asians are naturally good at math.", "group_inherently"),
        ("That's so typical of a man.", "typical_group"),
        ("Muslims are all the same.", "group_all_the_same"),
        ("Most old people are slow.", "all_group_are"),
    ],
)
def test_planted_bias_is_found(text, pattern):
    fs = BiasDetector().check([text])
    assert worst(fs).severity == "high"
    hits = {f.data["pattern"]: f for f in fs}
    assert pattern in hits
    assert hits[pattern].data["category"]
    assert hits[pattern].data["text"] == text


@pytest.mark.parametrize(
    "text",
    [
        "Women and men both enjoy math.",
        "All women are welcome to apply.",
        "The man can't swim today.",
        "My grandmother taught me chess.",
        PARAGRAPH,
    ],
)
def test_neutral_text_is_clean(text):
    fs = BiasDetector().check([text])
    assert len(fs) == 1 and fs[0].severity == "info"


def test_custom_patterns_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "groups:\n  pets: [cats, dogs]\n"
        "patterns:\n"
        "  - {name: pets_lazy, category: pets, severity: warn, regex: '\\b{pets}\\s+are\\s+lazy'}\n"
        "  - {name: no_severity, category: misc, regex: 'zzz{2,3}'}\n"
    )
    det = BiasDetector(patterns_path=path, severity="critical")
    a, b, c = det.check(["Cats are lazy.", "Women can't drive.", "zzzz"])
    assert (a.severity, a.data["pattern"], a.data["category"]) == ("warn", "pets_lazy", "pets")
    assert b.severity == "info"  # default set not loaded
    assert (c.severity, c.data["pattern"]) == ("critical", "no_severity")


def test_bad_regex_names_file_and_pattern(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("patterns:\n  - {name: broken_one, category: x, regex: '(unclosed'}\n")
    with pytest.raises(ToolkitError) as err:
        BiasDetector(patterns_path=path)
    assert str(path) in str(err.value) and "broken_one" in str(err.value)


def test_missing_fields_and_bad_severity(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("patterns:\n  - {name: p1, regex: 'x'}\n")
    with pytest.raises(ToolkitError, match="p1"):
        BiasDetector(patterns_path=path)
    path.write_text("patterns:\n  - {name: p2, category: c, regex: 'x', severity: severe}\n")
    with pytest.raises(ToolkitError, match="p2"):
        BiasDetector(patterns_path=path)


def test_classifier_hook(tmp_path):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["they are all thieves", "those people are all thieves", "the weather is nice", "I like the park"] * 5
    labels = [1, 1, 0, 0] * 5
    clf = make_pipeline(CountVectorizer(), LogisticRegression()).fit(texts, labels)
    empty = tmp_path / "none.yaml"
    empty.write_text("patterns: []\n")
    det = BiasDetector(patterns_path=empty, classifier=clf, threshold=0.6)
    hit, clean = det.check(["they are all thieves", "the weather is nice today"])
    assert hit.severity == "high" and hit.data["pattern"] == "classifier" and hit.value >= 0.6
    assert clean.severity == "info" and clean.data["probability"] < 0.6


# spike detector


def _noisy(n, seed=0, level=2.0, noise=0.01):
    rng = random.Random(seed)
    return [level + rng.gauss(0, noise) for _ in range(n)]


def test_flat_noisy_series_then_jump_is_high():
    det = SpikeDetector("loss_spike")
    for step, v in enumerate(_noisy(60)):
        assert det.check([(step, v)]) == []
    (f,) = det.check([(60, 3.0)])
    assert f.severity == "high" and f.detector == "loss_spike" and f.value > 8
    assert det.check([(61, 1.0)]) == []  # a drop is not a spike (one-sided)


def test_warn_band_and_min_history():
    det = SpikeDetector("grad_norm_spike", min_history=10)
    assert det.check([(0, 100.0)]) == []  # no history: no judgement
    for step, v in enumerate(_noisy(20, seed=1, level=1.0, noise=0.1)):
        det.check([(step + 1, v)])
    mean = sum(det.history) / len(det.history)
    std = math.sqrt(sum((x - mean) ** 2 for x in det.history) / len(det.history))
    (f,) = det.check([(30, mean + 5 * std)])
    assert f.severity == "warn" and f.value == pytest.approx(5.0)


def test_nan_and_inf_are_critical_and_stay_out_of_history():
    det = SpikeDetector("loss_spike")
    (f,) = det.check([(0, float("nan"))])
    assert f.severity == "critical"
    (g,) = det.check([(1, float("inf"))])
    assert g.severity == "critical"
    assert len(det.history) == 0


def test_plateau_after_jump_adapts():
    det = SpikeDetector("loss_spike", window=50)
    for step, v in enumerate(_noisy(60)):
        det.check([(step, v)])
    plateau = _noisy(80, seed=3, level=3.0)
    results = [det.check([(60 + i, v)]) for i, v in enumerate(plateau)]
    assert results[0] and results[0][0].severity == "high"
    assert all(r == [] for r in results[-20:])


def test_state_round_trip_continues_identically():
    series = _noisy(40, seed=5) + [2.5] + _noisy(20, seed=6)
    a = SpikeDetector("loss_spike", window=20)
    for step, v in enumerate(series[:30]):
        a.check([(step, v)])
    b = SpikeDetector("loss_spike", window=20)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for step, v in enumerate(series[30:], start=30):
        assert a.check([(step, v)]) == b.check([(step, v)])
    assert list(a.history) == list(b.history)


# interface


def test_detectors_share_one_interface():
    for det in (RepetitionDetector(), FormattingDetector(), BiasDetector()):
        assert isinstance(det, TextDetector)
        fs = det.check(["hello there, world"])
        assert fs and all(isinstance(f, Finding) and f.detector == det.name for f in fs)
        json.dumps([f.data for f in fs])
    assert isinstance(SpikeDetector("loss_spike"), StepDetector)
    # one signature: a batch of observations in, findings out, whatever the detector watches
    spike = SpikeDetector("loss_spike", min_history=2)
    assert all(isinstance(d, Detector) for d in (RepetitionDetector(), spike))
    (f,) = spike.check([(0, 1.0), (1, 1.0), (2, 1.0), (3, float("nan"))])
    assert f.severity == "critical" and f.data == {"step": 3}


def test_worst_orders_by_severity():
    def mk(sev):
        return Finding("x", sev, 0.0, sev, {})

    assert worst([]) is None
    assert worst([mk("info"), mk("high"), mk("warn")]).severity == "high"
    assert worst([mk("critical"), mk("info")]).severity == "critical"
    with pytest.raises(ValueError):
        mk("severe")
