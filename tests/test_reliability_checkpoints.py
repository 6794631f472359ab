"""Checkpoints and run logs under faults (issue 14): damaged checkpoints, a kill while pruning or between
checkpoints, a resume with another process count, a non-finite loss, a rejected resume.

One short real run (4 steps, checkpoints at 2 and 4, a dream cycle at each) is copied and damaged per test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_dream import write_seeds
from test_train import REPO, losses, run_toolkit, write_recipe

from toolkit.errors import ToolkitError
from toolkit.journal import read_jsonl
from toolkit.train import checkpoint as ckpt

STEPS = 4


def recipe(work: Path, model_dir: Path, name: str, dream: bool = True, **train) -> Path:
    settings = {"max_steps": STEPS, "checkpoint_every": 2, "eval_every": 2, "keep_last": 5, **train}
    path = write_recipe(work, model_dir, name, **settings)
    if dream:  # a cycle at steps 2 and 4: the tiny model fails, so dream/examples.jsonl grows
        data = json.loads(path.read_text())
        data["dream"] = {"enabled": True, "every": 2, "seeds": str(write_seeds(work / "seeds.jsonl")),
                         "scenarios_per_cycle": 2, "samples_per_scenario": 1, "scenario_max_new_tokens": 4,
                         "response_max_new_tokens": 4, "evaluator": {"kind": "rules", "must_include": ["understood"]},
                         "on_failure": {"strategy": "reference"}, "tier": 1}
        path.write_text(json.dumps(data))
    return path


def copy_run(base: Path, work: Path, model_dir: Path, name: str, **train) -> tuple[Path, Path]:
    """The base run's directory under a new name, with a recipe pointing at it."""
    shutil.copytree(base, work / name)
    return work / name, recipe(work, model_dir, name, **train)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (out.returncode, out.stderr)
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_run():
    """The runs here are tiny: one OpenMP thread each, so a busy machine cannot stall spinning OpenMP threads
    (measured on 2 shared cores: a 3-step run 30 s with two threads, 8 s with one)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def base(work, tiny_model_dir) -> Path:
    run_toolkit("finetune", str(recipe(work, tiny_model_dir, "base")))
    run_dir = work / "base"
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [2, 4]
    assert read_jsonl(run_dir / "dream" / "examples.jsonl"), "the dream cycles made no examples"
    return run_dir


# ---------------------------------------------------------------- damaged checkpoints


FAULTS = {
    "truncated weights": ("trainable.safetensors", lambda path: truncate(path)),
    "truncated optimizer state": ("training_state.pt", lambda path: truncate(path)),
    "broken state.json": ("state.json", lambda path: path.write_text('{"step": 4, "components": {')),
    "missing adapter file": ("adapter/adapter_model.safetensors", lambda path: path.unlink()),
}


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no-manifest"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_newest_checkpoint_is_skipped_naming_the_file(base, tmp_path, fault, manifest):
    """Each fault in the newest checkpoint: the previous one is the newest complete, and the damage names
    the file. Without manifest.json (checkpoints written before it) the headers and parsers still tell."""
    name, damage = FAULTS[fault]
    if name.startswith("adapter/") and not manifest:
        pytest.skip("without a manifest only the files every checkpoint holds are required")
    shutil.copytree(base / "checkpoints", tmp_path / "checkpoints")
    newest = tmp_path / "checkpoints" / "step-4"
    damage(newest / name)
    if not manifest:
        (newest / "manifest.json").unlink(missing_ok=True)  # as checkpoints written before manifests
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-2"
    found, damaged = ckpt.find_checkpoint(tmp_path, verify_hashes=True)
    assert found.name == "step-2" and [d.file for d in damaged] == [newest / name]


def test_resume_falls_back_past_a_damaged_checkpoint_and_journals_it(base, work, tiny_model_dir):
    run_dir, path = copy_run(base, work, tiny_model_dir, "fallback")
    truncate(run_dir / "checkpoints" / "step-4" / "trainable.safetensors")
    run_toolkit("finetune", str(path), "--resume")
    skipped = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "checkpoint_skipped"]
    assert len(skipped) == 1 and skipped[0]["data"]["file"].endswith("step-4/trainable.safetensors")
    assert skipped[0]["data"]["reason"].startswith("truncated")
    resume = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "resume"]
    assert resume[-1]["data"]["checkpoint"].endswith("step-2")
    expected, rewritten = (load_file(d / "checkpoints" / "step-4" / "trainable.safetensors") for d in (base, run_dir))
    assert all(torch.equal(expected[k], rewritten[k]) for k in expected)  # replayed 3-4 exactly, re-saved step-4
    assert losses(run_dir) == losses(base)


def test_resume_with_no_complete_checkpoint_is_one_line_naming_the_file(base, work, tiny_model_dir):
    run_dir, path = copy_run(base, work, tiny_model_dir, "all-damaged")
    (run_dir / "checkpoints" / "step-4" / "training_state.pt").unlink()
    truncate(run_dir / "checkpoints" / "step-2" / "training_state.pt")
    line = one_error_line(run_toolkit("finetune", str(path), "--resume", check=False))
    assert "step-4/training_state.pt" in line and "missing" in line and "no complete checkpoint" in line


def test_a_kill_while_pruning_leaves_no_incomplete_step_directory(tmp_path, monkeypatch):
    """keep_last deletes old checkpoints; a kill part-way through a delete must not leave a `step-N` that
    claims to be complete. Simulated: the delete removes the weights, then the process dies."""
    weights, state = {"w": torch.arange(4.0)}, {"optimizer": {}, "rng": [ckpt.rng_state()]}
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, weights, state, {"components": {}}, None, keep_last=5)
    real_rmtree = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        path = Path(path)
        if (path / "trainable.safetensors").is_file():
            (path / "trainable.safetensors").unlink()
            raise KeyboardInterrupt("killed while pruning")
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, weights, state, {"components": {}}, None, keep_last=1)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    for _, path in ckpt.list_checkpoints(tmp_path):
        assert (path / "trainable.safetensors").is_file(), f"{path.name} is named complete without its weights"
    assert ckpt.latest_checkpoint(tmp_path).name == "step-3"
    ckpt.save_checkpoint(tmp_path, 4, weights, state, {"components": {}}, None, keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-4"]  # the half-pruned one went


# ---------------------------------------------------------------- process counts


def test_the_process_count_is_checked_both_ways(base):
    ckpt.check_processes(base / "checkpoints" / "step-2", 1)
    with pytest.raises(ToolkitError, match=r"written by 1 process\(es\), this run has 2"):
        ckpt.check_processes(base / "checkpoints" / "step-2", 2)


def spawn_ranks(*args: str, n: int = 2) -> list[subprocess.CompletedProcess]:
    """`toolkit ARGS` as ranks 0..n-1 of one gloo group, as `accelerate launch --num_processes n` starts them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = []
    for rank in range(n):
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
               "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    finished = []
    for proc in ranks:
        out, err = proc.communicate(timeout=300)
        finished.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return finished


