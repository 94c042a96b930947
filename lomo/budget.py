"""`lomo budget --profile CONFIG`: what a profile costs before it runs, and the resources each
job is submitted with (the workflow's `finetune` rule reads `job_resources`).

Per job:
- GPUs: the profile's `model_gpus` where it names the model, else the fewest of 1, 2, 4, 8 on
  which every job of the model fits `gpu_memory_gib` per GPU, as `lomo plan` predicts (so 80 GB
  cards need fewer than 24 GB ones);
- host memory: 6 GiB per rank (Python, torch, CUDA and NCCL, DeepSpeed; weights pass through the
  host one tensor at a time when loading and checkpointing) + 4 GiB;
- wall time: a throughput model calibrated on the paper's Table 2 (8x RTX 3090 over PCIe, ZeRO-3,
  LOMO): tokens per GPU per second 769.92 (7B on 1 GPU), 66.19 (13B on 2), 11.61 (30B on 4),
  4.93 (65B on 8); other models scale 7B's by parameter count. A job's tokens are its training
  examples x epochs x the task's padded tokens per example (TASK_TOKENS), plus its evaluations
  (every epoch, and the training set at the end; a forward costs a third of a training token);
  x 1.5 for what the model leaves out (a LLaMA tokenizer's longer encodings, slower nodes), + 15
  minutes to start, load the model and write;
- disk: the checkpoint of the trainable weights in their dtype, twice (a new one is complete
  before the old one goes), + 1 GB; a run that saves its final weights (`save_model`, the
  distance runs of `lomo sgd-claims`) keeps one more copy of all of them, and its host memory
  holds them too (rank 0 gathers them onto the CPU to write them);
- submissions: a job longer than the profile's `resources.runtime` (the partition's time limit)
  asks for that limit and runs in several submissions: each stops `time_limit_margin_minutes`
  before the limit with a checkpoint (lomo finetune) and the next resumes it, after starting
  and loading the model again (`FIXED_MINUTES`).
"""

import argparse
import math
from collections import defaultdict

from lomo import argtypes
from lomo.io import read_yaml
from lomo.measure.plan import DTYPE_BYTES, count_parameters, fit_check, load_shape, plan
from lomo.train.methods import METHODS
from lomo.workflow import (
    check_config,
    distance_runs,
    expand_runs,
    job_setting,
    method_of,
    model_slug,
    type_settings,
)

GPU_COUNTS = (1, 2, 4, 8)
# Table 2: (GPUs, LOMO tokens per GPU per second) by model.
TABLE2_TGS = {"llama-7b": (1, 769.92), "llama-13b": (2, 66.19), "llama-30b": (4, 11.61)}
TABLE2_TGS["llama-65b"] = (8, 4.93)
SAFETY = 1.5
FIXED_MINUTES = 15
EVAL_TOKEN_COST = 1 / 3  # a forward, against a training token's forward and backward
# The official SuperGLUE splits' rows (MultiRC: answer options; ReCoRD: queries).
SPLIT_ROWS = {
    "boolq": (9427, 3270),
    "cb": (250, 56),
    "copa": (400, 100),
    "multirc": (27243, 4848),
    "record": (100730, 10000),
    "rte": (2490, 277),
    "wic": (5428, 638),
    "wsc": (554, 104),
}
# Tokens per training example with padding to a batch of 16's longest (the official template,
# SmolLM2's tokenizer, the local train splits; tests/test_budget.py measures them again).
TASK_TOKENS = {
    "boolq": 319,
    "cb": 199,
    "copa": 24,
    "multirc": 596,
    "record": 387,
    "rte": 232,
    "wic": 65,
    "wsc": 86,
}


def fewest_gpus(config: dict, model: str, jobs: list[tuple[str, dict]]) -> int:
    """The profile's `model_gpus` for `model`, else the fewest GPU counts on which all its jobs
    ((method, settings)) fit `gpu_memory_gib`, else `resources.gpus`."""
    if model in config.get("model_gpus", {}):
        return config["model_gpus"][model]
    memory = config.get("gpu_memory_gib")
    if memory is None:
        return config["resources"]["gpus"]
    reserve = config.get("gpu_memory_reserve_gib", 1.0)
    shape = load_shape(model)
    for gpus in GPU_COUNTS:
        settings = {job_setting(config, model, method, run, gpus) for method, run in jobs}
        if all(fit_check(plan(shape, s), memory, reserve)[0] for s in settings):
            return gpus
    raise ValueError(
        f"{model}: its jobs do not fit {memory} GiB per GPU even on {GPU_COUNTS[-1]} GPUs "
        "(lomo plan); set model_gpus, or shorten max_length"
    )


