"""Atomic checkpoints: everything needed to continue a run exactly.

`checkpoints/step-N/` holds
  trainable.safetensors  every trainable parameter (LoRA weights and gates, or the whole model)
  training_state.pt      optimizer, LR scheduler and RNG states (loaded with weights_only=True)
  sharded/               under FSDP2 or DeepSpeed, in place of trainable.safetensors and the optimizer: each
                         rank's shard of both (torch distributed checkpoint, or the DeepSpeed engine's own);
                         training_state.pt then holds the RNG states, state.json names the engine
  state.json             step, process count, the run's log sizes, and the state_dict of every other
                         component (sources, sampler, guard, ...)
  adapter/ or model/     the same weights in Hugging Face / PEFT format, for users and the server
  manifest.json          every other file with its size and xxh3 hash
It is written under a temporary name and renamed into place, and pruned by renaming it out of the
`step-N` names before deleting, so a directory named `step-N` is complete unless something outside the
toolkit damaged it. `find_checkpoint` checks that (sizes, safetensors headers, state.json) and falls back
to the newest complete one; a resume checks the hashes too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from toolkit import journal
from toolkit.errors import ToolkitError
from toolkit.util.rng import global_rng_state as rng_state  # noqa: F401 (saved in training_state.pt)
from toolkit.util.rng import set_global_rng_state as set_rng_state  # noqa: F401
from toolkit.weights import ADAPTER_CONFIG

SHARDED = "sharded"
STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
REQUIRED = ("trainable.safetensors", "training_state.pt", "state.json")  # checked when there is no manifest
# journal events written after a checkpoint's log sizes were taken that still describe it (and a resume of it)
RECORD_KINDS = frozenset({"checkpoint", "planned_stop", "guard_stop", "signal_stop", "pause", "resume",
                          "checkpoint_skipped"})


@dataclass(frozen=True)
class Damage:
    """Why a `step-N` directory cannot be resumed from: the first bad file found and what is wrong with it."""

    checkpoint: Path
    file: Path
    reason: str


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (cheap checks: sizes, headers, state.json), or None."""
    return find_checkpoint(run_dir)[0]


# ---------------------------------------------------------------- writing


def temp_dir(run_dir: Path, step: int) -> Path:
    """Where step N is written before its rename into place."""
    return checkpoints_dir(run_dir) / f".step-{step}.tmp"