def test_resuming_a_two_process_checkpoint_with_one_is_refused(work, tiny_model_dir):
    path = recipe(work, tiny_model_dir, "two", dream=False, max_steps=1, checkpoint_every=1, eval_every=100)
    assert all(rank.returncode == 0 for rank in spawn_ranks("finetune", str(path))), "the 2-process run failed"
    line = one_error_line(run_toolkit("finetune", str(path), "--resume", "--set", "train.max_steps=2", check=False))
    assert "written by 2 process(es), this run has 1" in line and "--num_processes 2" in line
    assert max(losses(work / "two")) == 1  # no step taken with half the global batch


def test_resuming_a_one_process_checkpoint_with_two_exits_2_on_every_rank(base, work, tiny_model_dir):
    """Both ranks refuse before any collective call: no gloo traceback, no hang."""
    _, path = copy_run(base, work, tiny_model_dir, "one-to-two")
    for rank in spawn_ranks("finetune", str(path), "--resume"):
        assert "written by 1 process(es), this run has 2" in one_error_line(rank)


# ---------------------------------------------------------------- the logs after a kill


def test_a_kill_between_checkpoints_then_resume_logs_each_step_once(base, work, tiny_model_dir):
    """As a SIGKILL after step 4's rows but before its checkpoint leaves it: step-4 never written, a line
    half-written in each log, a dream pair from the lost cycle. The resume rewinds every log to step-2's."""
    run_dir, path = copy_run(base, work, tiny_model_dir, "killed")
    shutil.rmtree(run_dir / "checkpoints" / "step-4")
    (run_dir / "dream" / "pairs.jsonl").write_text(json.dumps({"prompt": [], "step": 4}) + "\n")
    for name in ("metrics.jsonl", "journal.jsonl", "dream/examples.jsonl", "dream/pairs.jsonl"):
        with (run_dir / name).open("a") as f:
            f.write('{"step": 4, "kind": "dre')  # torn by the kill
    run_toolkit("finetune", str(path), "--resume")

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 2, 4]
    assert losses(run_dir) == losses(base)

    def events(run: Path) -> list[tuple[int, str]]:  # less what a resume adds: its `resume` and `data` events
        return [(e["step"], e["kind"]) for e in read_jsonl(run / "journal.jsonl")
                if e["kind"] not in ("resume", "data")]

    assert events(run_dir) == events(base)  # dream events, cycles, checkpoints, run_end: once each
    assert (run_dir / "dream" / "examples.jsonl").read_bytes() == (base / "dream" / "examples.jsonl").read_bytes()
    assert read_jsonl(run_dir / "dream" / "pairs.jsonl") == []


