"""Configuration, data source and the helpers every rule file uses.

Included first by the Snakefile: validates the config, resolves the SuperGLUE source (and
stops with what to set when there is none) and names the runs.
"""

import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lomo.workflow import model_slug, settings_to_flags
from tasks.superglue.source import SourceError, resolve_source


validate(config, "../../config/schemas/config.schema.yaml")

PROFILE = config["profile"]
# The lomo CLI of the Python running Snakemake: works from a venv that is not activated.
LOMO = f"{sys.executable} -m lomo.cli"
RESULTS = f"results/{PROFILE}"
# Model names may contain slashes (hub ids); paths use a slug without them.
MODELS = {model_slug(name): name for name in config["models"]}
# The laptop and paper profiles publish their tables and figures in paper/ (committed, and
# the README's Results section is rendered from them); other profiles keep them in results/.
PUBLISHED = PROFILE in ("laptop", "paper")
ARTIFACTS = "paper" if PUBLISHED else f"{RESULTS}/analysis"
# Memory and throughput measurements by name; each entry's other keys are command flags.
MEMORY = {entry["name"]: entry for entry in config["memory"]}
THROUGHPUT = {entry["name"]: entry for entry in config["throughput"]}

try:
    SOURCE, DATA_DIR, TASKS = resolve_source(
        config.get("superglue_dir"), config["tasks"], config["optional_tasks"]
    )
except SourceError as error:
    raise WorkflowError(f"SuperGLUE data: {error}")


wildcard_constraints:
    model="|".join(MODELS),
    method="|".join(m.replace("+", r"\+") for m in config["methods"]),
    task="|".join(TASKS),
    seed=r"\d+",


def run_settings(wildcards):
    """Command-line flags of one run: shared settings, then the method's, then the task's."""
    return settings_to_flags(
        {
            **config["finetune"],
            **config["method_settings"].get(wildcards.method, {}),
            **config["task_settings"].get(wildcards.task, {}),
        }
    )


def measurement_flags(entry):
    """Command-line flags of one memory or throughput measurement (all keys but its name)."""
    return settings_to_flags({key: value for key, value in entry.items() if key != "name"})


def measurement_gpus(entry):
    return 1 if entry.get("device") == "cuda" else 0


def job_gpus(wildcards):
    return config.get("model_gpus", {}).get(MODELS[wildcards.model], config["resources"]["gpus"])


def launcher(wildcards):
    return config["launcher"].format(python=sys.executable, gpus=job_gpus(wildcards))


def deepspeed_flag(wildcards):
    ds = config.get("deepspeed_config")
    return f"--deepspeed {ds}" if ds and wildcards.method != "zero-shot" else ""


def data_flags():
    return f"--source {SOURCE}" + (f" --data-dir {DATA_DIR}" if DATA_DIR else "")


RUNS = expand(
    f"{RESULTS}/superglue/{{model}}/{{method}}/{{task}}/seed{{seed}}/metrics.json",
    model=MODELS,
    method=config["methods"],
    task=TASKS,
    seed=config["seeds"],
)
MEMORY_TABLES = expand(f"{ARTIFACTS}/tables/memory_{{name}}.csv", name=MEMORY)
THROUGHPUT_TABLES = expand(f"{ARTIFACTS}/tables/throughput_{{name}}.csv", name=THROUGHPUT)