def start_checkpoint(run_dir: Path, step: int) -> Path:
    """An empty temporary directory for step N (under a sharded engine every rank writes its shard into it)."""
    tmp = temp_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor] | None,
    training_state: dict,
    components: dict,
    export: Callable[[Path], None] | None,
    keep_last: int,
    log_sizes: dict[str, int] | None = None,
    started: bool = False,
) -> Path:
    """`log_sizes`: the run's log sizes at the state saved (default: now), which a resume rewinds to.
    `started`: the ranks already wrote their shards into `start_checkpoint`'s directory (`trainable` is None)."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step}"
    tmp = temp_dir(run_dir, step) if started else start_checkpoint(run_dir, step)
    sizes = log_sizes if log_sizes is not None else journal.log_sizes(run_dir)
    if trainable is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    torch.save(training_state, tmp / "training_state.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **components, "logs": sizes}, indent=1))
    if export is not None:
        export(tmp)
    _write_manifest(tmp)
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step: move the old one aside first, so step-N always exists
        old = root / f".step-{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _prune(root, [old for _, old in list_checkpoints(run_dir)[:-keep_last]])
    return final


def _prune(root: Path, doomed: list[Path]) -> None:
    """Rename out of the `step-N` names first: a kill while deleting leaves a `.pruning-` directory (removed
    at the next save), never a `step-N` without its weights."""
    for path in doomed:
        aside = root / f".pruning-{path.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
    for aside in root.glob(".pruning-*"):
        shutil.rmtree(aside, ignore_errors=True)


def _write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    listed = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "xxh3": _hash_file(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps({"files": listed}, indent=1))


def _hash_file(file: Path) -> str:
    import xxhash

    digest = xxhash.xxh3_128()
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- finding a complete one


def find_checkpoint(run_dir: Path, verify_hashes: bool = False) -> tuple[Path | None, list[Damage]]:
    """The newest complete checkpoint and the damage found in each newer one."""
    damaged = []
    for _, path in reversed(list_checkpoints(run_dir)):
        damage = check_checkpoint(path, verify_hashes)
        if damage is None:
            return path, damaged
        damaged.append(damage)
    return None, damaged


def check_checkpoint(path: Path, verify_hashes: bool = False) -> Damage | None:
    """None when every file the manifest lists is there with its size (and hash), the safetensors headers
    parse and cover their files, and state.json parses; else the first problem."""
    path = Path(path)
    listed, problem = _manifest(path)
    if problem:
        return Damage(path, path / MANIFEST, problem)
    for name, entry in listed.items():
        file = path / name
        if reason := _file_problem(file, entry, verify_hashes):
            return Damage(path, file, reason)
    return None


def _manifest(path: Path) -> tuple[dict[str, dict | None], str | None]:
    if not (path / MANIFEST).is_file():  # written before manifests: the files every checkpoint holds
        return {name: None for name in REQUIRED}, None
    try:
        listed = json.loads((path / MANIFEST).read_text())["files"]
        if all(isinstance(e["size"], int) and isinstance(e["xxh3"], str) for e in listed.values()):
            return listed, None
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        return {}, f"unreadable manifest ({type(err).__name__}: {err})"
    return {}, "unreadable manifest (an entry without an integer size and a hash)"


def _file_problem(file: Path, entry: dict | None, verify_hashes: bool) -> str | None:
    if not file.is_file():
        return "missing"
    size = file.stat().st_size
    if entry is not None and size < entry["size"]:
        return f"truncated: {size} of {entry['size']} bytes"
    if entry is not None and size != entry["size"]:
        return f"{size} bytes, the manifest says {entry['size']}"
    if entry is not None and verify_hashes and _hash_file(file) != entry["xxh3"]:
        return "content differs from the manifest's hash"
    if file.suffix == ".safetensors":
        return _safetensors_problem(file, size)
    if file.name == "state.json":
        return _json_problem(file)
    if file.suffix == ".pt" and not zipfile.is_zipfile(file):  # torch.save writes a zip; a cut one lost its index
        return "not a complete torch.save file"
    return None


def _safetensors_problem(file: Path, size: int) -> str | None:
    """The header parses and its tensors end exactly where the file does (what a truncation breaks)."""
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"safetensors header of {length} bytes runs past the end of the file ({size} bytes)"
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:  # JSONDecodeError is a ValueError
            return f"safetensors header does not parse ({type(err).__name__}: {err})"
    if 8 + length + end != size:
        return f"safetensors header needs {8 + length + end} bytes, the file holds {size} (truncated)"
    return None


def _json_problem(file: Path) -> str | None:
    try:
        state = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"not valid JSON ({err})"
    return None if isinstance(state, dict) and isinstance(state.get("step"), int) else "no integer \"step\""


# ---------------------------------------------------------------- resuming


def resume_checkpoint(run_dir: Path, processes: int, engine: str = "replicated") -> tuple[Path, list[Damage]]:
    """The checkpoint `--resume` continues from, hashes verified, written by as many processes as this run
    has; else a ToolkitError. Every process decides alike from the files, before any collective call."""
    path, damaged = find_checkpoint(run_dir, verify_hashes=True)
    if path is None and damaged:
        raise ToolkitError(f"no complete checkpoint to resume: {damaged[0].reason}", where=str(damaged[0].file),
                           hint="every checkpoint is damaged: restore the files, or start a new run")
    if path is None:
        raise ToolkitError("nothing to resume: no complete checkpoint", where=str(checkpoints_dir(run_dir)))
    check_processes(path, processes)
    check_engine(path, engine)
    return path, damaged


def check_processes(path: Path, processes: int) -> None:
    """Each process restores its own RNG state and the global batch is batch_size x grad_accum x processes,
    so a run resumes exactly only with the process count that wrote the checkpoint."""
    saved = json.loads((Path(path) / "state.json").read_text()).get("processes")
    if saved is not None and saved != processes:
        launch = "without accelerate launch" if saved == 1 else f"with accelerate launch --num_processes {saved}"
        raise ToolkitError(f"the checkpoint was written by {saved} process(es), this run has {processes}",
                           where=str(Path(path) / "state.json"), hint=f"resume {launch}")


def check_engine(path: Path, engine: str) -> None:
    """A sharded checkpoint holds its weights in the engine's own shards: resume under the engine that wrote it."""
    saved = json.loads((Path(path) / "state.json").read_text()).get("engine", "replicated")
    if saved != engine:
        config = {"fsdp2": "recipes/accelerate/fsdp2.yaml", "deepspeed": "recipes/accelerate/zero3.yaml"}
        how = f"accelerate launch --config_file {config[saved]}" if saved in config else "DDP or one process"
        raise ToolkitError(f"the checkpoint was written under {saved}, this run uses {engine}",
                           where=str(Path(path) / "state.json"), hint=f"resume with {how}")


def rewind_logs(run_dir: Path, path: Path) -> None:
    """Make the run's logs say what they said when the checkpoint was written, plus its own record:
    the rows a killed run wrote past it are about to be written again by the resume."""
    state = json.loads((Path(path) / "state.json").read_text())
    step = int(state["step"])
    if "logs" not in state:  # written before checkpoints recorded log sizes
        journal.drop_rows_after(run_dir, step)
        return

    def keep_after(name: str, row: dict) -> bool:
        return name == "journal.jsonl" and row.get("kind") in RECORD_KINDS and row.get("step", 0) <= step

    journal.rewind_logs(run_dir, state["logs"], keep_after)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor] | None, dict, dict]:
    """(trainable weights, or None in a sharded checkpoint; training state; state.json)."""
    path = Path(path)
    components = json.loads((path / "state.json").read_text())
    trainable = None if components.get("engine") else load_file(path / "trainable.safetensors")
    training_state = torch.load(path / "training_state.pt", weights_only=True, map_location="cpu")
    return trainable, training_state, components


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


# ---------------------------------------------------------------- a run's trained weights


def trained_weights(folder: Path) -> Path | None:
    """`folder`/adapter or `folder`/model, whichever holds weights (a run dir or a checkpoint dir)."""
    for name, marker in (("adapter", ADAPTER_CONFIG), ("model", "config.json")):
        if (Path(folder) / name / marker).is_file():
            return Path(folder) / name
    return None


def run_weights(run_dir: Path) -> tuple[Path, int | None]:
    """A run's trained weights: the final RUN/adapter or RUN/model, else the newest checkpoint's; and the
    newest checkpoint's step."""
    newest = latest_checkpoint(run_dir)
    step = int(STEP_DIR.match(newest.name).group(1)) if newest else None
    for folder in [run_dir] + ([newest] if newest else []):
        if (found := trained_weights(folder)) is not None:
            return found, step
    raise ToolkitError("no trained weights: neither adapter/ nor model/ nor a checkpoint", where=str(run_dir),
                       hint="evaluate a run that has written a checkpoint")
