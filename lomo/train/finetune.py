"""`lomo finetune`: train one (model, method, task, seed) and evaluate it every epoch.

Methods (each declared in lomo.train.methods): zero-shot (evaluation only), lomo, adalomo
(fused updates, no gradients kept), sgd, adamw (torch optimizers, standard backward, gradient
accumulation), lora (peft adapters trained with AdamW) and lora+lomo (adapters by AdamW, base
weights by LOMO, in one backward).

One process, or several launched by torchrun: with `--deepspeed CONFIG` (ZeRO-3) each rank
holds a partition of the weights, without it each rank holds the whole model (lomo.train.runtime
says which method runs where); see README, "Multi-GPU and multi-node".

The run folder gets config.yaml (resolved), train_log.csv, metrics.json and the reported
epoch's predictions.jsonl, each written atomically, and with `--save-model` the final weights
in model/ (written aside, then renamed; removed when another run starts in the folder);
checkpoint.pt after every epoch lets the same command resume after a kill, and is removed
when the run has finished. With `--report-to tensorboard|wandb` rank 0 also logs each step
and each epoch's scores there (lomo.train.tracking).
"""

import argparse
import collections
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import resource
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from lomo import argtypes
from lomo.io import write_atomic
from lomo.loss import causal_lm_loss, check_chunked_loss, frozen_partitioned_head
from lomo.optim import rng_state, set_rng_state
from lomo.provenance import provenance
from lomo.train.config import CHOICES, RANGES, FinetuneConfig, load_config
from lomo.train.evaluate import IGNORE_INDEX, encode_train_example, evaluate
from lomo.train.methods import METHODS, Loss
from lomo.train.models import DTYPES, load_tokenizer
from lomo.train.run_folder import (
    SAVED_MODEL,
    SAVED_MODEL_PARTIAL,
    check_fingerprint,
    claim_folder,
    fingerprint,
    read_checkpoint,
)
from lomo.train.runtime import Runtime
from lomo.train.tracking import eval_scalars, open_tracker, train_scalars
from tasks.superglue import get_task, get_template, prepare
from tasks.superglue.metrics import gold_nll_per_token
from tasks.superglue.protocols import Prepared, write_prepared

