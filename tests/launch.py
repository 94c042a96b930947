"""Launching the multi-process tests."""

import os
import subprocess
import sys
from pathlib import Path


def torchrun(
    args: list[str], timeout: float, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Two local ranks; `--standalone` picks a free port, so parallel runs do not collide.
    `timeout` is a hard limit: a hang fails the test instead of the CI job."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *args]
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
