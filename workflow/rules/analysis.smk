"""Analysis rules: the SGD-claim measurements and the notebooks in analysis/ (`lomo notebook`).

Executed notebooks land in results/{profile}/analysis/notebooks/; tables and figures in
{ARTIFACTS}/{tables,figures}/ (paper/ for the laptop and paper profiles, whose README Results
section the readme_results rule rewrites).
"""

ANALYSIS = f"{RESULTS}/analysis"

# The SGD claims (section 3.1) on the models and with the flags of the config's `claims`.
SGD_MODELS = config["claims"]["sgd_models"]
SGD_SETTINGS = config["claims"]["sgd_settings"]
SGD_GPUS = 1 if "--device cuda" in SGD_SETTINGS else 0
DISTANCE_RUNS = [run for run in map(distance_run, ("lomo", "adamw")) if run]
MEASUREMENTS = json.dumps({"memory_tables": MEMORY_TABLES, "throughput_tables": THROUGHPUT_TABLES})
NOTEBOOK_PARAMS = f"-p results_dir {RESULTS} -p profile {PROFILE} -p out_dir {ARTIFACTS}"



rule sgd_claims:
    input:
        [f"{run}/metrics.json" for run in DISTANCE_RUNS],
    output:
        f"{ANALYSIS}/sgd_claims.json",
    params:
        lomo=LOMO,
        models=" ".join(SGD_MODELS),
        settings=SGD_SETTINGS,
        data=data_flags(),
        runs=lambda wildcards, input: " ".join(os.path.dirname(path) for path in input),
        task=DISTANCE_TASK,
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
        "{params.lomo} sgd-claims --models {params.models} --task {params.task} {params.data}"
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
        nll=f"{ARTIFACTS}/tables/compare_nll.csv",
        figure=report(
            f"{ARTIFACTS}/figures/compare_superglue.png",
            caption="../report/compare_superglue.rst",
            category="Analysis",
        ),
    params:
        lomo=LOMO,
        notebook_params=NOTEBOOK_PARAMS,
        measurements=MEASUREMENTS,
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/compare_to_paper.log",
    shell:
        "{params.lomo} notebook {input.notebook} {output.notebook} {params.notebook_params}"
        " -y '{params.measurements}' > {log} 2>&1"


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
        smoothness=f"{ARTIFACTS}/figures/sgd_smoothness.png",
    params:
        lomo=LOMO,
        notebook_params=NOTEBOOK_PARAMS,
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/sgd_claims_notebook.log",
    shell:
        "{params.lomo} notebook {input.notebook} {output.notebook} {params.notebook_params}"
        " -p sgd_claims_json {input.measured} > {log} 2>&1"


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
        throughput=f"{ARTIFACTS}/figures/throughput_tgs.png",
    params:
        lomo=LOMO,
        notebook_params=NOTEBOOK_PARAMS,
        measurements=MEASUREMENTS,
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/memory_throughput.log",
    shell:
        "{params.lomo} notebook {input.notebook} {output.notebook} {params.notebook_params}"
        " -y '{params.measurements}' > {log} 2>&1"


rule readme_results:
    input:
        f"{ARTIFACTS}/tables/compare_superglue.csv",
        f"{ARTIFACTS}/tables/claims_compare.csv",
        f"{ARTIFACTS}/tables/claims_sgd.csv",
    output:
        f"{ANALYSIS}/README_results.md",
    params:
        lomo=LOMO,
        tables=lambda w, input: os.path.dirname(input[0]),
        write="--write" if PUBLISHED else "",
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/analysis/readme_results.log",
    shell:
        "{params.lomo} readme-results --tables {params.tables} --out {output} {params.write}"
        " > {log} 2>&1"
