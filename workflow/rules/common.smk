"""Configuration, data source and the helpers every rule file uses.

Included first by the Snakefile: validates the config, resolves the SuperGLUE source (and
stops with what to set when there is none) and names the runs.
"""

import functools
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from lomo.workflow import (
    SCHEMA,
    beyond_gpu_memory,
    check_config,
    check_memory,
    check_models,
    distance_runs,
    expand_runs,
    method_of,
    model_slug,
    selection_keys,
    settings_to_flags,
    type_settings,
)
from lomo.train.methods import METHODS
from tasks.superglue.source import SourceError, resolve_source


# Every value typed by the schema's declared types (--config 'seeds=[43]' gives the string
# "43"), the settings as `lomo finetune` types them, then checked: against the schema (with the
# declared task names), and every model one a job can load. One line naming the problem.
try:
    type_settings(config)
except ValueError as error:
    raise WorkflowError(f"config: {error}")
try:
    check_config(config)
    check_models(config)
except ValueError as error:
    raise WorkflowError(str(error))
validate(config, str(SCHEMA))  # fills in the schema's defaults

PROFILE = config["profile"]
# The Python that runs the jobs: under --use-conda the rule environment's (its `python` is first
# on PATH once Snakemake activates it), else the one running Snakemake (a venv need not be
# activated). Either way lomo and tasks are imported from the workflow's directory (PYTHONPATH):
# the rule environment (environment.yml) holds the dependencies only, not the project. `env`,
# not a shell assignment, as lomo.gpus execs the command after it without a shell.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
JOB_PYTHON = "python" if USE_CONDA else sys.executable
PYTHON = f"env PYTHONPATH={shlex.quote(workflow.basedir)} {JOB_PYTHON}"
LOMO = f"{PYTHON} -m lomo.cli"
RESULTS = f"results/{PROFILE}"
# Jobs run on this machine fit in its memory: the scheduler counts each job's mem_mb against
# the machine's RAM unless --resources mem_mb=N says otherwise. Not on a cluster, where each
# job asks for its own node's memory (a cluster executor's --jobs is the only sign of one while
# the Snakefile is read; run locally, Snakemake turns --jobs into --cores).
if workflow.global_resources["_nodes"].value is None and "mem_mb" not in workflow.global_resources:
    workflow.register_resource(
        "mem_mb", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    )
# Model names may contain slashes (hub ids); paths use a slug without them.
MODELS = {model_slug(name): name for name in config["models"]}
# The laptop and paper profiles publish their tables and figures in paper/ (committed, and
# the README's Results section is rendered from them); other profiles keep them in results/.
PUBLISHED = PROFILE in ("laptop", "paper")
ARTIFACTS = "paper" if PUBLISHED else f"{RESULTS}/analysis"
# Memory and throughput measurements by name; each entry's other keys are command flags.
MEMORY = {entry["name"]: entry for entry in config["memory"]}
THROUGHPUT = {entry["name"]: entry for entry in config["throughput"]}

FIGURE3_TASKS = config["figure3"]["tasks"] if config.get("figure3") else []
REQUESTED_TASKS = config["tasks"] + [t for t in FIGURE3_TASKS if t not in config["tasks"]]
try:
    SOURCE, DATA_DIR, TASKS = resolve_source(
        config.get("superglue_dir"), REQUESTED_TASKS, config["optional_tasks"]
    )
except SourceError as error:
    # --lint, -n and the other planning commands work without data: the first job that reads
    # it (lomo finetune prepares its data before loading a model) stops naming the problem.
    print(f"SuperGLUE data: {error}; jobs that read the data will fail", file=sys.stderr)
    DATA_DIR = config.get("superglue_dir") or os.environ.get("LOMO_SUPERGLUE_DIR")
    SOURCE, TASKS = ("local" if DATA_DIR else "hub"), REQUESTED_TASKS
