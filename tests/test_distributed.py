"""LOMO and AdaLomo on two ranks (torchrun, gloo, DeepSpeed's CPU accelerator) against one
process on the same global batch: ZeRO-3 and plain data parallelism."""

import csv
import json
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


# --- the runner: `lomo finetune --deepspeed` on two ranks, a rank killed, resume ----------------

DATA = TESTS.parents[1] / "shared" / "superglue"
RUN = dict(
    model="tiny-llama",
    method="lomo",
    task="rte",
    data_dir=str(DATA),
    protocol="val-split",
    train_size=8,
    test_size=4,
    max_length=64,
    epochs=2,
    global_batch=4,
    micro_batch=4,
    lr=1e-2,
    warmup_ratio=0.25,
    eval_batch=8,
)


def finetune_on_two_ranks(out: Path, kill_step: int = 0) -> subprocess.CompletedProcess:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items()]
    zero3 = TESTS.parent / "config" / "deepspeed" / "zero3.json"
    args = ["finetune_worker.py", "finetune", "--out", str(out), *flags, "--deepspeed", str(zero3)]
    return torchrun(args, timeout=240, cwd=TESTS, env={"LOMO_TEST_KILL_STEP": str(kill_step)})


def test_zero3_finetune_survives_a_killed_rank_and_equals_one_process(tmp_path):
    from lomo import finetune as ft

    out = tmp_path / "zero3"
    # Step 3 is the first step of epoch 2: epoch 1's checkpoint exists.
    killed = finetune_on_two_ranks(out, kill_step=3)
    assert killed.returncode != 0
    report = killed.stderr
    assert "ChildFailedError" in report and "Signal 9 (SIGKILL)" in report, report[-3000:]
    assert "rank      : 1" in report.split("Root Cause")[1]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (out / "metrics.json").exists()

    resumed = finetune_on_two_ranks(out)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming from" in resumed.stdout
    assert sorted(p.name for p in out.glob("checkpoint*")) == []  # all removed at the end

    single = ft.finetune(ft.FinetuneConfig(**RUN), tmp_path / "single")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_epoch"] == single["per_epoch"]
    logs = [
        list(csv.DictReader((folder / "train_log.csv").open()))
        for folder in (out, tmp_path / "single")
    ]
    assert [int(r["step"]) for r in logs[0]] == [1, 2, 3, 4]
    for ours, expected in zip(*logs, strict=True):
        for key in ("loss", "grad_norm", "lr"):
            assert float(ours[key]) == pytest.approx(float(expected[key]), rel=TOLERANCE), key
    predictions = [
        (folder / "predictions.jsonl").read_text() for folder in (out, tmp_path / "single")
    ]
    assert [json.loads(r)["idx"] for r in predictions[0].splitlines()] == [
        json.loads(r)["idx"] for r in predictions[1].splitlines()
    ]


# --- every method on two ranks equals one process ----------------------------------------------

# (method, launch, extra settings): ZeRO-3 runs zero-shot, LoRA (replicated adapters on the
# partitioned base) and LoRA+LOMO; plain data parallelism runs the torch optimizers, here with
# two micro batches per update (accumulation across ranks and micro batches).
METHOD_RUNS = [
    ("zero-shot", "zero3", {}),
    ("lora+lomo", "zero3", {}),
    ("lora", "zero3", {"clip_mode": "none", "adam_eps": 1e-6}),
    ("adamw", "replicated", {"micro_batch": 2, "lr": 1e-3}),
]


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory) -> dict[str, Path]:
    """Each METHOD_RUNS entry on two ranks, in one torchrun (one start-up for all)."""
    root = tmp_path_factory.mktemp("methods")
    zero3 = TESTS.parent / "config" / "deepspeed" / "zero3.json"
    runs, outs = [], {}
    for method, launch, extra in METHOD_RUNS:
        settings = {**RUN, "method": method, "lora_dropout": 0.0, "lora_lr": 1e-2, **extra}
        outs[method] = root / method
        args = ["finetune", "--out", str(outs[method])]
        args += [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
        runs.append(args + (["--deepspeed", str(zero3)] if launch == "zero3" else []))
    (root / "runs.json").write_text(json.dumps(runs))
    done = torchrun(["finetune_worker.py", "--runs", str(root / "runs.json")], 420, TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return outs


@pytest.mark.parametrize("method, launch, extra", METHOD_RUNS, ids=[r[0] for r in METHOD_RUNS])
def test_each_method_on_two_ranks_equals_one_process(method_runs, tmp_path, method, launch, extra):
    from lomo import finetune as ft

    settings = {**RUN, "method": method, "lora_dropout": 0.0, "lora_lr": 1e-2, **extra}
    single = ft.finetune(ft.FinetuneConfig(**settings), tmp_path)
    out = method_runs[method]
    metrics = json.loads((out / "metrics.json").read_text())
    resources = json.loads((out / "resources.json").read_text())
    assert (resources["runtime"], resources["processes"]) == (launch, 2)
    assert metrics["per_epoch"] == single["per_epoch"]
    logs = [list(csv.DictReader((d / "train_log.csv").open())) for d in (out, tmp_path)]
    assert len(logs[0]) == (0 if method == "zero-shot" else 4)
    for ours, expected in zip(*logs, strict=True):
        for key in ("loss", "grad_norm", "lr"):
            assert float(ours[key]) == pytest.approx(float(expected[key]), rel=1e-4), key
    if method != "zero-shot":  # the weights moved: the loss fell
        assert float(logs[0][-1]["loss"]) < float(logs[0][0]["loss"])
