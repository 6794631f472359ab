"""The dream loop: scenarios, judged responses, failures turned into a `dream` source, zone of proximal
development, state, and the loop inside `toolkit finetune` (exact resume) and `toolkit dream`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.dream.loop import DreamLoop, histogram, load_seeds
from toolkit.dream.pool import DreamSource
from toolkit.errors import ToolkitError
from toolkit.journal import Journal, read_jsonl
from toolkit.recipe import DreamConfig, RulesEvaluatorConfig

REQUIRED = {"temperature", "failure_rate", "scenario", "response", "score", "passed", "reason"}


def varied(scenario: str, response: str) -> float:
    """A deterministic judge: passes answers of at least 3 distinct characters. A random model's
    near-greedy answers (temperature 0.1) are runs of one token and fail; its samples at 0.8 vary."""
    return 1.0 if len(set(response.strip())) >= 3 else 0.0


def write_seeds(path: Path, n: int = 4) -> Path:
    rows = [{"id": f"s{i}", "situation": f"the user asks for tabs in snippet {i}", "tier": 1,
             "reference": f"Understood, tabs in snippet {i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dream_cfg(tmp_path: Path, **overrides) -> DreamConfig:
    settings = {"enabled": True, "every": 5, "seeds": str(write_seeds(tmp_path / "seeds.jsonl")),
                "scenarios_per_cycle": 3, "samples_per_scenario": 2, "scenario_max_new_tokens": 8,
                "response_max_new_tokens": 8, "constitution": "Do what the user asks.",
                "evaluator": {"kind": "rules", "must_include": ["understood"]},
                "on_failure": {"strategy": "reference"}}
    return DreamConfig.model_validate({**settings, **overrides})


def make_loop(tmp_path, tokenizer, cfg: DreamConfig, seed: int = 0) -> DreamLoop:
    from toolkit.dream.evaluators import build_evaluator

    source = DreamSource(cfg, tokenizer, 64, seed, tmp_path)
    return DreamLoop(cfg, build_evaluator(cfg.evaluator, tmp_path), source, tmp_path, seed)


def test_failures_become_reference_examples_without_the_constitution(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    loop = make_loop(tmp_path, tokenizer, dream_cfg(tmp_path))
    summary, events = loop.cycle(model, tokenizer, step=5, progress=0.1)
    assert len(events) == 6 and all(REQUIRED <= set(e) for e in events)
    assert summary["passed"] == 0 and summary["pass_rate_histogram"] == {"never": 3}  # a random model never agrees
    assert summary["temperature"] == pytest.approx(0.5 + 0.7 * 1.0)  # adaptive, no history yet: explore
    assert loop.policy.failure_rate() == 1.0
    records = read_jsonl(tmp_path / "dream" / "examples.jsonl")
    assert 1 <= len(records) == len(loop.source.records) <= 3  # one per distinct failed scenario
    for record in records:
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]  # constitution stripped
        assert record["messages"][1]["content"].startswith("Understood, tabs in snippet")
        assert record["strategy"] == "reference" and record["pass_rate"] == 0.0
    example = next(iter(loop.source.train))
    assert any(label != -100 for label in example.labels)


def test_adaptive_temperature_follows_the_failure_rate_and_the_phase_overrides(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    loop = make_loop(tmp_path, tokenizer, dream_cfg(tmp_path))
    loop.cycle(model, tokenizer, step=5, progress=0.1)
    summary, events = loop.cycle(model, tokenizer, step=10, progress=0.2)
    assert summary["failure_rate"] == 1.0 and summary["temperature"] == pytest.approx(1.2)
    assert {e["failure_rate"] for e in events} == {1.0}  # the rate over the window that set the temperature
    summary, _ = loop.cycle(model, tokenizer, step=15, progress=0.3, phase_temperature=0.7)
    assert summary["temperature"] == 0.7


def test_best_of_k_keeps_the_best_passing_answer_and_pairs_are_written_for_trl(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    judge = {"kind": "python", "function": f"{__name__}:varied"}
    loop = make_loop(tmp_path, tokenizer, dream_cfg(tmp_path, evaluator=judge,
                                                    on_failure={"strategy": "best_of_k", "k": 6}))
    loop.cycle(model, tokenizer, step=5, progress=0.5)
    records = read_jsonl(tmp_path / "dream" / "examples.jsonl")
    assert records, "samples at 0.8 pass: rejection sampling finds a target"
    assert all(varied("", r["messages"][1]["content"]) for r in records)  # every target passes the judge

    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    loop = make_loop(pairs_dir, tokenizer, dream_cfg(pairs_dir, evaluator=judge,
                                                     on_failure={"strategy": "pairs", "k": 6}))
    loop.cycle(model, tokenizer, step=5, progress=0.5)
    pairs = read_jsonl(pairs_dir / "dream" / "pairs.jsonl")
    assert pairs and not loop.source.records  # pairs are for preference training later, not SFT now
    for pair in pairs:
        assert pair["prompt"][0]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
        assert varied("", pair["chosen"][0]["content"]) and not varied("", pair["rejected"][0]["content"])


def test_seeds_always_failed_are_down_weighted(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    loop = make_loop(tmp_path, tokenizer, dream_cfg(tmp_path, zpd_floor=0.1))
    loop.cycle(model, tokenizer, step=5, progress=0.1)
    seen = set(loop.seed_outcomes)
    assert seen and all(loop._seed_weight(s) == 0.1 for s in seen)  # always failed so far
    unseen = {s["id"] for s in loop.seeds} - seen
    assert all(loop._seed_weight(s) == 1.0 for s in unseen)
    loop.seed_outcomes["s0"] = [1, 2]  # at the decision boundary: full weight
    assert loop._seed_weight("s0") == 1.0


def test_histogram_bins():
    assert histogram([0.0, 1.0, 0.5, 0.25, 0.8, 1.0]) == {"<=0.25": 1, "<=0.5": 1, "<=1": 1, "always": 2, "never": 1}


def test_state_round_trip_continues_identically(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    cfg = dream_cfg(tmp_path)
    a = make_loop(tmp_path / "a", tokenizer, cfg)
    a.cycle(model, tokenizer, step=5, progress=0.1)
    state = json.loads(json.dumps({"loop": a.state_dict(), "source": a.source.state_dict()}))
    b = make_loop(tmp_path / "b", tokenizer, cfg)
    b.load_state_dict(state["loop"])
    b.source.load_state_dict(state["source"])
    next_a, events_a = a.cycle(model, tokenizer, step=10, progress=0.2)
    next_b, events_b = b.cycle(model, tokenizer, step=10, progress=0.2)
    assert next_a == next_b and events_a == events_b
    assert [e.input_ids for e in a.source.next_examples(5)] == [e.input_ids for e in b.source.next_examples(5)]


def test_dream_source_dedupes_and_keeps_the_pool_size(tmp_path, tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    cfg = dream_cfg(tmp_path, pool_size=3, retention="hardest")
    source = DreamSource(cfg, tokenizer, 64, 0, tmp_path)

    def record(i, rate):
        return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                "pass_rate": rate}

    assert source.add(record(0, 0.5)) and not source.add(record(0, 0.5))  # duplicate
    assert not source.add({"messages": [{"role": "user", "content": "Q0 "}, {"role": "assistant", "content": "a0"}]})
    for i, rate in [(1, 0.0), (2, 0.9), (3, 0.0)]:
        source.add(record(i, rate))
    kept = sorted(r["messages"][0]["content"] for r in source.records.values())
    assert kept == ["q0", "q1", "q3"]  # the most-passed (q2) went first
    assert len(read_jsonl(tmp_path / "dream" / "examples.jsonl")) == 4  # the file keeps every arrival


def test_bad_seed_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"situation": "fine"}\n{"situation": ""}\n')
    with pytest.raises(ToolkitError, match="situation") as err:
        load_seeds(str(bad))
    assert err.value.where == f"{bad}:2"
    with pytest.raises(ToolkitError, match="not found"):
        load_seeds(str(tmp_path / "missing.jsonl"))


def test_a_dream_recipe_needs_seeds_and_an_evaluator():
    with pytest.raises(ValueError, match="seeds"):
        DreamConfig(enabled=True, evaluator=RulesEvaluatorConfig(must_include=["x"]))
    with pytest.raises(ValueError, match="evaluator"):
        DreamConfig(enabled=True, seeds="s.jsonl")


# ---------------------------------------------------------------- inside the training loop, and standalone


def dream_recipe(tmp_path: Path, model_dir: Path, name: str, **train) -> Path:
    from test_train import write_recipe

    recipe = write_recipe(tmp_path, model_dir, name, dropout=0.0, max_steps=12, checkpoint_every=6, eval_every=6,
                          **train)
    data = json.loads(recipe.read_text())
    data["dream"] = {"enabled": True, "every": 4, "seeds": str(write_seeds(tmp_path / "seeds.jsonl")),
                     "scenarios_per_cycle": 2, "samples_per_scenario": 2, "scenario_max_new_tokens": 8,
                     "response_max_new_tokens": 8, "evaluator": {"kind": "rules", "must_include": ["understood"]},
                     "on_failure": {"strategy": "reference"}, "tier": 1}
    data["curriculum"] = {"sampler": "ucb1", "caps": {"dream": 0.5}}
    recipe.write_text(json.dumps(data))
    return recipe


def test_finetune_dreams_trains_on_its_failures_and_resumes_exactly(tmp_path, tiny_model_dir):
    from test_train import draws, losses, run_toolkit

    whole = dream_recipe(tmp_path, tiny_model_dir, "whole")
    run_toolkit("finetune", str(whole))
    run_dir = tmp_path / "whole"
    journal = read_jsonl(run_dir / "journal.jsonl")
    dreams = [e for e in journal if e["kind"] == "dream"]
    assert [e["step"] for e in journal if e["kind"] == "dream_cycle"] == [4, 8, 12]
    assert len(dreams) == 12 and all(REQUIRED <= set(e["data"]) for e in dreams)
    drawn = draws(run_dir)
    assert "dream" not in {drawn[s] for s in range(1, 5)} and "dream" in drawn.values()  # after the first cycle
    assert read_jsonl(run_dir / "dream" / "examples.jsonl")

    split = dream_recipe(tmp_path, tiny_model_dir, "split")
    run_toolkit("finetune", str(split), "--stop-at", "6")
    run_toolkit("finetune", str(split), "--resume")
    assert losses(tmp_path / "split") == losses(run_dir) and draws(tmp_path / "split") == drawn
    cycles = [e["data"] for e in read_jsonl(tmp_path / "split" / "journal.jsonl") if e["kind"] == "dream_cycle"]
    assert cycles == [e["data"] for e in journal if e["kind"] == "dream_cycle"]


def test_toolkit_dream_runs_standalone(tmp_path, tiny_model_dir):
    from test_train import run_toolkit

    recipe = dream_recipe(tmp_path, tiny_model_dir, "standalone")
    out = run_toolkit("dream", str(recipe), "--cycles", "2")
    assert "examples.jsonl" in out.stdout
    journal = read_jsonl(tmp_path / "standalone" / "journal.jsonl")
    assert [e["kind"] for e in journal].count("dream_cycle") == 2
    assert read_jsonl(tmp_path / "standalone" / "dream" / "examples.jsonl")


def test_journal_event_schema_for_dream(tmp_path, tiny_model_and_tokenizer):
    from toolkit.dream.command import run_cycle

    model, tokenizer = tiny_model_and_tokenizer
    loop = make_loop(tmp_path, tokenizer, dream_cfg(tmp_path))
    run_cycle(loop, model, tokenizer, 5, 0.1, None, Journal(tmp_path / "journal.jsonl"))
    for event in read_jsonl(tmp_path / "journal.jsonl"):
        assert set(event) == {"step", "time", "kind", "severity", "data"}


SCRIPT: list[bool] = []  # the scripted evaluator's verdicts, consumed in order


def scripted(scenario: str, response: str) -> float:
    return 1.0 if SCRIPT.pop(0) else 0.0


def test_adaptive_temperature_is_exactly_base_plus_gain_times_the_window_failure_rate(tmp_path, tiny_model_and_tokenizer):
    """Seed 003: T = 0.5 + 0.7 x the failure rate of the last 20 outcomes, with a scripted evaluator."""
    model, tokenizer = tiny_model_and_tokenizer
    cfg = dream_cfg(tmp_path, evaluator={"kind": "python", "function": f"{__name__}:scripted"},
                    on_failure={"strategy": "reference"}, scenarios_per_cycle=4, samples_per_scenario=2)
    loop = make_loop(tmp_path, tokenizer, cfg)
    outcomes: list[bool] = []
    plan = [[True] * 8, [False] * 8, [True, False] * 4, [False] * 6 + [True] * 2, [True] * 8]
    for n, verdicts in enumerate(plan):
        SCRIPT[:] = list(verdicts)
        window = outcomes[-20:]
        expected = 0.5 + 0.7 * (1 - sum(window) / len(window)) if window else 1.2
        summary, _ = loop.cycle(model, tokenizer, step=5 * (n + 1), progress=0.5)
        assert summary["temperature"] == pytest.approx(expected, abs=1e-12), n
        outcomes += verdicts
    assert not SCRIPT


@pytest.mark.parametrize("progress, expected", [(0.0, 1.2), (0.05, 1.2), (0.3, 0.9), (0.7, 0.7), (0.95, 0.5)])
def test_schedule_mode_follows_seed_003(tmp_path, tiny_model_and_tokenizer, progress, expected):
    model, tokenizer = tiny_model_and_tokenizer
    loop = make_loop(tmp_path, tokenizer, dream_cfg(tmp_path, scenario_temperature={"mode": "schedule"},
                                                    scenarios_per_cycle=1, samples_per_scenario=1))
    summary, _ = loop.cycle(model, tokenizer, step=5, progress=progress)
    assert summary["temperature"] == expected


def test_two_processes_dream_once_and_draw_the_same(tmp_path, tiny_model_dir):
    """Rank 0 dreams and broadcasts its pool, so both ranks draw (and train on) the same dream batches."""
    from test_train import draws, launch_two_processes, losses, run_toolkit

    single = dream_recipe(tmp_path, tiny_model_dir, "single", batch_size=2, grad_accum=2)
    double = dream_recipe(tmp_path, tiny_model_dir, "double", batch_size=2, grad_accum=1)
    run_toolkit("finetune", str(single))
    launch_two_processes(double)
    assert draws(tmp_path / "double") == draws(tmp_path / "single") and "dream" in draws(tmp_path / "double").values()
    one, two = losses(tmp_path / "single"), losses(tmp_path / "double")
    assert all(abs(one[s] - two[s]) <= 1e-4 for s in one)
    cycles = [e for e in read_jsonl(tmp_path / "double" / "journal.jsonl") if e["kind"] == "dream_cycle"]
    assert len(cycles) == 3  # written once, by rank 0


def test_a_seed_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_bytes(b'{"situation": "fine"}\n\xff\xfe\n')
    with pytest.raises(ToolkitError, match="not UTF-8") as err:
        load_seeds(str(bad))
    assert err.value.where == f"{bad}:2"


def test_the_dream_source_needs_a_name_of_its_own(tmp_path, tiny_model_dir):
    from test_train import run_toolkit

    recipe = dream_recipe(tmp_path, tiny_model_dir, "clash")
    out = run_toolkit("validate", str(recipe), "--set", "dream.source=chat", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--set dream.source=chat: 'chat' is already a data source's name" in out.stderr  # names the override


def test_a_teacher_that_cannot_load_is_named_by_its_key(tmp_path):
    from toolkit.dream.command import _teacher
    from toolkit.errors import ToolkitError
    from toolkit.recipe import Recipe

    recipe = Recipe.model_validate({"dream": {"on_failure": {"teacher": str(tmp_path)}}})  # an empty directory
    with pytest.raises(ToolkitError) as err:
        _teacher(recipe)
    assert (err.value.key, err.value.where) == ("dream.on_failure.teacher", str(tmp_path))