def test_a_torn_last_line_is_ignored_and_a_bad_middle_line_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ToolkitError, match=r"metrics.jsonl:2: not a JSON line"):
        read_jsonl(path)


# ---------------------------------------------------------------- saved consistently


def test_a_non_finite_loss_checkpoints_the_state_from_before_the_failed_step(work, tiny_model_dir):
    """lr 1e30 blows the weights up after the first update, so a later step's loss is NaN. The guard's
    checkpoint must equal one taken by --stop-at just before that step: --resume then replays it exactly."""
    settings = {"dream": False, "lr": 1e30, "eval_every": 100, "checkpoint_every": 100, "max_steps": 3}
    out = run_toolkit("finetune", str(recipe(work, tiny_model_dir, "nan", **settings)), check=False)
    assert out.returncode == 3, out.stderr
    stop = next(e for e in read_jsonl(work / "nan" / "journal.jsonl") if e["kind"] == "guard_stop")
    step = stop["step"]
    assert "training loss is nan" in stop["data"]["reason"] and step >= 1
    run_toolkit("finetune", str(recipe(work, tiny_model_dir, "nan-stopped", **settings)), "--stop-at", str(step))
    guard, planned = (work / name / "checkpoints" / f"step-{step}" for name in ("nan", "nan-stopped"))
    a, b = (json.loads((d / "state.json").read_text()) for d in (guard, planned))
    assert a["components"] == b["components"] and a["step"] == b["step"] == step
    a, b = (torch.load(d / "training_state.pt", weights_only=True) for d in (guard, planned))
    # (param_groups' lr is not compared: every step sets it from the curriculum before anything reads it)
    torch.testing.assert_close((a["optimizer"]["state"], a["rng"]), (b["optimizer"]["state"], b["rng"]),
                               rtol=0, atol=0, equal_nan=True)
    a, b = (load_file(d / "trainable.safetensors") for d in (guard, planned))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- what a rejected resume leaves


def test_a_rejected_resume_leaves_the_run_directory_as_it_was(base, work, tiny_model_dir):
    run_dir, path = copy_run(base, work, tiny_model_dir, "rejected")
    names = ("resolved_recipe.yaml", "metrics.jsonl", "journal.jsonl")
    before = {name: (run_dir / name).read_bytes() for name in names}
    line = one_error_line(run_toolkit("finetune", str(path), "--resume", "--set", "lora.r=8", check=False))
    assert "lora.r" in line
    assert {name: (run_dir / name).read_bytes() for name in before} == before
