"""Issue 14, measured from outside: server limits (413, 422, a generation time limit that frees the model
lock), trust (a planted evaluator.skops, pickle weights, trust_remote_code from a run directory) and
processes (one rank dying under toolkit's CPU launcher, the classifier built by the main process only)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from test_dream import write_seeds
from test_evaluators import tab_rows, write_examples
from test_train import REPO, run_toolkit

from toolkit.errors import ToolkitError
from toolkit.serve.app import create_app


def journal_only(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "journal.jsonl").write_text(json.dumps({"step": 0, "time": 0.0, "kind": "run_start",
                                                       "severity": "info", "data": {}}) + "\n")
    return run_dir


def served_model(tmp_path: Path, model_dir: Path, recipe: dict | None = None) -> Path:
    """A run directory whose newest checkpoint is a full model (the tiny one), with `recipe` resolved."""
    from safetensors.torch import save_file

    run_dir = journal_only(tmp_path / "run")
    step = run_dir / "checkpoints" / "step-1"
    shutil.copytree(model_dir, step / "model")
    save_file({}, step / "trainable.safetensors")  # the files every complete checkpoint holds
    torch.save({}, step / "training_state.pt")
    (step / "state.json").write_text(json.dumps({"step": 1}))
    if recipe is not None:
        (run_dir / "resolved_recipe.yaml").write_text(json.dumps(recipe))
    return run_dir


def chat(client: TestClient, **body):
    return client.post("/api/chat", json=body)


# ---------------------------------------------------------------- server limits


def test_non_finite_or_out_of_range_values_are_422_not_500(tmp_path):
    # no checkpoint: validation must answer before any model is asked (the old server echoed NaN into a 500)
    client = TestClient(create_app(journal_only(tmp_path / "run")), raise_server_exceptions=False)
    nan = client.post("/api/chat", content=b'{"prompt": "hi", "temperature": NaN}',
                      headers={"content-type": "application/json"})
    assert nan.status_code == 422 and "temperature" in nan.json()["detail"]
    for body in ({"prompt": "hi", "temperature": 1e999}, {"prompt": "hi", "top_p": 0},
                 {"prompt": "hi", "max_new_tokens": 0}, {"prompt": "hi", "max_new_tokens": 10**6}):
        r = client.post("/api/chat", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert isinstance(r.json()["detail"], str)


def test_a_megabyte_body_is_413_before_it_is_read(tmp_path):
    client = TestClient(create_app(journal_only(tmp_path / "run")), raise_server_exceptions=False)
    big = json.dumps({"prompt": "x" * 1_000_000}).encode()
    r = client.post("/api/chat", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
    streamed = client.post("/api/chat", content=iter([big[:40_000], big[40_000:80_000]]),  # no Content-Length
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_a_prompt_over_the_token_limit_is_422(tmp_path, tiny_model_dir):
    run_dir = served_model(tmp_path, tiny_model_dir, {"serve": {"max_prompt_tokens": 64}})
    client = TestClient(create_app(run_dir))
    long = chat(client, prompt="tabs and spaces " * 200, max_new_tokens=2)
    assert long.status_code == 422 and "max_prompt_tokens" in long.json()["detail"]
    assert chat(client, prompt="tabs", max_new_tokens=2).status_code == 200


def test_a_long_generation_is_cut_at_the_time_limit_and_frees_the_lock(tmp_path, tiny_model_dir):
    run_dir = served_model(tmp_path, tiny_model_dir, {"serve": {"generation_timeout_s": 1.0}})
    app = create_app(run_dir)
    client = TestClient(app)
    assert chat(client, prompt="warm up", max_new_tokens=1).status_code == 200  # loads the model
    holder = app.state.holder
    from toolkit.dream.generate import eos_token_ids

    eos, calls = eos_token_ids(holder.model, holder.tokenizer), []

    def slow_and_endless(module, args, logits):  # ~20 tokens a second that never end the turn
        calls.append(1)
        if len(calls) > 200:  # a server without a time limit would go on for minutes: fail in ~10 s instead
            raise RuntimeError("generation was not cut")
        time.sleep(0.05)
        logits[..., eos] = float("-inf")
        return logits

    hook = holder.model.lm_head.register_forward_hook(slow_and_endless)
    try:
        long = {}
        start = time.monotonic()
        thread = threading.Thread(target=lambda: long.update(r=chat(client, prompt="go on", max_new_tokens=2048,
                                                                    temperature=0)))
        thread.start()
        time.sleep(0.3)  # the long reply holds the lock now
        short = chat(client, prompt="and you?", max_new_tokens=2, temperature=0)
        waited = time.monotonic() - start
        thread.join(timeout=30)
    finally:
        hook.remove()
    assert long["r"].status_code == 200, long["r"].text
    assert long["r"].json()["stopped"] == "time_limit" and long["r"].json()["reply"]
    assert short.status_code == 200 and short.json()["stopped"] == "max_new_tokens"
    assert waited < 6, waited  # the second request waited for the cut, not for 2048 tokens


# ---------------------------------------------------------------- trust


NODE_IDS = itertools.count(1)


def skops_node(cls: str, module: str, loader: str, content, **extra) -> dict:
    return {"__class__": cls, "__module__": module, "__loader__": loader, "content": content,
            "__id__": next(NODE_IDS), **extra}


def plant_skops(path: Path, module: str, function: str, code: str) -> None:
    """A skops file whose loading calls module.function(code, {}): the shape skops uses for ZoneInfo(key)."""
    import zipfile

    import skops

    args = skops_node("tuple", "builtins", "TupleNode", [
        skops_node("str", "builtins", "JsonNode", json.dumps(code), is_json=True),
        skops_node("dict", "builtins", "DictNode", {},
                   key_types=skops_node("list", "builtins", "ListNode", []))])
    schema = skops_node(function, module, "ConstructorFromReduceNode", args, protocol=2,
                        _skops_version=skops.__version__)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("schema.json", json.dumps(schema))


@pytest.mark.parametrize("module, function", [("numpy.testing._private.utils", "runstring"), ("builtins", "exec")])
def test_a_planted_evaluator_skops_is_refused_without_running(tmp_path, module, function):
    import hashlib

    import sklearn

    from toolkit.dream.evaluators import build_evaluator
    from toolkit.recipe import evaluator_config

    examples = write_examples(tmp_path / "labels.jsonl", tab_rows())
    dream = tmp_path / "run" / "dream"
    dream.mkdir(parents=True)
    marker = tmp_path / "pwned"
    plant_skops(dream / "evaluator.skops", module, function, f"open({str(marker)!r}, 'w').write('ran')")
    # an info file that vouches for it, so the loader loads instead of retraining
    (dream / "evaluator.json").write_text(json.dumps({
        "sha256": hashlib.sha256(examples.read_bytes()).hexdigest(), "sklearn": sklearn.__version__,
        "input": "response"}))
    with pytest.raises(ToolkitError) as err:
        build_evaluator(evaluator_config(kind="classifier", examples=str(examples)), tmp_path / "run")
    assert not marker.exists()
    line = err.value.one_line()
    assert "\n" not in line and str(dream / "evaluator.skops") in line and f"{module}.{function}" in line


def pickle_model(model_dir: Path, out: Path) -> Path:
    """The tiny model as a Hugging Face directory with pytorch_model.bin (pickle) and no safetensors."""
    from safetensors.torch import load_file

    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(model_dir / "model.safetensors"), out / "pytorch_model.bin")
    return out


def tiny_adapter(model_dir: Path, out: Path) -> Path:
    """A rank-2 LoRA adapter of the tiny model, in PEFT format (safetensors)."""
    from toolkit.lora import attach_lora, save_adapter
    from toolkit.model import load_model
    from toolkit.recipe import LoraConfig, ModelConfig

    model = attach_lora(load_model(str(model_dir), ModelConfig(name_or_path=str(model_dir))),
                        LoraConfig(r=2, alpha=4, targets="attention"))
    save_adapter(model, out)
    return out


def pickle_adapter(model_dir: Path, out: Path) -> Path:
    """The adapter saved as adapter_model.bin only."""
    from safetensors.torch import load_file

    tiny_adapter(model_dir, out)
    torch.save(load_file(out / "adapter_model.safetensors"), out / "adapter_model.bin")
    (out / "adapter_model.safetensors").unlink()
    return out


def dream_recipe(tmp_path: Path, model_dir: Path) -> Path:
    recipe = {"run": {"output_dir": str(tmp_path / "dreams")}, "model": {"name_or_path": str(model_dir)},
              "dream": {"seeds": str(write_seeds(tmp_path / "seeds.jsonl")), "scenarios_per_cycle": 1,
                        "samples_per_scenario": 1, "scenario_max_new_tokens": 2, "response_max_new_tokens": 2,
                        "evaluator": {"kind": "rules", "must_include": ["understood"]},
                        "on_failure": {"strategy": "reference"}}}
    path = tmp_path / "dream.yaml"
    path.write_text(json.dumps(recipe))
    return path


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    from toolkit.lora import load_adapter
    from toolkit.model import load_model
    from toolkit.recipe import ModelConfig

    pickled = pickle_model(tiny_model_dir, tmp_path / "bin-model")
    adapter = pickle_adapter(tiny_model_dir, tmp_path / "bin-adapter")
    refused_model = run_toolkit("dream", str(dream_recipe(tmp_path, pickled)), check=False)
    refused_adapter = run_toolkit("dream", str(dream_recipe(tmp_path, tiny_model_dir)), "--adapter", str(adapter),
                                  check=False)
    for out, name in ((refused_model, "pytorch_model.bin"), (refused_adapter, "adapter_model.bin")):
        assert out.returncode == 2, out.stderr[-2000:]
        assert out.stderr.count("\n") == 1 and name in out.stderr and "allow_pickle" in out.stderr

    allowed = ModelConfig(name_or_path=str(pickled), allow_pickle=True)
    model = load_model(str(pickled), allowed)
    assert torch.equal(model.lm_head.weight, load_model(str(tiny_model_dir), allowed).lm_head.weight)
    assert load_adapter(model, adapter, allow_pickle=True).peft_config["default"].r == 2


def test_serve_and_rank_take_trust_remote_code_from_the_command_line_only(tmp_path, tiny_model_dir, monkeypatch):
    """A run directory's resolved recipe that says trust_remote_code: true is not obeyed; the flags are."""
    import toolkit.model
    from analysis.rank import rank_report

    planted = {"model": {"name_or_path": str(tiny_model_dir), "trust_remote_code": True}}
    run_dir = served_model(tmp_path, tiny_model_dir, planted)
    tiny_adapter(tiny_model_dir, run_dir / "adapter")  # what rank reads
    seen = []

    def spy(path, model_cfg, *args, **kwargs):
        seen.append((model_cfg.trust_remote_code, model_cfg.allow_pickle))
        raise ToolkitError("spy stops here")

    monkeypatch.setattr(toolkit.model, "load_tokenizer", spy)
    monkeypatch.setattr(toolkit.model, "load_model", spy)
    for flags in ({}, {"trust_remote_code": True, "allow_pickle": True}):  # no flags, then both flags
        expected = (bool(flags), bool(flags))
        seen.clear()
        client = TestClient(create_app(run_dir, **flags))
        assert chat(client, prompt="hi", max_new_tokens=1).status_code == 500  # the spy's stop
        assert seen and all(loaded == expected for loaded in seen), seen
        seen.clear()
        with pytest.raises(ToolkitError, match="spy stops here"):
            rank_report(run_dir, **flags)
        assert seen and all(loaded == expected for loaded in seen), seen


