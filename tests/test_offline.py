"""Compute nodes without network: `lomo prepare-data` copies the hub dataset once (here from a
local copy in the hub layout), and a job then reads only that copy, with the hub switched off
and every network connection refused; the same job without the copy fails (it tries the hub)."""

import json
import os
import subprocess
import sys

import pytest
from paths import DATA_DIR, ROOT
from superglue_hub import write_hub_copy

from lomo.cli import main as lomo_main
from tasks.superglue.data import load_local
from tasks.superglue.tasks import TASKS

NO_NETWORK = """
import socket
def refuse(self, address, *args):
    if self.family != socket.AF_UNIX:
        raise OSError(f"network disabled in this test: connect to {address}")
    return real(self, address, *args)
real, socket.socket.connect = socket.socket.connect, refuse
"""


def offline_env(tmp_path) -> dict[str, str]:
    guard = tmp_path / "no_network"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    return {
        **os.environ,
        "PYTHONPATH": f"{guard}{os.pathsep}{ROOT}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }


def test_a_job_reads_the_prepared_copy_with_the_network_off(tmp_path, capsys):
    hub = write_hub_copy(DATA_DIR, tmp_path / "hub", tasks=("rte",))
    copy = tmp_path / "copy"
    lomo_main(["prepare-data", "--tasks", "rte", "--origin", str(hub), "--out", str(copy)])
    prepared = json.loads((copy / "prepared.json").read_text())
    for split in ("train", "val"):
        assert prepared["rows"]["rte"][split] == len(load_local(TASKS["rte"], split, DATA_DIR))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "lomo.cli", "finetune", "--model", "tiny-llama"]
    command += ["--task", "rte", "--source", "hub", "--data-dir", str(copy)]
    command += ["--protocol", "val-split", "--train-size", "8", "--test-size", "4"]
    command += ["--epochs", "1", "--global-batch", "4", "--micro-batch", "4"]
    command += ["--max-length", "64", "--out", str(run)]
    env = offline_env(tmp_path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["n_eval"] == 4
    # Without the copy the same read goes to the hub, and fails here.
    read_hub = "from tasks.superglue.data import load_hub; from tasks.superglue import TASKS; "
    read_hub += "load_hub(TASKS['rte'], 'val')"
    done = subprocess.run(
        [sys.executable, "-c", read_hub], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "on the Hub" in done.stderr


def test_unknown_task_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="lomo prepare-data: unknown task"):
        lomo_main(["prepare-data", "--tasks", "nope", "--out", str(tmp_path / "copy")])
