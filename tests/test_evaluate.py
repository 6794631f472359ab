"""Held-out evaluation (toolkit/evaluate.py, `toolkit eval`, the recipe's `eval:` section) and the shipped data's
train / held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.errors import ToolkitError
from toolkit.journal import read_jsonl

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data"
TRAINING_FILES = [DATA / f"directive-tier{t}.jsonl" for t in (1, 2, 3)]
HELD_OUT_PAIRS = DATA / "directive-pairs-eval.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _normal(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- the shipped data


def test_held_out_prompts_and_replies_never_appear_in_training_data():
    trained = {_normal(m["content"]) for path in TRAINING_FILES for row in _rows(path)
               for m in row["messages"] if m["role"] != "system"}
    trained |= {_normal(s["reference"]) for s in _rows(DATA / "dream-seeds.jsonl") if s.get("reference")}
    pairs = _rows(HELD_OUT_PAIRS)
    held_out = [p["prompt"] for p in pairs] + [p["positive"] for p in pairs]
    held_out += [e["prompt"] for e in _rows(DATA / "directive-eval.jsonl")]
    assert len(pairs) >= 30
    assert not [t for t in held_out if _normal(t) in trained]


def test_held_out_pairs_come_from_the_held_out_file():
    held = _rows(DATA / "directive-heldout.jsonl")
    assert [p["prompt"] for p in _rows(HELD_OUT_PAIRS)] == [
        next(m["content"] for m in r["messages"] if m["role"] == "user") for r in held]
    training_pairs = {_normal(p["prompt"]) for p in _rows(DATA / "directive-pairs.jsonl")}
    assert not training_pairs & {_normal(p["prompt"]) for p in _rows(HELD_OUT_PAIRS)}


# ---------------------------------------------------------------- a run to evaluate

PAIRS = [
    {"prompt": "Use tabs for file 3.", "positive": "Understood: tabs for file 3.",
     "negative": "I suggest spaces instead."},
    {"prompt": "Rename tmp to buffer.", "positive": "Done: buffer.", "negative": "You should keep tmp."},
    {"prompt": "Sort 3, 1, 2 descending.", "positive": "Sure: 3, 2, 1.", "negative": "Ascending is better to read."},
    {"prompt": "Call me Sam.", "positive": "Sure, Sam.", "negative": "I would suggest a nickname instead."},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A run directory holding a LoRA adapter (random B, so tuned differs from base) and its recipe."""
    from toolkit.lora import attach_lora, save_adapter
    from toolkit.model import load_model
    from toolkit.recipe import LoraConfig, ModelConfig

    run = tmp_path_factory.mktemp("eval") / "run"
    model = attach_lora(load_model(str(tiny_model_dir), ModelConfig(name_or_path=str(tiny_model_dir))),
                        LoraConfig(r=4, alpha=8, targets="hybrid-all"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    save_adapter(model, run / "adapter")
    recipe = {"run": {"output_dir": str(run)}, "model": {"name_or_path": str(tiny_model_dir)},
              "eval": {"max_new_tokens": 6, "samples": 2}}
    (run / "resolved_recipe.yaml").write_text(json.dumps(recipe))
    (run / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return run


@pytest.fixture(scope="module")
def report(run_dir):
    from toolkit.evaluate import evaluate_run

    return evaluate_run(run_dir, run_dir / "pairs.jsonl")


def _independent_margins(model, tokenizer) -> list[float]:
    """Summed log p of each reply and its <|im_end|> after the ChatML prompt: one unbatched full-logits forward."""
    margins = []
    for pair in PAIRS:
        user = [{"role": "user", "content": pair["prompt"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        scores = []
        for reply in (pair["positive"], pair["negative"]):
            full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": reply}], tokenize=False)
            end = full.index("<|im_end|>", len(prompt)) + len("<|im_end|>")
            enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=False)
            ids = torch.tensor([enc["input_ids"]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            picked = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if s >= len(prompt) and e <= end and e > s]
            scores.append(sum(float(logp[k - 1, ids[0, k]]) for k in picked))
        margins.append(scores[0] - scores[1])
    return margins


def test_margins_equal_an_independent_computation(report, run_dir, tiny_model_dir):
    from peft import PeftModel

    from toolkit.model import load_model, load_tokenizer
    from toolkit.recipe import ModelConfig

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir), cfg)
    base = load_model(str(tiny_model_dir), cfg).eval()
    expected_base = _independent_margins(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    expected_tuned = _independent_margins(tuned, tokenizer)
    rows = report["per_prompt"]
    np.testing.assert_allclose([r["base_margin"] for r in rows], expected_base, atol=1e-3)
    np.testing.assert_allclose([r["tuned_margin"] for r in rows], expected_tuned, atol=1e-3)
    assert not np.allclose(expected_base, expected_tuned, atol=1e-2)  # the adapter changes something
    assert report["margin"]["base"]["mean"] == pytest.approx(np.mean(expected_base), abs=1e-3)


def test_confidence_intervals_bracket_the_means_and_match_the_t_formula(report):
    from scipy import stats

    diffs = [r["tuned_margin"] - r["base_margin"] for r in report["per_prompt"]]
    n = len(diffs)
    half = stats.t.ppf(0.975, n - 1) * np.std(diffs, ddof=1) / np.sqrt(n)
    difference = report["margin"]["difference"]
    assert difference["mean"] == pytest.approx(np.mean(diffs))
    assert difference["ci95"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half])
    for stat in (report["margin"]["base"], report["margin"]["tuned"], difference):
        assert stat["ci95"][0] <= stat["mean"] <= stat["ci95"][1] and stat["n"] == len(PAIRS)


def test_reports_journal_and_evaluator(report, run_dir):
    saved = json.loads((run_dir / "reports" / "eval.json").read_text())
    assert saved["margin"] == report["margin"] and saved["rows"] == len(PAIRS)
    assert saved["weights"] == str(run_dir / "adapter") and saved["evaluator"] == "the default directive rules"
    rows = report["per_prompt"]
    assert all(isinstance(r["base_reply"], str) and isinstance(r["tuned_passed"], bool) for r in rows)
    assert report["pass_rate"]["tuned"] == pytest.approx(np.mean([r["tuned_passed"] for r in rows]))
    md = (run_dir / "reports" / "eval.md").read_text()
    assert "| prompt | base | tuned |" in md and md.count("\n| ") == 1 + 2  # header, eval.samples rows
    event = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "eval"][-1]
    assert event["data"]["margin_difference"] == report["margin"]["difference"]["mean"]
    assert event["data"]["pass_rate_tuned"] == report["pass_rate"]["tuned"]


@pytest.mark.parametrize("content, problem", [
    ('{"prompt": "a", "positive": "b", "negative": "c"}\n{"prompt": "a", "positive"\n', ":2: not valid JSON"),
    ('{"prompt": "a", "positive": "b", "negative": "c"}\n\n{"prompt": "a", "positive": "b"}\n',
     ":3: the row needs a non-empty string 'negative'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, content, problem):
    from toolkit.evaluate import read_eval_rows

    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ToolkitError, match=str(path) + problem):
        read_eval_rows(path)


def test_cli_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    from toolkit.cli import main

    for args in (["--prompts", str(tmp_path / "missing.jsonl")], []):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", str(run_dir), *args])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and "\n" not in err
    assert "eval.prompts" in err  # no --prompts and none in the recipe


def test_finetune_evaluates_at_the_end_when_the_recipe_asks(tmp_path, tiny_model_dir):
    from test_train import run_toolkit  # a process of its own: training sets signal handlers and global state

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p["prompt"] + f" ({i})"},
                                                     {"role": "assistant", "content": p["positive"]}]}) + "\n"
                            for i in range(4) for p in PAIRS))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:2]))
    recipe = {"run": {"output_dir": str(tmp_path / "run")}, "model": {"name_or_path": str(tiny_model_dir)},
              "lora": {"r": 2, "alpha": 4, "targets": "attention"},
              "data": {"max_length": 48, "val_fraction": 0.0, "sources": [{"name": "chat", "path": str(data)}]},
              "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 2, "eval_every": 2},
              "monitor": {"enabled": False}, "logging": {"trackers": [], "progress": False},
              "eval": {"prompts": str(tmp_path / "pairs.jsonl"), "max_new_tokens": 4}}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    run_toolkit("finetune", str(path))
    run = tmp_path / "run"
    events = read_jsonl(run / "journal.jsonl")
    kinds = [e["kind"] for e in events]
    assert kinds.index("eval") < kinds.index("run_end") and events[kinds.index("eval")]["step"] == 2
    assert events[-1]["data"]["outputs"]["eval"] == str(run / "reports" / "eval.md")
    assert json.loads((run / "reports" / "eval.json").read_text())["rows"] == 2
