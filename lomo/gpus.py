"""`python -m lomo.gpus N -- COMMAND ...`: run COMMAND on N GPUs of this machine that no other
job holds, exported as CUDA_VISIBLE_DEVICES.

Snakemake's `resources: gpus` bounds how many GPUs the running jobs ask for in total, not which
ones: without a claim every job's rank 0 would take GPU 0. Each GPU id is claimed by an
exclusive lock on a file (`fcntl.flock`) that COMMAND inherits through `exec`: the kernel
releases it when COMMAND exits or is killed, SIGKILL included, so no id stays claimed after a
crash. A job that finds too few free ids releases what it holds and waits (two jobs never hold
half of each other's GPUs). The pool is CUDA_VISIBLE_DEVICES if set, else every GPU torch sees.
Under SLURM (SLURM_JOB_ID set) the scheduler has given the job its own GPUs, and on a machine
without GPUs the ranks are CPU processes (the rehearsal profile): COMMAND runs as it is.
"""

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

LOCK_DIR = Path(os.environ.get("LOMO_GPU_LOCKS", Path(tempfile.gettempdir()) / "lomo-gpu-locks"))
POLL_S = 1.0


def gpu_pool() -> list[str]:
    """The GPU ids jobs may claim."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def try_claim(count: int, pool: list[str], lock_dir: Path) -> dict[str, int] | None:
    """Lock `count` free ids of `pool`: {id: open lock file descriptor}, or None (nothing held)."""
    held: dict[str, int] = {}
    for gpu in pool:
        fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held[gpu] = fd
        if len(held) == count:
            return held
    for fd in held.values():
        os.close(fd)
    return None


def claim(count: int, pool: list[str], lock_dir: Path = LOCK_DIR) -> dict[str, int]:
    """Wait until `count` ids of `pool` are free and lock them."""
    if not 1 <= count <= len(pool):
        raise ValueError(f"asked for {count} GPU(s); this machine's pool has {len(pool)}: {pool}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while (held := try_claim(count, pool, lock_dir)) is None:
        if not waited:
            print(f"lomo.gpus: waiting for {count} free GPU(s) of {pool}", file=sys.stderr)
            waited = True
        time.sleep(POLL_S)
    return held


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.exit("usage: python -m lomo.gpus N -- COMMAND [ARGS...]")
    count, command = int(argv[0]), argv[2:]
    env = dict(os.environ)
    pool = gpu_pool() if count and "SLURM_JOB_ID" not in env else []
    if pool:
        try:
            held = claim(count, pool)
        except ValueError as error:
            sys.exit(f"lomo.gpus: {error}")
        for fd in held.values():
            os.set_inheritable(fd, True)  # the locks live as long as COMMAND
        env["CUDA_VISIBLE_DEVICES"] = ",".join(held)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
