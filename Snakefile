"""lomo-repro workflow: fine-tune and evaluate every (model, method, task, seed), measure
memory and throughput, compare everything with the paper and run the analysis notebooks.

    snakemake --cores all                               # laptop profile (config/config.yaml)
    snakemake --cores all --configfile config/ci.yaml   # tiny end-to-end check
    snakemake --profile profiles/slurm --configfile config/paper.yaml
    snakemake --cores all --configfile config/rehearsal.yaml   # the paper path on CPU ranks
    snakemake memory | throughput                       # only Tables 1 / 2

Rules only orchestrate: each calls one `lomo` command or runs one notebook. Outputs live under
results/{profile}/ with every wildcard in the path, so `snakemake <path>` rebuilds one piece.
"""


# A --configfile replaces the default profile instead of being merged into it, so no setting
# of one profile leaks into another (Snakemake would merge them key by key).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


rule all:
    input:
        # Every run is a target itself, so a deleted metrics.json is rebuilt (and the tables
        # after it) even though the tables that depend on it still exist.
        RUNS,
        f"{RESULTS}/tables/superglue.csv",
        f"{RESULTS}/figures/superglue.png",
        MEMORY_TABLES,
        THROUGHPUT_TABLES,
        f"{RESULTS}/analysis/notebooks/memory_throughput.ipynb",
        f"{RESULTS}/analysis/README_results.md",


# GPU measurements that need more memory per GPU than the profile's gpu_memory_gib (not in all).
rule beyond_gpu_memory:
    input:
        BEYOND_TARGETS,


include: "workflow/rules/superglue.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/analysis.smk"