# --- data ------------------------------------------------------------------------------------


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ex["input_ids"]) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        input_ids[row, :n] = torch.tensor(ex["input_ids"])
        labels[row, :n] = torch.tensor(ex["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def split_size(value: float | None) -> int | float | None:
    """val-split sizes: a count when >= 1 (YAML/CLI may give 200.0), else a fraction."""
    return int(value) if value is not None and value >= 1 else value


def epoch_order(n: int, seed: int, epoch: int, data_order: str = "ours") -> list[int]:
    """The data order of epoch `epoch` (counted from 1): a function of (seed, epoch) alone, so
    resuming needs no sampler state. "official": what the official loop's
    `DistributedSampler(seed=seed)` yields on one GPU after `set_epoch(epoch - 1)` (it counts
    epochs from 0); under several ranks this global order is split as README explains."""
    generator_seed = seed + epoch - 1 if data_order == "official" else seed * 1000 + epoch
    return torch.randperm(n, generator=torch.Generator().manual_seed(generator_seed)).tolist()


# --- model and lr schedules ---------------------------------------------------------------------


def build_model(config: FinetuneConfig, runtime: Runtime) -> nn.Module:
    """The base model placed by the runtime, then activation checkpointing and the method's
    LoRA adapters. Under ZeRO-3 the adapters are added after partitioning, so they stay
    replicated."""
    model = runtime.load_model(
        config.model, DTYPES[config.dtype], config.attn_implementation, config.global_batch
    )
    if config.activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    method = METHODS[config.method]
    if method.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if method.trains_base:  # lora+lomo: the base weights train too
            for p in model.parameters():
                p.requires_grad_(True)
    return model


# Each schedule maps the 0-indexed update (torch's LambdaLR count) to a multiple of the lr.


def warmup_then_linear(total_steps: int, warmup_ratio: float):
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def official_linear(total_steps: int, warmup_ratio: float):
    """The official `LearningRateScheduler` (src/utils.py, 'linear'): the lr of the 1-indexed
    step s is set before its update, s / (T w) while s / T < w, then (1 - s/T) / (1 - w),
    which is 0 at the last step; T is at least 2 there."""
    total = max(2, total_steps)

    def factor(step: int) -> float:
        progress = (step + 1) / total
        if progress < warmup_ratio:
            return progress / warmup_ratio
        return max(0.0, (progress - 1.0) / (warmup_ratio - 1.0))  # 0.0, never -0.0

    return factor


def official_adapter_linear(total_steps: int, warmup_ratio: float):
    """The official LoRA path's AdamW schedule: transformers' linear schedule with w * T warmup
    steps (a float), stepped by DeepSpeed after each update, so the first update has lr 0."""
    warmup = warmup_ratio * total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def lr_factors(config: FinetuneConfig, total_steps: int) -> list:
    """One schedule per optimizer of the method (`Method.schedules`): the adapters' AdamW
    (lora, and the second optimizer of lora+lomo) warms up over `lora_warmup_ratio` when set."""
    schedule = official_linear if config.lr_schedule == "official" else warmup_then_linear
    adapter_schedule = (
        official_adapter_linear if config.lr_schedule == "official" else warmup_then_linear
    )
    adapter_warmup = config.warmup_ratio
    if config.lora_warmup_ratio is not None:
        adapter_warmup = config.lora_warmup_ratio
    factors = {
        "base": schedule(total_steps, config.warmup_ratio),
        "adapters": adapter_schedule(total_steps, adapter_warmup),
    }
    return [factors[name] for name in METHODS[config.method].schedules]


# --- one training step -----------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    pass


class NonFiniteWeightsError(FloatingPointError):
    pass


def check_finite(loss: torch.Tensor, step: int) -> torch.Tensor:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"loss is {loss.item()} at step {step}")
    return loss


class InfGradient(torch.autograd.Function):
    """The identity whose gradient is inf: every gradient becomes inf or NaN, as when fp16
    overflows in backward, while the loss stays finite (`force_overflow_step`). An autograd
    node, not a hook on the loss: DeepSpeed's ZeRO-3 then leaves the tied embedding gathered."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor) -> torch.Tensor:
        return loss.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * math.inf


def batch_loss(
    config: FinetuneConfig, model: nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    # LoRA dropout on the LM head would draw its masks per chunk: exact only without it. A
    # frozen ZeRO-3 head (LoRA) is not gathered again for the chunks' recompute (lomo.loss).
    lora_head_dropout = "lm_head" in config.lora_targets and config.lora_dropout > 0
    lora_head_dropout = lora_head_dropout and METHODS[config.method].lora
    chunked = config.chunked_loss and not lora_head_dropout
    chunked = chunked and not frozen_partitioned_head(model)
    return causal_lm_loss(model, **batch, chunked=chunked)


def train_step(
    config: FinetuneConfig,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    micro_batches: list[dict[str, torch.Tensor]],
    weights: list[float],
    step: int,
    runtime: Runtime,
) -> dict[str, float]:
    """One update on this rank's `micro_batches` (each mean loss scaled by its weight, see
    Runtime.loss_weights) by the method's step; returns this rank's weighted loss, the grad
    norm and loss scale, and whether the update was skipped (overflow)."""

    def loss_of(batch: dict[str, torch.Tensor], weight: float) -> Loss:
        def loss() -> torch.Tensor:
            # Checked before any backward: a non-finite loss never reaches the weights.
            value = check_finite(batch_loss(config, model, batch), step) * weight
            if step == config.force_overflow_step:  # fused methods only (validate)
                value = InfGradient.apply(value)
            return value

        return loss

    losses = [loss_of(b, w) for b, w in zip(micro_batches, weights, strict=True)]
    return METHODS[config.method].step(config, optimizers, losses, runtime)


def check_loss_at_start(
    config: FinetuneConfig, runtime: Runtime, model: nn.Module, batch: dict[str, torch.Tensor]
) -> None:
    """The chunked loss equals the model family's own on the first training example, or the
    run stops naming the family (lomo.loss.check_chunked_loss). One example, not a micro batch:
    a family's logits differ on every token, and the two forwards of 8 SmolLM2 examples cost
    3-4 s of a 60 s laptop run. Not under ZeRO-3: a forward before the
    first training step leaves a tied embedding gathered after the third step's backward
    (DeepSpeed's parameter trace; tests/test_distributed.py), and the family's logits are the
    same on one process, where the check runs (tests/test_families.py)."""
    if config.chunked_loss and runtime.kind != "zero3" and not frozen_partitioned_head(model):
        check_chunked_loss(model, **batch)


def shard_batch(
    runtime: Runtime, examples: list[dict], micro_batch: int, pad_token_id: int
) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """This rank's micro batches of a global batch, on its device, and their loss weights. A
    rank left without an example runs the batch's first one with weight 0: every rank must
    join the collectives."""
    shares = runtime.micro_batches(list(range(len(examples))), micro_batch)
    micro = [collate([examples[i] for i in share or [0]], pad_token_id) for share in shares]
    tokens = [
        int((m["labels"] != IGNORE_INDEX).sum()) if share else 0
        for m, share in zip(micro, shares, strict=True)
    ]
    micro = [{k: v.to(runtime.device) for k, v in m.items()} for m in micro]
    return micro, runtime.loss_weights(tokens)


# --- bookkeeping -----------------------------------------------------------------------------


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def select_epoch(config: FinetuneConfig, per_epoch: list[dict]) -> tuple[str, dict]:
    """Paper protocol: the best epoch on the evaluation set (the paper's reported number).
    heldout: the epoch best on dev; its test score is reported."""
    if config.protocol == "heldout":
        key = "dev"
        rule = "epoch with the best dev score; its test (eval) score is reported"
    else:
        key = "eval"
        rule = "epoch with the best eval score (the paper's protocol: selection on eval itself)"
    metric = get_task(config.task).primary_metric
    best = max(per_epoch, key=lambda e: e[key][metric])  # first best on ties
    return rule, best


def evaluate_epoch(
    epoch: int,
    config: FinetuneConfig,
    runtime: Runtime,
    model: nn.Module,
    tokenizer,
    eval_sets: dict[str, list[dict]],
) -> tuple[dict, dict]:
    """Scores of every evaluation set ({"epoch", "eval", ["dev"]}) and their prediction rows."""
    task, template = get_task(config.task), get_template(config.template)
    scores, predictions = {}, {}
    for name, examples in eval_sets.items():

        def score(shard: list[dict]) -> list[dict]:
            return evaluate(
                model,
                tokenizer,
                task,
                shard,
                template,
                config.eval_batch,
                config.reduction,
                config.max_length,
                progress=runtime.main,
                max_tokens=config.eval_tokens,
            )[1]

        scores[name], predictions[name] = runtime.evaluate(model, examples, score, task.metrics)
        scores[name]["gold_nll"] = gold_nll(predictions[name], config.reduction)
        if runtime.main:
            print(f"epoch {epoch} {name}: {json.dumps(scores[name])}", flush=True)
    return {"epoch": epoch, **scores}, predictions


def gold_nll(rows: list[dict], reduction: str) -> float:
    """Mean over examples of the gold answer's negative log-likelihood per answer token: moves
    with learning long before accuracy does."""
    return sum(gold_nll_per_token(row, reduction) for row in rows) / len(rows)


def health_flags(rows: list[dict]) -> list[str]:
    """Warnings about a run's reported predictions: one class for >= 90% of the examples, or
    examples whose options all scored the same (a collapsed model; ties go to option 0)."""
    flags = []
    counts = collections.Counter(row["pred"] for row in rows)
    option, count = counts.most_common(1)[0]
    if count >= 0.9 * len(rows):
        flags.append(f"one class: {count} of {len(rows)} predictions are option {option}")
    ties = sum(len(set(row["scores"])) == 1 for row in rows)
    if ties:
        flags.append(f"all options scored equal on {ties} of {len(rows)} examples")
    return flags


def check_weights_finite(
    runtime: Runtime, model: nn.Module, optimizers: list, epoch: int, checkpoint_path: Path
) -> None:
    """Before a checkpoint or an evaluation: a checkpoint is always finite."""
    bad = runtime.non_finite(model, optimizers)
    if bad:
        kept = (
            f"; the last good checkpoint is {checkpoint_path}" if checkpoint_path.exists() else ""
        )
        raise NonFiniteWeightsError(
            f"{len(bad)} weight or optimizer-state tensor(s) hold inf/NaN in epoch {epoch} "
            f"(e.g. {', '.join(bad[:3])}): lower the lr or clip the gradients{kept}"
        )


def step_schedulers(schedulers: list) -> None:
    with warnings.catch_warnings():
        # lora+lomo updates the base weights in fused_backward, never through the .step() that
        # torch's scheduler watches: the order is right, the warning wrong.
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
        for scheduler in schedulers:
            scheduler.step()


def checkpoint_due(config: FinetuneConfig, last_saved: float) -> bool:
    """`checkpoint_every_minutes` have passed since the last checkpoint (time.monotonic)."""
    every = config.checkpoint_every_minutes
    return every is not None and time.monotonic() - last_saved >= 60 * every


def resume(
    checkpoint: dict, path: Path, runtime: Runtime, model: nn.Module, optimizers, schedulers
) -> tuple[dict, tuple[int, int]]:
    """Restore the state the checkpoint saved; (the run so far, (the epoch to run, its batches
    already done)). A checkpoint within an epoch (`batches_done`) resumes at its next batch."""
    runtime.load_checkpoint(checkpoint, path, model, optimizers)
    for scheduler, state in zip(schedulers, checkpoint["schedulers"], strict=True):
        scheduler.load_state_dict(state)
    set_rng_state(checkpoint["rng"])
    epoch, done = checkpoint["epoch"], checkpoint["batches_done"]
    if runtime.main:
        where = f"epoch {epoch}" if done is None else f"batch {done} of epoch {epoch}"
        print(f"resuming from {path} after {where}")
    run = {key: checkpoint[key] for key in ("per_epoch", "predictions", "log")}
    return run, ((epoch + 1, 0) if done is None else (epoch, done))


def time_left() -> float:
    """Seconds until the job's time limit: SLURM's projected end of the job
    (SLURM_JOB_END_TIME, set in every SLURM job); infinite outside SLURM."""
    end = os.environ.get("SLURM_JOB_END_TIME")
    if not end:
        return math.inf
    try:
        return float(end) - time.time()
    except ValueError:
        raise ValueError(f"SLURM_JOB_END_TIME={end!r} is not a time in seconds") from None


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: a checkpoint was written, the same command resumes


class Preempted(Exception):
    """A signal arrived or the time limit is near: the run stopped after a training step and
    saved it."""


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGTERM (a scheduler preempting the job) and SIGUSR1 (SLURM's warning before the time
    limit, `--signal=USR1@600`) ask the training loop to stop after its current step, save
    and exit with PREEMPTED_EXIT; yields the list of the signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers need it
        yield received
        return
    wanted = (signal.SIGTERM, signal.SIGUSR1)
    previous = {n: signal.signal(n, lambda number, _: received.append(number)) for n in wanted}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# --- the run ---------------------------------------------------------------------------------


def process_age() -> float | None:
    """Seconds since this process started (Linux's /proc), None where that is unknown."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: the start, in ticks


class Phases:
    """Where this invocation's wall time goes (resources.json `phases`, seconds): `start` (the
    interpreter, imports and arguments before lomo finetune began), `data`, `model`, `setup`
    (the optimizers and the loss check), `train`, `evaluation`, `checkpoint` and `write`, and
    `wall` (all of it)."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.seconds = {"start": process_age() or 0.0}

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began

    def summary(self) -> dict[str, float]:
        wall = self.seconds["start"] + time.perf_counter() - self.began
        return {name: round(value, 3) for name, value in {**self.seconds, "wall": wall}.items()}


def finetune(config: FinetuneConfig, out_dir: str | Path) -> dict[str, Any]:
    phases = Phases()
    config.validate()
    runtime = Runtime.start(config.deepspeed)
    if config.micro_batch % runtime.world:
        raise ValueError(
            f"micro_batch {config.micro_batch} is not a multiple of the {runtime.world} processes"
        )
    # The data is read, and its rows checked, before the run folder exists: bad data leaves
    # nothing behind. Rank 0 reads first (a hub download), the others then find its cache.
    with runtime.main_first(), phases.timed("data"):
        data = prepare(
            config.task,
            config.protocol,
            config.source,
            config.data_dir,
            seed=0 if config.protocol == "paper" else config.seed,
            num_train=config.num_train,
            num_dev=config.num_dev,
            num_eval=config.num_eval,
            train_size=split_size(config.train_size),
            test_size=split_size(config.test_size),
        )
    out = Path(out_dir)
    with claim_folder(out, config, runtime.main):
        return run(config, runtime, data, out, phases)


def run(
    config: FinetuneConfig, runtime: Runtime, data: Prepared, out: Path, phases: Phases
) -> dict[str, Any]:
    """The run in a folder this process holds: model, training, evaluation, results."""
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"
    checkpoint = read_checkpoint(checkpoint_path, config)
    if runtime.main:
        write_atomic(
            out / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
        )

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    task = get_task(config.task)
    template = get_template(config.template)
    # rank 0 writes the data folder (and fetches), the others read it
    with runtime.main_first(), phases.timed("data"):
        write_prepared(data, out / "data")
        tokenizer = load_tokenizer(config.model)
    train_examples = data.train[: config.limit_train]
    eval_sets = {"eval": data.eval[: config.limit_eval]}
    if data.dev is not None:
        eval_sets["dev"] = data.dev[: config.limit_eval]
    with phases.timed("model"):
        model = build_model(config, runtime)
    inputs = fingerprint(out, config)  # after the model: a hub model is downloaded by then
    if checkpoint is not None:
        check_fingerprint(checkpoint, inputs, checkpoint_path)
    if runtime.main:
        write_atomic(out / "fingerprint.json", json.dumps(inputs, indent=1) + "\n")

    def run_eval(epoch: int) -> tuple[dict, dict]:
        with phases.timed("evaluation"):
            return evaluate_epoch(epoch, config, runtime, model, tokenizer, eval_sets)

    def train_end(epoch: int) -> dict[str, float]:
        """The training examples scored with the final weights (gold NLL, metrics): what the
        run fitted, beside what it generalised to."""
        with phases.timed("evaluation"):
            scores, _ = evaluate_epoch(
                epoch, config, runtime, model, tokenizer, {"train": train_examples}
            )
        return scores["train"]

    method = METHODS[config.method]
    if not method.trains:
        scores, predictions = run_eval(0)
        with open_tracker(dataclasses.asdict(config), out, runtime.main, 0) as tracker:
            tracker.log(eval_scalars(scores), 0)
        run = {"per_epoch": [scores], "predictions": {0: predictions}, "log": []}
        run["train_end"] = train_end(0)
        return finish(config, runtime, model, tokenizer, out, run, len(train_examples), phases)

    with phases.timed("data"):
        encoded = [
            encode_train_example(task, ex, template, tokenizer, config.max_length)
            for ex in train_examples
        ]
    with phases.timed("setup"):
        optimizers = method.optimizers(config, model, runtime.sync)
    batch_per_update = config.global_batch // config.updates_per_batch
    micro_batch = min(config.micro_batch, batch_per_update)
    updates_per_epoch = math.ceil(len(encoded) / batch_per_update)
    factors = lr_factors(config, config.epochs * updates_per_epoch)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(opt, factor)
        for opt, factor in zip(optimizers, factors, strict=True)
    ]
    run = {"per_epoch": [], "predictions": {}, "log": []}
    start_epoch, skip = 1, 0
    if checkpoint is not None:
        run, (start_epoch, skip) = resume(
            checkpoint, checkpoint_path, runtime, model, optimizers, schedulers
        )
    with phases.timed("setup"):
        first = collate(encoded[:1], tokenizer.pad_token_id)
        check_loss_at_start(
            config, runtime, model, {k: v.to(runtime.device) for k, v in first.items()}
        )
    model.train()
    log = run["log"]
    step = len(log)
    started = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)
    last_saved = time.monotonic()
    # What must still fit before the time limit's margin: the next step, or the evaluation.
    longest_step = evaluation_seconds = 0.0

    def save(epoch: int, batches_done: int | None) -> None:
        """The checkpoint after this step: within `epoch` (`batches_done` of its batches), or
        at its end, evaluated (None). The caller has checked the weights are finite."""
        nonlocal last_saved
        state = {
            "config": dataclasses.asdict(config),
            "fingerprint": inputs,
            "schedulers": [s.state_dict() for s in schedulers],
            "rng": rng_state(),
            "epoch": epoch,
            "batches_done": batches_done,
            **run,
        }
        with phases.timed("checkpoint"):
            runtime.save_checkpoint(checkpoint_path, step, model, optimizers, state)
        last_saved = time.monotonic()

    with (
        stop_signals() as received,
        open_tracker(dataclasses.asdict(config), out, runtime.main, step + 1) as tracker,
    ):
        for epoch in range(start_epoch, config.epochs + 1):
            order = epoch_order(len(encoded), config.seed, epoch, config.data_order)
            batches = [
                order[i : i + batch_per_update] for i in range(0, len(order), batch_per_update)
            ]
            first = skip if epoch == start_epoch else 0  # batches a resumed epoch has done
            progress = tqdm(
                total=len(batches),
                initial=first,
                desc=f"epoch {epoch}/{config.epochs}",
                unit="step",
                disable=not runtime.main,
            )
            for index in range(first, len(batches)):
                batch_ids = batches[index]
                micro, weights = shard_batch(
                    runtime, [encoded[i] for i in batch_ids], micro_batch, tokenizer.pad_token_id
                )
                lr = optimizers[0].param_groups[0]["lr"]  # the lr this step uses
                step_start = time.perf_counter()
                try:
                    with phases.timed("train"):
                        stats = train_step(
                            config, model, optimizers, micro, weights, step + 1, runtime
                        )
                except NonFiniteLossError as error:
                    kept = checkpoint_path.exists()
                    kept = f"; the last good checkpoint is {checkpoint_path}" if kept else ""
                    raise NonFiniteLossError(f"{error} (epoch {epoch}){kept}") from error
                stats["loss"] = runtime.sum(stats["loss"])  # the weights sum to 1 over ranks
                step_schedulers(schedulers)
                step += 1
                step_seconds = time.perf_counter() - step_start
                n_tokens = runtime.sum(sum(int(m["attention_mask"].sum()) for m in micro))
                tokens_per_second = n_tokens / step_seconds  # all ranks' tokens
                progress.update()
                progress.set_postfix(loss=f"{stats['loss']:.4f}", tok_s=f"{tokens_per_second:.0f}")
                log.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        # the global batch: rows of data/train.jsonl (0-based)
                        "examples": " ".join(map(str, batch_ids)),
                        "lr": lr,
                        **stats,
                        "seconds": round(time.perf_counter() - started, 3),
                        "peak_memory_bytes": peak_memory_bytes(runtime.device),
                    }
                )
                longest_step = max(longest_step, time.perf_counter() - step_start)
                upcoming = longest_step if index + 1 < len(batches) else evaluation_seconds
                near_limit = time_left() < 60 * config.time_limit_margin_minutes + upcoming
                tracker.log(train_scalars(log[-1], tokens_per_second), step)
                # A signal may reach one rank only: every rank stops after the same step.
                signalled = runtime.sum(len(received)) > 0
                stop = signalled or runtime.sum(int(near_limit)) > 0
                if stop or checkpoint_due(config, last_saved):
                    check_weights_finite(runtime, model, optimizers, epoch, checkpoint_path)
                    save(epoch, index + 1)
                if stop:
                    why = "by a signal" if signalled else "before the job's time limit"
                    raise Preempted(
                        f"stopped {why} after step {step} (epoch {epoch}); "
                        f"{checkpoint_path} holds it: rerun the same command to resume"
                    )
            progress.close()
            check_weights_finite(runtime, model, optimizers, epoch, checkpoint_path)
            evaluation_start = time.perf_counter()
            scores, predictions = run_eval(epoch)
            evaluation_seconds = time.perf_counter() - evaluation_start
            tracker.log(eval_scalars(scores), step)
            run["per_epoch"].append(scores)
            run["predictions"][epoch] = predictions
            save(epoch, None)
    run["train_end"] = train_end(config.epochs)
    metrics = finish(config, runtime, model, tokenizer, out, run, len(train_examples), phases)
    runtime.remove_checkpoints(checkpoint_path)
    return metrics


def finish(
    config: FinetuneConfig,
    runtime: Runtime,
    model: nn.Module,
    tokenizer,
    out: Path,
    run: dict,
    n_train: int,
    phases: Phases,
) -> dict[str, Any]:
    """Select the reported epoch and write the run folder: metrics.json last, so a folder
    with metrics.json is a finished run."""
    per_epoch, log = run["per_epoch"], run["log"]
    rule, reported = (
        ("zero-shot: evaluation only", per_epoch[0])
        if not METHODS[config.method].trains
        else select_epoch(config, per_epoch)
    )
    metrics = {
        "model": config.model,
        "method": config.method,
        "task": config.task,
        "seed": config.seed,
        "protocol": config.protocol,
        "template": get_template(config.template).id,
        "n_train": n_train,
        **{f"n_{k}": len(v) for k, v in run["predictions"][reported["epoch"]].items()},
        "selection": rule,
        "flags": health_flags(run["predictions"][reported["epoch"]]["eval"]),
        "reported": reported,
        "final": per_epoch[-1],
        "per_epoch": per_epoch,
        "train_end": run["train_end"],
    }
    with phases.timed("write"):
        if runtime.main:
            write_atomic(out / "train_log.csv", to_csv(log))
            rows = run["predictions"][reported["epoch"]]["eval"]
            write_atomic(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if config.save_model:
            state = runtime.full_state_dict(model)
            if runtime.main:  # written aside, then renamed into place
                partial = out / SAVED_MODEL_PARTIAL
                model.save_pretrained(partial, state_dict=state)
                tokenizer.save_pretrained(partial)
                partial.rename(out / SAVED_MODEL)
    # Wall time and memory vary between identical runs: kept out of metrics.json.
    resources = {
        "train_seconds": log[-1]["seconds"] if log else 0.0,
        # this invocation (a resumed run counts from the restart), by phase
        "phases": phases.summary(),
        "peak_memory_bytes": peak_memory_bytes(runtime.device),
        "device": str(runtime.device),
        "threads": torch.get_num_threads(),
        "processes": runtime.world,
        "runtime": runtime.kind,
        "provenance": provenance(runtime.device),
    }
    if runtime.main:
        write_atomic(out / "resources.json", json.dumps(resources, indent=1) + "\n")
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    runtime.barrier()
    return metrics


def to_csv(rows: list[dict]) -> str:
    columns = [
        "step",
        "epoch",
        "examples",
        "lr",
        "loss",
        "grad_norm",
        "loss_scale",
        "overflow",
        "seconds",
        "peak_memory_bytes",
    ]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


# --- command line ----------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with any of the keys below")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--threads", type=argtypes.positive_int, help="torch CPU threads")
    defaults = FinetuneConfig()
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f"default: {getattr(defaults, f.name)}"
        if f.name in CHOICES:
            text = f"one of {', '.join(CHOICES[f.name])}; {text}"
        if f.type is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        elif f.type == list[str]:
            parser.add_argument(flag, dest=f.name, nargs="+", help=text)
        elif f.name in RANGES:  # a number, in its range
            parser.add_argument(flag, dest=f.name, type=RANGES[f.name], help=text)
        else:
            parser.add_argument(flag, dest=f.name, help=text)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)}
    config = load_config(args.config, overrides)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        metrics = finetune(config, args.out)
    except Preempted as stopped:
        print(f"lomo finetune: {stopped}", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT)
    print(json.dumps({"reported": metrics["reported"], "selection": metrics["selection"]}))
