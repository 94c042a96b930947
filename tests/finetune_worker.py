"""`lomo finetune` under torchrun, for tests/test_distributed.py.

`finetune_worker.py finetune ARGS...` runs one `lomo finetune`; with LOMO_TEST_KILL_STEP=N,
rank 1 kills itself (SIGKILL, as an out-of-memory kill or a lost node would) just before
training step N. `finetune_worker.py --runs RUNS.json` runs each argument list of the JSON
list in turn in the same processes (one start-up for several runs)."""

import json
import os
import signal
import sys

import lomo.train.finetune as ft
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
    if sys.argv[1] == "--runs":
        with open(sys.argv[2]) as f:
            for args in json.load(f):
                main(args)
    else:
        main(sys.argv[1:])
