"""LOMO and AdaLomo on two ranks (torchrun, gloo, DeepSpeed's CPU accelerator) against one
process on the same global batch: ZeRO-3 and plain data parallelism."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import PERSISTENCE, RUNS, STEPS, make_optimizer
from tiny_models import lm_loss, tiny_llama, token_batches

TESTS = Path(__file__).resolve().parent
TOLERANCE = 1e-5


def torchrun(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Two local ranks; `--standalone` picks a free port, so parallel runs do not collide."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distributed") / "results.pt"
    done = torchrun([str(TESTS / "distributed_worker.py"), str(out)], timeout=300, cwd=TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return torch.load(out, weights_only=False)


def single_process(run: tuple, initial: dict | None = None) -> dict[str, torch.Tensor]:
    name, clip, lr = run
    model = tiny_llama()
    if initial is not None:
        model.load_state_dict(initial)
    opt = make_optimizer(name, model, clip, lr)
    for tokens in token_batches(STEPS):  # the whole global batch of 4
        opt.step(lambda tokens=tokens: lm_loss(model, tokens))
    return {n: p.detach() for n, p in model.named_parameters()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("persistence", PERSISTENCE)
@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r[0]}-clip{r[1]}")
def test_zero3_equals_single_process(results, run, persistence):
    result = results["zero3"][(*run, persistence)]
    # Under deepspeed.zero.Init the tiny model keeps torch's default init, so the reference
    # starts from the same gathered initial weights.
    expected = single_process(run, result["initial"])
    assert max_diff(result["final"], result["initial"]) > 1e-2  # the weights did move
    assert max_diff(result["final"], expected) <= TOLERANCE
    if run[1] is not None:
        assert max(result["grad_norms"]) > run[1]  # clipping was active


def test_zero3_ranks_hold_only_their_partition(results):
    for key, result in results["zero3"].items():
        persistence = key[-1]
        by_rank = result["partitions"]
        assert len(by_rank) == 2
        for name in by_rank[0]:
            numel = by_rank[0][name][1]
            for local_numel, ds_numel, gathered_numel, persist in (r[name] for r in by_rank):
                assert ds_numel == numel
                assert local_numel == math.ceil(numel / 2), name
                assert persist == (numel < persistence)
                # Between steps only persistent parameters stay gathered.
                assert gathered_numel == (numel if persist else 0), name


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r[0]}-clip{r[1]}")
def test_data_parallel_equals_single_process(results, run):
    final = results["replicated"][run]
    assert max_diff(final, single_process(run)) <= TOLERANCE
