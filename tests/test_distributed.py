"""LOMO and AdaLomo on two ranks (torchrun, gloo, DeepSpeed's CPU accelerator) against one
process on the same global batch: ZeRO-3 and plain data parallelism."""

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from distributed_worker import PERSISTENCE, RUNS, STEPS, make_optimizer
from launch import torchrun
from paths import DATA_DIR
from tiny_models import lm_loss, tiny_llama, token_batches

pytestmark = pytest.mark.e2e  # every test here runs several processes

TESTS = Path(__file__).resolve().parent
TOLERANCE = 1e-5


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


def assert_same_scores(ours: list[dict], expected: list[dict]) -> None:
    """Per-epoch scores: the metrics exactly, the gold NLL (a float sum whose order depends on
    the sharding) to 1e-5."""
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected, strict=True):
        assert a.keys() == b.keys()
        for split in set(a) - {"epoch"}:
            nll = a[split].pop("gold_nll"), b[split].pop("gold_nll")
            assert nll[0] == pytest.approx(nll[1], rel=1e-5)
            assert a[split] == b[split]


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

RUN = dict(
    model="tiny-llama",
    method="lomo",
    task="rte",
    data_dir=str(DATA_DIR),
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


def assert_equals_one_process(out: Path, single_dir: Path) -> list[dict]:
    """The 2-rank run in `out` has a one-process run's scores, global order and per-step loss,
    grad norm and lr; returns its train log."""
    from lomo.train import finetune as ft

    single = ft.finetune(ft.FinetuneConfig(**RUN), single_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert_same_scores(metrics["per_epoch"], single["per_epoch"])
    logs = [list(csv.DictReader((folder / "train_log.csv").open())) for folder in (out, single_dir)]
    for ours, expected in zip(*logs, strict=True):
        assert ours["examples"] == expected["examples"]  # the one-process global order
        for key in ("loss", "grad_norm", "lr"):
            assert float(ours[key]) == pytest.approx(float(expected[key]), rel=TOLERANCE), key
    return logs[0]


def finetune_on_two_ranks(
    out: Path, kill_step: int = 0, signal_step: int = 0
) -> subprocess.CompletedProcess:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items()]
    zero3 = TESTS.parent / "config" / "deepspeed" / "zero3.json"
    args = ["finetune_worker.py", "finetune", "--out", str(out), *flags, "--deepspeed", str(zero3)]
    env = {"LOMO_TEST_KILL_STEP": str(kill_step), "LOMO_TEST_SIGNAL_STEP": str(signal_step)}
    return torchrun(args, timeout=240, cwd=TESTS, env=env)


# slow (-m slow); in the default suite: one process: test_finetune's signal tests
@pytest.mark.slow
def test_zero3_signal_on_one_rank_stops_both_and_the_rerun_equals_one_process(tmp_path):
    """SIGUSR1 reaches rank 1 only, at a random step: both ranks finish that step, write a
    checkpoint within the epoch and exit 75; the rerun resumes and equals one process."""
    from lomo.train import finetune as ft

    out, at = tmp_path / "zero3", random.randint(1, 4)  # 2 epochs of 2 steps
    stopped = finetune_on_two_ranks(out, signal_step=at)
    assert stopped.returncode != 0, at
    assert stopped.stderr.count(f"exitcode  : {ft.PREEMPTED_EXIT}") >= 1, stopped.stderr[-3000:]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (checkpoint["step"], checkpoint["batches_done"]) == (at, (at - 1) % 2 + 1)
    assert sorted(p.name for p in out.glob("checkpoint.rank*")) == [
        f"checkpoint.rank{r}.step{at}.pt" for r in (0, 1)
    ]
    resumed = finetune_on_two_ranks(out)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert f"resuming from {out / 'checkpoint.pt'} after batch" in resumed.stdout
    assert_equals_one_process(out, tmp_path / "single")
    assert not list(out.glob("checkpoint*"))


# slow (-m slow); in the default suite: one process: test_finetune's kill-and-resume tests
@pytest.mark.slow
def test_zero3_finetune_survives_a_killed_rank_and_equals_one_process(tmp_path):

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

    log = assert_equals_one_process(out, tmp_path / "single")
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
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


# slow (-m slow); in the default suite, 2 ranks: test_zero3_equals_single_process,
# test_data_parallel_equals_single_process and the family matrix
@pytest.mark.slow
@pytest.mark.parametrize("method, launch, extra", METHOD_RUNS, ids=[r[0] for r in METHOD_RUNS])
def test_each_method_on_two_ranks_equals_one_process(method_runs, tmp_path, method, launch, extra):
    from lomo.train import finetune as ft

    settings = {**RUN, "method": method, "lora_dropout": 0.0, "lora_lr": 1e-2, **extra}
    single = ft.finetune(ft.FinetuneConfig(**settings), tmp_path)
    out = method_runs[method]
    metrics = json.loads((out / "metrics.json").read_text())
    resources = json.loads((out / "resources.json").read_text())
    assert (resources["runtime"], resources["processes"]) == (launch, 2)
    assert_same_scores(metrics["per_epoch"], single["per_epoch"])
    logs = [list(csv.DictReader((d / "train_log.csv").open())) for d in (out, tmp_path)]
    assert len(logs[0]) == (0 if method == "zero-shot" else 4)
    for ours, expected in zip(*logs, strict=True):
        assert ours["examples"] == expected["examples"]  # the one-process global order
        for key in ("loss", "grad_norm", "lr"):
            assert float(ours[key]) == pytest.approx(float(expected[key]), rel=1e-4), key
    if method != "zero-shot":  # the weights moved: the loss fell
        assert float(logs[0][-1]["loss"]) < float(logs[0][0]["loss"])


# slow (-m slow); in the default suite: the family matrix's 2-rank run and test_evaluate's
# shared-prompt scorer
@pytest.mark.slow
def test_zero3_evaluation_with_shared_prompts_equals_one_process(tmp_path):
    # MultiRC's examples share prompts and paragraphs: the scorer's extra prefix forwards must
    # stay balanced over the ranks (every forward gathers the partitioned weights).
    from evaluate_worker import N_EXAMPLES, TEMPLATES

    from lomo.train.evaluate import evaluate
    from lomo.train.models import load_model, load_tokenizer
    from tasks.superglue import get_task, get_template, load_split

    out = tmp_path / "rows.json"
    done = torchrun(["evaluate_worker.py", str(out)], 300, TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rows = json.loads(out.read_text())
    model, tokenizer, task = (
        load_model("tiny-llama"),
        load_tokenizer("tiny-llama"),
        get_task("multirc"),
    )
    examples = load_split(task.name, "val", "local", DATA_DIR)[:N_EXAMPLES]
    for name in TEMPLATES:
        _, expected = evaluate(model, tokenizer, task, examples, get_template(name), 4)
        assert [r["pred"] for r in rows[name]] == [r["pred"] for r in expected]
        for ours, reference in zip(rows[name], expected, strict=True):
            assert ours["idx"] == reference["idx"]
            assert ours["scores"] == pytest.approx(reference["scores"], rel=1e-5, abs=1e-5)


# slow (-m slow); in the default suite: ZeRO-3 on 2 ranks equals one process
@pytest.mark.slow
def test_deepspeed_without_torchrun_runs_as_one_rank_zero3(tmp_path):
    """`lomo finetune --deepspeed` started as a plain process (one GPU) forms a one-process
    group instead of asking MPI for one."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**RUN, "epochs": 1}.items()]
    zero3 = TESTS.parent / "config" / "deepspeed" / "zero3.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    command = [sys.executable, "-m", "lomo.cli", "finetune", "--out", str(tmp_path), *flags]
    done = subprocess.run(
        [*command, "--deepspeed", str(zero3)],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert (resources["runtime"], resources["processes"]) == ("zero3", 1)


@pytest.mark.parametrize("dtype", [pytest.param("fp32", marks=pytest.mark.slow), "bf16"])
def test_zero3_checkpoint_partitions_keep_the_requested_dtype(tmp_path, dtype):
    """A checkpoint folder is partitioned in --dtype (DeepSpeed 0.19.8 alone makes every CPU
    partition bf16), with the checkpoint's values."""
    model = tiny_llama()
    model.save_pretrained(tmp_path / "model")
    script = f"""
import json, torch
from lomo.train.distributed import init_process_group, zero3_model
from lomo.train.runtime import deepspeed_config
init_process_group()
ds = deepspeed_config({str(TESTS.parent / "config/deepspeed/zero3.json")!r}, 4, 1)
dtype = {{"fp32": torch.float32, "bf16": torch.bfloat16}}[{dtype!r}]
model, _ = zero3_model({str(tmp_path / "model")!r}, dtype, "eager", ds)
p = model.model.layers[0].mlp.up_proj.weight
print(json.dumps([str(p.ds_tensor.dtype), p.ds_tensor[:4].float().tolist()]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kind, values = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    assert kind == str(expected)
    reference = model.model.layers[0].mlp.up_proj.weight.detach().reshape(-1)[:4].to(expected)
    assert values == reference.float().tolist()


# --- fp16 with dynamic loss scaling under ZeRO-3: a forced overflow is skipped by every rank ---

FP16 = {**RUN, "dtype": "fp16", "allow_cpu_fp16": True, "force_overflow_step": 3}


# slow (-m slow); in the default suite: test_rehearsal_profile_runs_one_fp16_lomo_job (2 ranks,
# ZeRO-3, the forced overflow)
@pytest.mark.slow
def test_zero3_fp16_overflow_is_skipped_by_every_rank_as_by_one_process(tmp_path):
    """fp16 (the paper's dtype) on two CPU ranks under ZeRO-3. Step 3's gradients overflow on
    every rank (`force_overflow_step`), then, in a second run, on rank 1 only: both runs skip
    step 3 on both ranks, halve the loss scale and train on, exactly as one process does."""
    from lomo.train import finetune as ft

    zero3 = TESTS.parent / "config" / "deepspeed" / "zero3.json"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FP16.items() if v is not True]
    flags.append("--allow-cpu-fp16")
    runs = {
        "all": ["finetune", "--out", str(tmp_path / "all"), *flags, "--deepspeed", str(zero3)],
        "rank1": ["--overflow-only-on-rank", "1", "finetune", "--out", str(tmp_path / "rank1")],
    }
    runs["rank1"] += [*flags, "--deepspeed", str(zero3)]
    (tmp_path / "runs.json").write_text(json.dumps(list(runs.values())))
    done = torchrun(["finetune_worker.py", "--runs", str(tmp_path / "runs.json")], 300, TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    single = ft.finetune(ft.FinetuneConfig(**FP16), tmp_path / "single")
    expected = list(csv.DictReader((tmp_path / "single" / "train_log.csv").open()))
    assert [r["overflow"] for r in expected][2:] == ["1", "0"]  # step 3 skipped, step 4 not
    scales = [float(r["loss_scale"]) for r in expected]
    assert scales[2] == scales[1] / 2 and scales[3] == scales[2]
    assert not math.isfinite(float(expected[2]["grad_norm"]))
    for name in runs:
        out = tmp_path / name
        assert json.loads((out / "resources.json").read_text())["processes"] == 2
        assert yaml.safe_load((out / "config.yaml").read_text())["allow_cpu_fp16"] is True
        ours = json.loads((out / "metrics.json").read_text())["per_epoch"]
        assert_same_scores(ours, json.loads(json.dumps(single["per_epoch"])))  # it pops keys
        log = list(csv.DictReader((out / "train_log.csv").open()))
        for ours, reference in zip(log, expected, strict=True):
            assert ours["overflow"] == reference["overflow"]
            assert ours["loss_scale"] == reference["loss_scale"]
            assert float(ours["loss"]) == pytest.approx(float(reference["loss"]), rel=1e-4)


def test_fp16_gradient_summed_over_ranks_overflows_only_where_one_process_does(tmp_path):
    """Each rank's fp16 gradient is its share of the global one, summed over ranks: on a batch
    where one process's gradient is finite, so are both ranks' (a rank carrying `world` times
    its share would overflow), and LOMO's step and the torch optimizers' summed gradient equal
    one process's, bit for bit."""
    from fp16_sum_worker import LR, SCALE, TOKENS, fp16_layer, mean_loss

    from lomo import LOMO

    out = tmp_path / "results.json"
    done = torchrun(["fp16_sum_worker.py", str(out)], 180, TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    tokens = [x for rank in TOKENS for x in rank]
    layer = fp16_layer()
    opt = LOMO(layer, lr=LR)
    opt.step(lambda: mean_loss(layer, tokens))
    reference = fp16_layer()
    (mean_loss(reference, tokens) * SCALE).backward()
    expected = {
        "overflow": False,
        "grad_norm": opt.last_grad_norm.item(),
        "weight": layer.weight.item(),
        "summed_gradient": reference.weight.grad.item(),
    }
    assert not opt.overflow and layer.weight.item() != 1.0  # one process takes the step
    assert json.loads(out.read_text()) == [expected, expected]