def model_gpus(config: dict, runs: dict[tuple[str, str, str], dict]) -> dict[str, int]:
    """GPUs per model name, for every model of the profile."""
    jobs = defaultdict(list)
    names = {model_slug(name): name for name in config["models"]}
    for (slug, variant, _), settings in runs.items():
        jobs[names[slug]].append((method_of(variant), settings))
    return {model: fewest_gpus(config, model, jobs[model]) for model in config["models"]}


def example_counts(task: str, settings: dict) -> tuple[int, int]:
    """(training examples, evaluated examples per epoch) of a run on the official splits."""
    train_rows, val_rows = SPLIT_ROWS[task]
    protocol = settings.get("protocol", "paper")
    if protocol == "heldout":
        n_train = min(settings.get("num_train", 1000), train_rows)
        n_dev = min(settings.get("num_dev", 500), train_rows - n_train)
        return n_train, min(settings.get("num_eval", 1000), val_rows) + n_dev
    if protocol == "val-split":
        size = settings.get("train_size", 0.5)
        n_train = int(size) if size >= 1 else int(size * val_rows)
        return n_train, val_rows - n_train
    return min(settings.get("num_train", 1000), train_rows), min(
        settings.get("num_eval", 1000), val_rows
    )


def tokens_per_second(model: str, gpus: int) -> float:
    """Table 2's LOMO throughput of the model (scaled by parameters from 7B's), times GPUs."""
    shape = load_shape(model)
    if shape.name in TABLE2_TGS:
        return TABLE2_TGS[shape.name][1] * gpus
    seven = load_shape("7b")
    return TABLE2_TGS["llama-7b"][1] * count_parameters(seven) / count_parameters(shape) * gpus


def job_resources(
    model: str, method: str, task: str, settings: dict, gpus: int, max_minutes: int
) -> dict:
    """{gpus, nodes, mem_mb, runtime (minutes, at most `max_minutes`), disk_mb, saved_mb (the
    final weights a `save_model` run keeps, within disk_mb), submissions, minutes (all its
    submissions together)} of one job on GPUs."""
    n_train, n_eval = example_counts(task, settings)
    per_example = min(TASK_TOKENS[task], settings.get("max_length", 1024))
    epochs = settings.get("epochs", 10) if METHODS[method].trains else 0
    trained = epochs * n_train * per_example
    evaluated = (max(epochs, 1) * n_eval + n_train) * per_example
    seconds = SAFETY * (trained + EVAL_TOKEN_COST * evaluated) / tokens_per_second(model, gpus)
    params = count_parameters(load_shape(model))
    trainable = params if METHODS[method].trains_base else 0
    checkpoint = DTYPE_BYTES[settings.get("dtype", "fp32")] * trainable
    # --save-model: every weight gathered onto rank 0's CPU, then written beside the run
    saved = DTYPE_BYTES[settings.get("dtype", "fp32")] * params if settings.get("save_model") else 0
    work = math.ceil(seconds / 60)
    submissions, minutes = 1, work + FIXED_MINUTES
    if minutes > max_minutes:
        margin = settings.get("time_limit_margin_minutes", 10)
        per_submission = max_minutes - FIXED_MINUTES - margin
        if per_submission < 1:
            raise ValueError(
                f"resources.runtime {max_minutes} minutes leaves no time to train after "
                f"{FIXED_MINUTES} minutes of start-up and a {margin}-minute margin"
            )
        submissions = math.ceil(work / per_submission)
        minutes = work + submissions * (FIXED_MINUTES + margin)
    return {
        "gpus": gpus,
        "nodes": 1,
        "mem_mb": 1024 * (6 * gpus + 4) + math.ceil(saved / 2**20),
        "runtime": min(minutes, max_minutes),
        "disk_mb": math.ceil((2 * checkpoint + saved) / 1e6) + 1000,
        "saved_mb": math.ceil(saved / 1e6),  # of disk_mb: kept in the run folder
        "submissions": submissions,
        "minutes": minutes,
    }


