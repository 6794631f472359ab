"""Dream cycles and audits beside training (`dream.async`, `monitor.async`), deterministic and resumable.

At the due step the training thread freezes a copy of the weights and hands the work to one background
thread; the result is applied at a fixed later step (`join`: the next due step, or the run's last), so the
same recipe gives the same numbers whatever the thread timing. The work only generates and judges (see
`DreamLoop.dream`, `Monitor.audit`): every change to the run's state happens on the training thread at the
join. Sampling uses private generators (`generate.sample`), never the global RNG the training thread's
dropout draws from.

A checkpoint holds the pending work as JSON: {"job", "join", "result"}. It waits for work started before
its step (so the result is in it); work started at its own step is recorded without a result and redone on
resume from the checkpoint's weights, which are exactly that work's snapshot.
"""

from __future__ import annotations

import copy
import json
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor


def frozen_copy(model):
    """A copy for generation that shares every tensor training does not change (the frozen base under LoRA)
    and copies the ones it does (the adapter; under a full fine-tune, every weight). Memory: the trainable
    weights once more; tensors are shared, modules are new Python objects."""
    memo = {id(p): p for p in model.parameters() if not p.requires_grad}
    memo.update({id(b): b for b in model.buffers()})
    frozen = copy.deepcopy(model, memo)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen.eval()


class Background:
    """One worker thread for every component's background work, and the weight snapshots it runs on
    (one per step: a dream cycle and an audit due at the same step share it; a snapshot lives as long as
    work that uses it, so at most one or two exist at a time)."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolkit-background")
        self._snapshot: tuple[int, weakref.ref] | None = None
        self._tokenizer = None

    def snapshot(self, model, tokenizer, step: int) -> tuple:
        """The weights as they are at `step`, and a tokenizer of the worker's own (the Rust tokenizer is
        not safe to call from two threads at once)."""
        frozen = self._snapshot[1]() if self._snapshot and self._snapshot[0] == step else None
        if frozen is None:
            frozen = frozen_copy(model)
            self._snapshot = (step, weakref.ref(frozen))
        if self._tokenizer is None:
            self._tokenizer = copy.deepcopy(tokenizer)
        return frozen, self._tokenizer

    def submit(self, work, *args) -> Future:
        """Run `work(*args)` on the worker; the future's result is (result, seconds it took)."""
        return self._pool.submit(_timed, work, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _timed(work, *args):
    start = time.perf_counter()
    result = work(*args)
    return result, time.perf_counter() - start


class Pending:
    """Work handed to the background at step `job["step"]`, applied at step `join`."""

    def __init__(self, job: dict, join: int, future: Future | None = None, result=None, seconds: float = 0.0):
        self.job, self.join, self.future, self._result, self.seconds = job, join, future, result, seconds

    @property
    def step(self) -> int:
        return self.job["step"]

    def has_result(self) -> bool:
        return self._result is not None or (self.future is not None and self.future.done())

    def result(self):
        """The result as JSON types (as a checkpoint would give it back), waiting for the worker if it is still
        running; the worker's exceptions surface here."""
        if self._result is None:
            result, self.seconds = self.future.result()
            self._result = json.loads(json.dumps(result))
        return self._result

    def settle(self, checkpoint_step: int) -> None:
        """Before a checkpoint at `checkpoint_step`: wait for work started before it. Work started at that very
        step is saved without its result and redone on resume from the checkpoint's weights (`resubmit`)."""
        if self.step < checkpoint_step and self.future is not None:  # other ranks hold a copy with no future
            self.result()

    def resubmit(self, background: "Background", run, model, tokenizer) -> None:
        """After a resume: start again the work a checkpoint saved without its result."""
        if not self.has_result():
            frozen, own_tokenizer = background.snapshot(model, tokenizer, self.step)
            self.future = background.submit(run, self.job, frozen, own_tokenizer)

    def state_dict(self) -> dict:
        """JSON; never waits (the result is None while the work runs)."""
        return {"job": self.job, "join": self.join, "result": self.result() if self.has_result() else None,
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict) -> "Pending":
        return cls(state["job"], state["join"], result=state["result"], seconds=state.get("seconds", 0.0))


def join_step(due: int, every: int, max_steps: int) -> int:
    """Where work started at `due` is applied: the next due step, or the run's last step."""
    return min(due + every, max_steps)