TABLE3_TASKS = [t for t in TASKS if t in config["tasks"] or t in config["optional_tasks"]]
# Compute nodes may have no network: with the hub as the source, the submitting machine copies
# the pinned dataset once (rule prepare_superglue, a local rule), and every job reads that copy
# with the hub switched off (OFFLINE), as it reads the model prepare_model put in the HF cache.
HUB_COPY = f"{RESULTS}/superglue_hub" if SOURCE == "hub" else None
OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
NOT_ZERO3 = [method for method in config["methods"] if not METHODS[method].zero3]
if config.get("deepspeed_config") and NOT_ZERO3:
    zero3 = ", ".join(name for name, method in METHODS.items() if method.zero3)
    raise WorkflowError(
        f"deepspeed_config (ZeRO-3) runs {zero3}; {', '.join(NOT_ZERO3)} need a profile "
        "without it"
    )

# (model slug, variant, task) -> the run's settings: grid points, extra protocols, Figure 3.
try:
    RUN_SETTINGS = expand_runs({**config, "tasks": TABLE3_TASKS}, TABLE3_TASKS)
except ValueError as error:
    raise WorkflowError(str(error))
# GPUs per model: `model_gpus` where set, else the fewest on which its jobs fit the profile's
# GPU memory (`gpu_memory_gib`, lomo.budget); every job fits, training and evaluation, as
# `lomo plan` predicts: checked here, so a dry run (-n) stops before anything is launched.
try:
    if config.get("gpu_memory_gib") is not None:
        from lomo.budget import model_gpus

        config["model_gpus"] = model_gpus(config, RUN_SETTINGS)
    check_memory(config, RUN_SETTINGS)
except ValueError as error:
    raise WorkflowError(f"config: {error}")
VARIANTS = sorted({variant for _, variant, _ in RUN_SETTINGS})


wildcard_constraints:
    model="|".join(MODELS),
    variant="|".join(re.escape(v) for v in VARIANTS),
    task="|".join(TASKS),
    seed=r"\d+",


# Distance travelled (`lomo sgd-claims --distance-runs`): the runs whose final weights it
# measures save them (--save-model).
DISTANCE_TASK, DISTANCE_KEYS = distance_runs(config, RUN_SETTINGS, TASKS)
DISTANCE_RUNS = [
    f"{RESULTS}/superglue/{model}/{variant}/{task}/seed{seed}"
    for model, variant, task, seed in DISTANCE_KEYS
]


def saves_model(wildcards):
    w = wildcards
    return (w.model, w.variant, w.task, int(w.seed)) in DISTANCE_KEYS


def save_model_flag(wildcards):
    return "--save-model" if saves_model(wildcards) else ""


def run_flags(wildcards):
    """Command-line flags of one run (lomo.workflow.expand_runs)."""
    return settings_to_flags(RUN_SETTINGS[(wildcards.model, wildcards.variant, wildcards.task)])


def measurement_flags(entry):
    """Command-line flags of one memory or throughput measurement (all keys but its name)."""
    return settings_to_flags({key: value for key, value in entry.items() if key != "name"})


def measurement_gpus(entry):
    return 1 if entry.get("device") == "cuda" else 0


def job_gpus(wildcards):
    return config.get("model_gpus", {}).get(MODELS[wildcards.model], config["resources"]["gpus"])


def job_resources(wildcards):
    """A fine-tuning job's mem_mb, runtime, disk_mb and nodes: from lomo.budget (its GPUs,
    Table 2's throughput, its checkpoint) on GPUs; the profile's `resources` on CPU."""
    if not config["resources"]["gpus"]:
        return {**config["resources"], "disk_mb": 1000, "nodes": 1}
    w = wildcards
    return budgeted_resources(w.model, w.variant, w.task, saves_model(w))


@functools.cache  # each resource of a job asks: plan it once
def budgeted_resources(slug, variant, task, save_model=False):
    from lomo.budget import job_resources

    model = MODELS[slug]
    gpus = config.get("model_gpus", {}).get(model, config["resources"]["gpus"])
    settings = {**RUN_SETTINGS[(slug, variant, task)], "save_model": save_model}
    return job_resources(
        model, method_of(variant), task, settings, gpus, config["resources"]["runtime"]
    )


