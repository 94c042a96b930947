"""Table 3 (and Figure 3): prepare each model once, fine-tune and evaluate every (model,
variant, task, seed), then tabulate against the paper, selecting over each method's grid."""


# Downloads run once, on the machine that runs Snakemake (a cluster's login node has network;
# its compute nodes may not): every job then reads local copies only.
localrules:
    prepare_model,
    prepare_superglue,


rule prepare_superglue:
    output:
        f"{RESULTS}/superglue_hub/prepared.json",
    params:
        lomo=LOMO,
        tasks=" ".join(TASKS),
        out=lambda w, output: os.path.dirname(output[0]),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/prepare_superglue.log",
    shell:
        "{params.lomo} prepare-data --tasks {params.tasks} --out {params.out} > {log} 2>&1"


rule prepare_model:
    output:
        f"{RESULTS}/models/{{model}}.json",
    params:
        lomo=LOMO,
        name=lambda w: MODELS[w.model],
    conda:
        "../../environment.yml"
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
        data_copy(),
    output:
        # metrics.json is written last: a folder with it is a finished run (lomo finetune)
        metrics=f"{RESULTS}/superglue/{{model}}/{{variant}}/{{task}}/seed{{seed}}/metrics.json",
        run=multiext(
            f"{RESULTS}/superglue/{{model}}/{{variant}}/{{task}}/seed{{seed}}/",
            "config.yaml",
            "fingerprint.json",
            "predictions.jsonl",
            "resources.json",
            "train_log.csv",
        ),
        data=directory(f"{RESULTS}/superglue/{{model}}/{{variant}}/{{task}}/seed{{seed}}/data"),
    params:
        name=lambda w: MODELS[w.model],
        method=lambda w: method_of(w.variant),
        launcher=launcher,
        settings=run_flags,
        data=data_flags(),
        deepspeed=deepspeed_flag,
        save_model=save_model_flag,
        out=lambda w, output: os.path.dirname(output.metrics),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/finetune/{{model}}/{{variant}}/{{task}}/seed{{seed}}.log",
    threads: config["resources"]["threads"]
    retries: FINETUNE_RETRIES
    resources:
        # `gpus` schedules local runs (--resources gpus=N); the SLURM plugin reads `gpu`.
        gpus=job_gpus,
        gpu=job_gpus,
        nodes=lambda w: job_resources(w)["nodes"],  # --standalone rendezvous: one node
        mem_mb=lambda w: job_resources(w)["mem_mb"],
        runtime=lambda w: job_resources(w)["runtime"],
        disk_mb=lambda w: job_resources(w)["disk_mb"],
    shell:
        "{params.launcher} finetune --model {params.name} --method {params.method}"
        " --task {wildcards.task} --seed {wildcards.seed} {params.data} {params.settings}"
        " {params.deepspeed} {params.save_model} --threads {threads} --out {params.out}"
        " > {log} 2>&1"


rule superglue_table:
    input:
        RUNS,
    params:
        lomo=LOMO,
        select_over=SELECT_OVER,
    output:
        csv=report(
            f"{RESULTS}/tables/superglue.csv",
            caption="../report/superglue_table.rst",
            category="SuperGLUE",
        ),
        md=f"{RESULTS}/tables/superglue.md",
        tex=f"{RESULTS}/tables/superglue.tex",
        png=report(
            f"{RESULTS}/figures/superglue.png",
            caption="../report/superglue_figure.rst",
            category="SuperGLUE",
        ),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/superglue_table.log",
    shell:
        "{params.lomo} table --runs {input} --select-over {params.select_over}"
        " --reference paper/reference/table3_superglue.csv"
        " --csv {output.csv} --markdown {output.md} --latex {output.tex} --figure {output.png}"
        " > {log} 2>&1"
