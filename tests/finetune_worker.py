"""`lomo finetune` under torchrun, for tests/test_distributed.py.

`finetune_worker.py finetune ARGS...` runs one `lomo finetune`; with LOMO_TEST_KILL_STEP=N,
rank 1 kills itself (SIGKILL, as an out-of-memory kill or a lost node would) just before
training step N; with LOMO_TEST_SIGNAL_STEP=N, rank 1 alone receives SIGUSR1 (SLURM's
time-limit warning) during step N. `finetune_worker.py --runs RUNS.json` runs each argument
list of the JSON list in turn in the same processes (one start-up for several runs). An
argument list that starts with `--overflow-only-on-rank R` keeps its `--force-overflow-step`
on rank R only: one rank's gradients overflow, the others' stay finite."""

import dataclasses
import json
import os
import signal
import sys

import lomo.train.finetune as ft
from lomo.cli import main

KILL_STEP = int(os.environ.get("LOMO_TEST_KILL_STEP", "0"))
SIGNAL_STEP = int(os.environ.get("LOMO_TEST_SIGNAL_STEP", "0"))
ONLY_RANK_FLAG = "--overflow-only-on-rank"
train_step = ft.train_step
overflow_rank: int | None = None  # set per run by ONLY_RANK_FLAG


def patched_train_step(config, *args, **kwargs):
    step, rank = args[4], int(os.environ["RANK"])
    if step == KILL_STEP and rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if step == SIGNAL_STEP and rank == 1:
        os.kill(os.getpid(), signal.SIGUSR1)
    if overflow_rank is not None and rank != overflow_rank:
        config = dataclasses.replace(config, force_overflow_step=None)
    return train_step(config, *args, **kwargs)


def run(args: list[str]) -> None:
    global overflow_rank
    overflow_rank = None
    if args[0] == ONLY_RANK_FLAG:
        overflow_rank, args = int(args[1]), args[2:]
    main(args)


if __name__ == "__main__":
    ft.train_step = patched_train_step
    if sys.argv[1] == "--runs":
        with open(sys.argv[2]) as f:
            for args in json.load(f):
                run(args)
    else:
        run(sys.argv[1:])
