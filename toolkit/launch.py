"""Make `accelerate launch --cpu --num_processes N -m toolkit ...` start N gloo processes.

accelerate's `--cpu` path starts one process and leaves multi-process CPU runs to MPI (mpirun and a
hostfile). Without them, a user asking for N CPU processes would silently train on one. We recognise
that case (the launcher sets ACCELERATE_USE_CPU and MASTER_ADDR but no RANK), read N from the launch
command, and re-run ourselves under torch's own launcher, which is what `--multi_gpu` does on GPUs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from toolkit.errors import ToolkitError


def requested_cpu_processes() -> int:
    """N when accelerate's --cpu launcher was asked for N > 1 processes and started only us; else 1."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() != "true" or "MASTER_ADDR" not in env or "RANK" in env:
        return 1
    launcher = _parent_argv()
    for flag in ("--num_processes", "--num-processes"):
        for i, arg in enumerate(launcher):
            if arg == flag and i + 1 < len(launcher):
                return int(launcher[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    raise ToolkitError(
        "accelerate launch --cpu asked for several processes but started one",
        where="accelerate launch",
        hint="on CPUs run `accelerate launch --multi_gpu --num_processes N -m toolkit ...` (gloo)",
    )


def relaunch_on_cpu_processes(n: int) -> None:
    """Replace this process with torch's launcher running N copies of the same toolkit command."""
    port = os.environ.get("MASTER_PORT", "29500")
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--nnodes=1",
            f"--master_addr={os.environ['MASTER_ADDR']}", f"--master_port={port}", "-m", "toolkit", *sys.argv[1:]]
    os.execv(sys.executable, args)


def _parent_argv() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]
