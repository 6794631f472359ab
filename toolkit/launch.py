"""Make `accelerate launch --cpu --num_processes N -m toolkit ...` start N gloo processes.

accelerate's `--cpu` path starts one process and leaves multi-process CPU runs to MPI (mpirun and a
hostfile). Without them, a user asking for N CPU processes would silently train on one. We recognise
that case (the launcher sets ACCELERATE_USE_CPU and MASTER_ADDR, but no rank variable), read N from
the launch command, and start the N ranks ourselves, passing on their exit code (0, 2, 3, 128+N). As
torchrun does, the first rank to fail stops the others, so a dead rank never leaves the rest hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from toolkit.errors import ToolkitError

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # torchrun, Open MPI, Intel MPI


def requested_cpu_processes() -> int:
    """N when accelerate's --cpu launcher was asked for N > 1 processes and started only us; else 1."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() != "true" or "MASTER_ADDR" not in env:
        return 1
    if any(name in env for name in RANK_VARIABLES):
        return 1
    launcher = _parent_argv()
    for i, arg in enumerate(launcher):
        if arg in ("--num_processes", "--num-processes") and i + 1 < len(launcher):
            return int(launcher[i + 1])
        if arg.startswith(("--num_processes=", "--num-processes=")):
            return int(arg.split("=", 1)[1])
    raise ToolkitError(
        "accelerate launch --cpu asked for several processes but started one",
        where="accelerate launch",
        hint="on CPUs run `accelerate launch --multi_gpu --num_processes N -m toolkit ...` (gloo)",
    )


def run_cpu_processes(n: int) -> int:
    """Run N copies of this toolkit command as ranks 0..N-1; return the first non-zero exit code."""
    children = []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_PORT": os.environ.get("MASTER_PORT", "29500")}
        children.append(subprocess.Popen([sys.executable, "-m", "toolkit", *sys.argv[1:]], env=env))

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return supervise(children)


POLL_SECONDS = 0.2
GRACE_SECONDS = 30.0  # after SIGTERM the other ranks get this long to exit (torchrun: 30 s), then SIGKILL


def supervise(children: list[subprocess.Popen]) -> int:
    """torchrun's rule: wait for all, and when one exits non-zero stop the others (their collectives would
    wait for it forever) and return its code; 0 once every child exits 0. A signal death N is 128+N."""
    while True:
        codes = [child.poll() for child in children]
        failed = next((code for code in codes if code), None)
        if failed is not None:
            _stop(children)
            return 128 - failed if failed < 0 else failed
        if all(code == 0 for code in codes):
            return 0
        time.sleep(POLL_SECONDS)


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM the children still running (a rank checkpoints on it if it can), then SIGKILL after the grace."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for child in running:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _parent_argv() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]