# ---------------------------------------------------------------- processes


def test_launch_stops_the_other_ranks_when_one_dies(monkeypatch):
    """Rank 1 exits 3 while rank 0 sleeps: the launcher ends rank 0 and returns 3 at once (it used to wait)."""
    import signal

    from toolkit import launch

    started, real_popen = [], subprocess.Popen

    def fake_rank(command, env):
        script = "import time; time.sleep(30)" if env["RANK"] == "0" else "import sys, time; time.sleep(0.5); sys.exit(3)"
        started.append(real_popen([sys.executable, "-c", script], env=env))
        return started[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", fake_rank)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    start = time.monotonic()
    try:
        code = launch.run_cpu_processes(2)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for child in started:
            if child.poll() is None:
                child.kill()
    assert code == 3 and time.monotonic() - start < 10
    assert started[0].poll() is not None  # the sleeper was stopped, not left behind


RANK_SCRIPT = """
import json, sys
from accelerate import PartialState
state = PartialState(cpu=True)
from toolkit.dream.command import build_dream
from toolkit.model import load_tokenizer
from toolkit.recipe import Recipe
recipe = Recipe.model_validate(json.loads(sys.argv[1]))
dream = build_dream(recipe, load_tokenizer(recipe.model.name_or_path, recipe.model), write=state.is_main_process)
print(json.dumps({"rank": state.process_index, "trained": dream.evaluator.trained, "teacher": dream.teacher is not None}))
"""


def test_two_ranks_train_the_classifier_once_and_load_the_teacher_once(tmp_path, tiny_model_dir):
    """Under two gloo processes the main one trains and writes evaluator.skops (the other waits, then loads
    it) and alone loads the teacher model."""
    examples = write_examples(tmp_path / "labels.jsonl", tab_rows())
    recipe = {"run": {"output_dir": str(tmp_path / "run")}, "model": {"name_or_path": str(tiny_model_dir)},
              "dream": {"seeds": str(write_seeds(tmp_path / "seeds.jsonl")),
                        "evaluator": {"kind": "classifier", "examples": str(examples)},
                        "on_failure": {"strategy": "reference", "teacher": str(tiny_model_dir)}}}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, json.dumps(recipe)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    for rank, (out, err) in zip(ranks, outputs):
        assert rank.returncode == 0, err[-3000:]
    reports = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=lambda r: r["rank"])
    assert reports == [{"rank": 0, "trained": True, "teacher": True}, {"rank": 1, "trained": False, "teacher": False}]


