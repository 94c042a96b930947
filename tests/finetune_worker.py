"""`lomo finetune` under torchrun, for tests/test_distributed.py.

With LOMO_TEST_KILL_STEP=N, rank 1 kills itself (SIGKILL, as an out-of-memory kill or a lost
node would) just before training step N."""

import os
import signal
import sys

import lomo.finetune as ft
from lomo.cli import main

KILL_STEP = int(os.environ.get("LOMO_TEST_KILL_STEP", "0"))
train_step = ft.train_step


def train_step_or_die(*args, **kwargs):
    step = args[5]
    if step == KILL_STEP and int(os.environ["RANK"]) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(*args, **kwargs)


if __name__ == "__main__":
    ft.train_step = train_step_or_die
    main(sys.argv[1:])