def profile_jobs(config: dict) -> list[dict]:
    """Every fine-tuning job of a profile (each seed), with its resources."""
    figure3 = (config.get("figure3") or {}).get("tasks", [])
    tasks = config["tasks"] + config.get("optional_tasks", []) + figure3
    tasks = list(dict.fromkeys(tasks))
    runs = expand_runs(config, tasks)
    gpus = model_gpus(config, runs)
    names = {model_slug(name): name for name in config["models"]}
    _, saving = distance_runs(config, runs, tasks)
    jobs = []
    for (slug, variant, task), settings in runs.items():
        model, method = names[slug], method_of(variant)
        for seed in config["seeds"]:
            save_model = (slug, variant, task, seed) in saving
            resources = job_resources(
                model,
                method,
                task,
                {**settings, "save_model": save_model},
                max(1, gpus[model]),
                config["resources"]["runtime"],
            )
            jobs.append({"model": model, "variant": variant, "task": task, **resources})
    return jobs


def budget_table(jobs: list[dict], node_gpus: int) -> str:
    """Per model and in total: jobs, GPUs and submissions per job, GPU-hours, the wall time on
    one node of `node_gpus` GPUs if jobs pack it perfectly, disk per job and checkpoints at once
    on the node; then the profile's disk: model weights in the cache, checkpoints at once and
    the final weights the distance runs keep."""
    lines = [
        f"| model | jobs | GPUs per job | submissions per job (max) | GPU-hours | wall time on one "
        f"{node_gpus}-GPU node | disk per job (max) | checkpoints at once on the node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for job in jobs:
        groups[job["model"]].append(job)
    at_once = {
        model: max(node_gpus // j["gpus"] * (j["disk_mb"] - j["saved_mb"]) for j in rows) / 1000
        for model, rows in groups.items()
    }
    for model, rows in [*groups.items(), ("total", jobs)]:
        gpu_hours = sum(j["gpus"] * j["minutes"] / 60 for j in rows)
        gpus = sorted({j["gpus"] for j in rows})
        on_node = at_once.get(model, max(at_once.values()))
        lines.append(
            f"| {model} | {len(rows)} | {'/'.join(map(str, gpus))} "
            f"| {max(j['submissions'] for j in rows)} | {gpu_hours:,.0f} "
            f"| {gpu_hours / node_gpus / 24:,.1f} days "
            f"| {max(j['disk_mb'] for j in rows) / 1000:,.0f} GB | {on_node:,.0f} GB |"
        )
    weights = sum(2 * count_parameters(load_shape(model)) for model in groups) / 1e9
    saving = [j for j in jobs if j["saved_mb"]]
    kept = sum(j["saved_mb"] for j in saving) / 1000
    lines += [
        "",
        f"Disk for the profile: {weights:,.0f} GB of model weights in the Hugging Face cache "
        f"(16-bit), plus at most {max(at_once.values()):,.0f} GB of checkpoints at once on one "
        f"{node_gpus}-GPU node (removed as runs finish), plus {kept:,.0f} GB of final weights "
        f"kept for `lomo sgd-claims` (the distance travelled) by {len(saving)} "
        f"{'run' if len(saving) == 1 else 'runs'}.",
    ]
    return "\n".join(lines)


def load_profile(path: str, gpu_memory: float | None) -> dict:
    """A workflow profile with its settings typed as the workflow types them; `gpu_memory`
    (GiB) replaces its GPU memory and lets the GPUs follow from it."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a workflow profile (a mapping), not {config!r}")
    type_settings(config)
    check_config(config)  # as the workflow checks it at start: one line naming the problem
    if gpu_memory is not None:
        config["gpu_memory_gib"] = gpu_memory
        config.pop("model_gpus", None)
    return config


def run_budget(args: argparse.Namespace) -> None:
    jobs = profile_jobs(load_profile(args.profile, args.gpu_memory))
    print(budget_table(jobs, args.node_gpus))


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "budget",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="config/paper.yaml", help="a workflow profile")
    parser.add_argument(
        "--gpu-memory",
        type=argtypes.positive_float,
        help="GiB per GPU (default: the profile's gpu_memory_gib; replaces its model_gpus)",
    )
    parser.add_argument(
        "--node-gpus", type=argtypes.positive_int, default=8, help="GPUs of one node (default 8)"
    )
    parser.set_defaults(func=run_budget)