def test_other_ranks_get_no_judge_and_never_run_a_cycle(tmp_path, monkeypatch):
    from toolkit.dream import evaluators
    from toolkit.dream.loop import DreamLoop
    from toolkit.dream.pool import DreamSource
    from toolkit.recipe import DreamConfig, evaluator_config

    monkeypatch.setattr(evaluators, "load_judge", lambda *a: pytest.fail("a judge loaded on a non-main rank"))
    judge = evaluator_config(kind="judge", model="some/judge")
    assert evaluators.build_evaluator(judge, tmp_path, main=False) is None
    cfg = DreamConfig(seeds=str(write_seeds(tmp_path / "seeds.jsonl")), evaluator=judge)
    loop = DreamLoop(cfg, None, DreamSource(cfg, None, 64, 0, tmp_path, write=False), tmp_path, 0, write=False)
    with pytest.raises(RuntimeError, match="main process only"):
        loop.cycle(None, None, step=1, progress=0.0)


def test_eval_ignores_trust_remote_code_in_the_run_directory(monkeypatch, tmp_path):
    """`toolkit eval RUN` loads with the command line's trust settings, never the run directory's recipe."""
    import yaml

    from toolkit import evaluate

    seen = {}

    def fake_score(model_cfg, *args, **kwargs):
        seen.update(trust_remote_code=model_cfg.trust_remote_code, allow_pickle=model_cfg.allow_pickle)
        raise RuntimeError("stop after loading settings")

    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved_recipe.yaml").write_text(yaml.safe_dump(
        {"run": {"name": "r", "output_dir": str(run)}, "model": {"name_or_path": "x", "trust_remote_code": True,
                                                                 "allow_pickle": True}}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "positive": "b", "negative": "c"}\n')
    monkeypatch.setattr(evaluate, "run_weights", lambda run_dir: (run_dir, None))
    monkeypatch.setattr(evaluate, "build_eval_evaluator", lambda recipe, run_dir: (None, "none"))
    monkeypatch.setattr(evaluate, "base_model_path", lambda recipe, run_dir: "x")
    monkeypatch.setattr(evaluate, "score_base_and_tuned", fake_score)
    with pytest.raises(RuntimeError, match="stop after"):
        evaluate.evaluate_run(run, prompts)
    assert seen == {"trust_remote_code": False, "allow_pickle": False}
    with pytest.raises(RuntimeError, match="stop after"):
        evaluate.evaluate_run(run, prompts, trusted={"trust_remote_code": True, "allow_pickle": False})
    assert seen["trust_remote_code"] is True
