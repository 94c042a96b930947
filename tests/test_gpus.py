"""lomo.gpus on a fake 8-GPU machine (CUDA_VISIBLE_DEVICES names the pool; no GPU is touched):
concurrent jobs never share an id, a killed job's ids come free, and bad requests are one line."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from paths import ROOT

POOL = [str(i) for i in range(8)]
# A job: record the ids it was given and the time it held them.
JOB = (
    "import json, os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
    "open(sys.argv[1], 'a').write(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], start, "
    "time.time()]) + '\\n')"
)


def claim_env(tmp_path) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(POOL)}
    env.pop("SLURM_JOB_ID", None)
    return {**env, "LOMO_GPU_LOCKS": str(tmp_path / "locks"), "PYTHONPATH": str(ROOT)}


def start_job(tmp_path, gpus: int, seconds: float, *command: str) -> subprocess.Popen:
    command = command or (sys.executable, "-c", JOB, str(tmp_path / "held.jsonl"), str(seconds))
    return subprocess.Popen(
        [sys.executable, "-m", "lomo.gpus", str(gpus), "--", *command],
        env=claim_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_jobs_never_share_a_gpu(tmp_path):
    sizes = [1, 2, 4, 1, 4, 2, 1, 1, 2, 4, 1, 2]  # 25 GPUs asked of 8: most jobs must wait
    jobs = [start_job(tmp_path, n, 0.4) for n in sizes]
    for job in jobs:
        assert job.wait(timeout=120) == 0, job.stderr.read()
    held = [json.loads(line) for line in (tmp_path / "held.jsonl").read_text().splitlines()]
    assert sorted(len(ids.split(",")) for ids, _, _ in held) == sorted(sizes)
    for (ids_a, start_a, end_a), (ids_b, start_b, end_b) in itertools.combinations(held, 2):
        assert set(ids_a.split(",")) <= set(POOL)
        if start_a < end_b and start_b < end_a:  # held at the same time
            assert not set(ids_a.split(",")) & set(ids_b.split(",")), (ids_a, ids_b)
    # 25 GPU-jobs of 0.4 s on 8 GPUs: some ran at once (the claim does not serialise them all)
    overlapping = sum(a[1] < b[2] and b[1] < a[2] for a, b in itertools.combinations(held, 2))
    assert overlapping > 0


def test_a_killed_job_releases_its_gpus(tmp_path):
    holder = start_job(tmp_path, 8, 0, "sleep", "60")
    time.sleep(1.0)  # it has claimed all eight
    waiter = start_job(tmp_path, 1, 0)
    time.sleep(1.5)
    assert waiter.poll() is None  # nothing free: it waits
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert waiter.wait(timeout=30) == 0
    assert "waiting for 1 free GPU" in waiter.stderr.read()


@pytest.mark.parametrize(("gpus", "message"), [("9", "asked for 9 GPU(s)"), ("x", "usage")])
def test_bad_requests_are_one_line(tmp_path, gpus, message):
    done = subprocess.run(
        [sys.executable, "-m", "lomo.gpus", gpus, "--", "true"],
        env=claim_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and message in done.stderr
    assert done.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("setting", "visible"), [({"SLURM_JOB_ID": "1"}, "5"), ({"CUDA_VISIBLE_DEVICES": ""}, "")]
)
def test_under_slurm_or_without_gpus_the_command_runs_as_it_is(tmp_path, setting, visible):
    env = {**claim_env(tmp_path), "CUDA_VISIBLE_DEVICES": "5", **setting}
    done = subprocess.run(
        [sys.executable, "-m", "lomo.gpus", "1", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == visible and not (tmp_path / "locks").exists()