# A job longer than resources.runtime (the partition's time limit) runs in several submissions
# (lomo.budget): Snakemake resubmits it after each stop before the limit, and twice more for
# preemptions. The count is the longest job's; on CPU no job is resubmitted.
FINETUNE_RETRIES = (
    max(budgeted_resources(*key)["submissions"] for key in RUN_SETTINGS) + 1
    if config["resources"]["gpus"]
    else 0
)


def on_gpus(gpus):
    """The prefix that runs a job's command on `gpus` GPUs that no other job of this machine
    holds (lomo.gpus; under SLURM and on CPU-only machines the command runs as it is)."""
    return f"{PYTHON} -m lomo.gpus {gpus} -- " if gpus else ""


def launcher(wildcards):
    gpus = job_gpus(wildcards)
    return OFFLINE + on_gpus(gpus) + config["launcher"].format(python=PYTHON, gpus=gpus)


def deepspeed_flag(wildcards):
    ds = config.get("deepspeed_config")
    return f"--deepspeed {ds}" if ds else ""


def data_flags():
    data_dir = HUB_COPY or DATA_DIR
    return f"--source {SOURCE}" + (f" --data-dir {data_dir}" if data_dir else "")


def data_copy():
    """The prepared copy of the hub dataset that jobs read, if the source is the hub."""
    return [f"{HUB_COPY}/prepared.json"] if HUB_COPY else []


RUNS = [
    f"{RESULTS}/superglue/{model}/{variant}/{task}/seed{seed}/metrics.json"
    for (model, variant, task) in RUN_SETTINGS
    for seed in config["seeds"]
]
SELECT_OVER = " ".join(selection_keys(config))
# GPU measurements that need more memory per GPU than the profile's `gpu_memory_gib` (as
# `lomo plan` predicts) are left out of `all` and of the notebooks, so `all` completes on the
# profile's GPUs. `snakemake beyond_gpu_memory` builds them (on GPUs that have the memory: route
# their rules there, e.g. `--set-resources sgd_claims:slurm_partition=NAME`); with a
# `gpu_memory_gib` they fit, they are part of `all` and the notebooks again.
try:
    BEYOND = beyond_gpu_memory(config)
except ValueError as error:
    raise WorkflowError(f"config: {error}")
for name, need in BEYOND.items():
    print(
        f"{name} needs {need:.0f} GiB per GPU, more than gpu_memory_gib: not part of `all` "
        "(snakemake beyond_gpu_memory)",
        file=sys.stderr,
    )
MEMORY_TABLES = expand(
    f"{ARTIFACTS}/tables/memory_{{name}}.csv", name=[n for n in MEMORY if f"memory_{n}" not in BEYOND]
)
THROUGHPUT_TABLES = expand(
    f"{ARTIFACTS}/tables/throughput_{{name}}.csv",
    name=[n for n in THROUGHPUT if f"throughput_{n}" not in BEYOND],
)
SGD_CLAIMS_FIT = "sgd_claims" not in BEYOND
BEYOND_TARGETS = [f"{ARTIFACTS}/tables/{name}.csv" for name in BEYOND if name != "sgd_claims"]
BEYOND_TARGETS += [] if SGD_CLAIMS_FIT else [f"{RESULTS}/analysis/sgd_claims.json"]


def tables(*names):
    """A notebook table's files (lomo.report.analysis.save_table): CSV and LaTeX."""
    return [f"{ARTIFACTS}/tables/{name}.{ext}" for name in names for ext in ("csv", "tex")]


def figures(*names):
    """A notebook figure's files (lomo.report.analysis.save_figure): PNG and PDF."""
    return [f"{ARTIFACTS}/figures/{name}.{ext}" for name in names for ext in ("png", "pdf")]
