"""lomo-repro workflow: fine-tune and evaluate every (model, method, task, seed), then tabulate.

    snakemake --cores all                               # laptop profile (config/config.yaml)
    snakemake --cores all --configfile config/ci.yaml   # tiny end-to-end check
    snakemake --profile profiles/slurm --configfile config/paper.yaml

Rules only orchestrate: each calls one `lomo` command. Outputs live under results/{profile}/
with every wildcard in the path, so `snakemake <path>` rebuilds exactly one piece.
"""

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lomo.workflow import model_slug, settings_to_flags
from tasks.superglue.source import SourceError, resolve_source


configfile: "config/config.yaml"


report: "config/report/workflow.rst"


validate(config, "config/schemas/config.schema.yaml")

PROFILE = config["profile"]
# The lomo CLI of the Python running Snakemake: works from a venv that is not activated.
LOMO = f"{sys.executable} -m lomo.cli"
RESULTS = f"results/{PROFILE}"
# Model names may contain slashes (hub ids); paths use a slug without them.
MODELS = {model_slug(name): name for name in config["models"]}

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


rule all:
    input:
        # Every run is a target itself, so a deleted metrics.json is rebuilt (and the tables
        # after it) even though the tables that depend on it still exist.
        RUNS,
        f"{RESULTS}/tables/superglue.csv",
        f"{RESULTS}/tables/superglue.md",
        f"{RESULTS}/tables/superglue.tex",
        f"{RESULTS}/figures/superglue.png",


rule prepare_model:
    output:
        f"{RESULTS}/models/{{model}}.json",
    params:
        lomo=LOMO,
        name=lambda w: MODELS[w.model],
    conda:
        "environment.yml"
    log:
        f"{RESULTS}/logs/prepare_model/{{model}}.log",
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
    shell:
        "{params.lomo} prepare-model --model {params.name} --out {output} > {log} 2>&1"


rule finetune:
    input:
        f"{RESULTS}/models/{{model}}.json",
    output:
        metrics=f"{RESULTS}/superglue/{{model}}/{{method}}/{{task}}/seed{{seed}}/metrics.json",
    params:
        name=lambda w: MODELS[w.model],
        launcher=launcher,
        settings=run_settings,
        data=data_flags(),
        deepspeed=deepspeed_flag,
        out=lambda w, output: os.path.dirname(output.metrics),
    conda:
        "environment.yml"
    log:
        f"{RESULTS}/logs/finetune/{{model}}/{{method}}/{{task}}/seed{{seed}}.log",
    threads: config["resources"]["threads"]
    resources:
        # `gpus` schedules local runs (--resources gpus=N); the SLURM plugin reads `gpu`.
        gpus=job_gpus,
        gpu=job_gpus,
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
    shell:
        "{params.launcher} finetune --model {params.name} --method {wildcards.method}"
        " --task {wildcards.task} --seed {wildcards.seed} {params.data} {params.settings}"
        " {params.deepspeed} --threads {threads} --out {params.out} > {log} 2>&1"


rule superglue_table:
    input:
        RUNS,
    params:
        lomo=LOMO,
    output:
        csv=report(
            f"{RESULTS}/tables/superglue.csv",
            caption="config/report/superglue_table.rst",
            category="SuperGLUE",
        ),
        md=f"{RESULTS}/tables/superglue.md",
        tex=f"{RESULTS}/tables/superglue.tex",
        png=report(
            f"{RESULTS}/figures/superglue.png",
            caption="config/report/superglue_figure.rst",
            category="SuperGLUE",
        ),
    conda:
        "environment.yml"
    log:
        f"{RESULTS}/logs/superglue_table.log",
    shell:
        "{params.lomo} table --runs {input} --reference paper/reference/table3_superglue.csv"
        " --csv {output.csv} --markdown {output.md} --latex {output.tex} --figure {output.png}"
        " > {log} 2>&1"
