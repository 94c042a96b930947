"""Analysis rules: the SGD-claim measurements and the notebooks in analysis/ (`lomo notebook`).

Executed notebooks land in results/{profile}/analysis/notebooks/; tables and figures in
{ARTIFACTS}/{tables,figures}/ (paper/ for the laptop and paper profiles). Every file a notebook
writes is a declared output: a table is CSV + LaTeX, a figure PNG + PDF (lomo.report.analysis
save_table / save_figure); the parts a notebook skips for lack of runs are declared only when
the profile has those runs. The readme_results rule renders the README's Results section into
a file; `lomo readme-results --write` puts it into README.md.
"""

ANALYSIS = f"{RESULTS}/analysis"

# The SGD claims (section 3.1) on the models and with the flags of the config's `claims`.
SGD_MODELS = config["claims"]["sgd_models"]
SGD_SETTINGS = config["claims"]["sgd_settings"]
SGD_GPUS = 1 if "--device cuda" in SGD_SETTINGS else 0
# What the notebooks read: this profile's runs (not every folder under results/) and tables.
MEASUREMENTS = {"memory_tables": MEMORY_TABLES, "throughput_tables": THROUGHPUT_TABLES}
NOTEBOOK_PARAMS = f"-p results_dir {RESULTS} -p profile {PROFILE} -p out_dir {ARTIFACTS}"
RUN_METHODS = {(method_of(variant), task) for _, variant, task in RUN_SETTINGS}
# Figure 3's comparison: lora, lora+lomo or lomo runs on its tasks (analysis.figure3_comparison)
FIGURE3_RUNS = any(
    method in ("lora", "lora+lomo", "lomo") and task in ("boolq", "multirc")
    for method, task in RUN_METHODS
)
# The optimizer comparison: full-parameter runs without adapters (the sgd_claims notebook's FULL)
FULL_PARAMETER_RUNS = any(
    METHODS[m].trains_base and not METHODS[m].lora for m, _ in RUN_METHODS
)




rule sgd_claims:
    input:
        runs=[f"{run}/metrics.json" for run in DISTANCE_RUNS],
        data=data_copy(),
    output:
        f"{ANALYSIS}/sgd_claims.json",
    params:
        lomo=LOMO,
        models=" ".join(SGD_MODELS),
        settings=SGD_SETTINGS,
        data=data_flags(),
        runs=lambda wildcards, input: " ".join(os.path.dirname(path) for path in input.runs),
        task=DISTANCE_TASK,
        gpus=OFFLINE + on_gpus(SGD_GPUS),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/sgd_claims.log",
    threads: config["resources"]["threads"]
    resources:
        gpus=SGD_GPUS,
        gpu=SGD_GPUS,
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
    shell:
        "{params.gpus}{params.lomo} sgd-claims --models {params.models} --task {params.task} {params.data}"
        " {params.settings} --distance-runs {params.runs} --threads {threads} --out {output}"
        " > {log} 2>&1"


rule compare_to_paper:
    input:
        notebook="analysis/compare_to_paper.ipynb",
        runs=RUNS,
        memory=MEMORY_TABLES,
        throughput=THROUGHPUT_TABLES,
    output:
        notebook=f"{ANALYSIS}/notebooks/compare_to_paper.ipynb",
        table=f"{ARTIFACTS}/tables/compare_superglue.csv",
        claims=f"{ARTIFACTS}/tables/claims_compare.csv",
        figure=report(
            f"{ARTIFACTS}/figures/compare_superglue.png",
            caption="../report/compare_superglue.rst",
            category="Analysis",
        ),
        pdf=f"{ARTIFACTS}/figures/compare_superglue.pdf",
        tables=tables(
            "compare_nll",
            *(["compare_memory"] if MEMORY_TABLES else []),
            *(["compare_throughput"] if THROUGHPUT_TABLES else []),
            *(["compare_figure3"] if FIGURE3_RUNS else []),
        ),
        latex=f"{ARTIFACTS}/tables/compare_superglue.tex",
        figure3=figures("compare_figure3") if FIGURE3_RUNS else [],
    params:
        lomo=LOMO,
        notebook_params=NOTEBOOK_PARAMS,
        inputs=json.dumps({"run_metrics": RUNS, **MEASUREMENTS}),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/compare_to_paper.log",
    shell:
        "{params.lomo} notebook {input.notebook} {output.notebook} {params.notebook_params}"
        " -y '{params.inputs}' > {log} 2>&1"


rule sgd_claims_notebook:
    input:
        notebook="analysis/sgd_claims.ipynb",
        measured=f"{ANALYSIS}/sgd_claims.json",
        runs=RUNS,
    output:
        notebook=f"{ANALYSIS}/notebooks/sgd_claims.ipynb",
        claims=f"{ARTIFACTS}/tables/claims_sgd.csv",
        implicit=report(
            f"{ARTIFACTS}/figures/sgd_implicit_batch.png",
            caption="../report/sgd_claims.rst",
            category="Analysis",
        ),
        tables=tables(
            "sgd_implicit_batch",
            "sgd_smoothness",
            "sgd_hessian",
            "sgd_smoothness_steps",
            *(["optimizer_comparison"] if FULL_PARAMETER_RUNS else []),
            *(["distance_travelled", "distance_travelled_layers"] if DISTANCE_RUNS else []),
        ),
        figures=[
            f"{ARTIFACTS}/figures/sgd_implicit_batch.pdf",
            *figures("sgd_smoothness", "sgd_smoothness_steps"),
            *(figures("optimizer_comparison") if FULL_PARAMETER_RUNS else []),
            *(figures("distance_travelled") if DISTANCE_RUNS else []),
        ],
    params:
        lomo=LOMO,
        notebook_params=NOTEBOOK_PARAMS,
        inputs=json.dumps({"run_metrics": RUNS}),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/sgd_claims_notebook.log",
    shell:
        "{params.lomo} notebook {input.notebook} {output.notebook} {params.notebook_params}"
        " -p sgd_claims_json {input.measured} -y '{params.inputs}' > {log} 2>&1"


rule memory_throughput_notebook:
    input:
        notebook="analysis/memory_throughput.ipynb",
        memory=MEMORY_TABLES,
        throughput=THROUGHPUT_TABLES,
    output:
        notebook=f"{ANALYSIS}/notebooks/memory_throughput.ipynb",
        memory=report(
            f"{ARTIFACTS}/figures/memory_breakdown.png",
            caption="../report/memory_figure.rst",
            category="Memory and throughput",
        ),
        figures=[f"{ARTIFACTS}/figures/memory_breakdown.pdf", *figures("throughput_tgs")],
    params:
        lomo=LOMO,
        notebook_params=NOTEBOOK_PARAMS,
        inputs=json.dumps(MEASUREMENTS),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/memory_throughput.log",
    shell:
        "{params.lomo} notebook {input.notebook} {output.notebook} {params.notebook_params}"
        " -y '{params.inputs}' > {log} 2>&1"


rule readme_results:
    input:
        f"{ARTIFACTS}/tables/compare_superglue.csv",
        f"{ARTIFACTS}/tables/claims_compare.csv",
        [f"{ARTIFACTS}/tables/claims_sgd.csv"] if SGD_CLAIMS_FIT else [],
    output:
        f"{ANALYSIS}/README_results.md",
    params:
        lomo=LOMO,
        tables=lambda w, input: os.path.dirname(input[0]),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/readme_results.log",
    shell:
        "{params.lomo} readme-results --tables {params.tables} --out {output}"
        " > {log} 2>&1"
