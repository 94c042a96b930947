"""Tables 1 and 2 by measurement: one `lomo memory` / `lomo throughput` per entry of the
config's `memory` and `throughput` lists. `snakemake memory` and `snakemake throughput` build
only these."""


wildcard_constraints:
    memory_name="|".join(MEMORY) or "^$",
    throughput_name="|".join(THROUGHPUT) or "^$",


rule memory:
    input:
        MEMORY_TABLES,


rule throughput:
    input:
        THROUGHPUT_TABLES,


rule memory_table:
    output:
        csv=report(
            f"{ARTIFACTS}/tables/memory_{{memory_name}}.csv",
            caption="../report/memory_table.rst",
            category="Memory and throughput",
        ),
        tex=f"{ARTIFACTS}/tables/memory_{{memory_name}}.tex",
        raw=f"{ARTIFACTS}/tables/memory_{{memory_name}}_raw.json",
    params:
        lomo=LOMO,
        flags=lambda w: measurement_flags(MEMORY[w.memory_name]),
        gpus=lambda w: on_gpus(measurement_gpus(MEMORY[w.memory_name])),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/memory/{{memory_name}}.log",
    # Each configuration runs in a fresh subprocess (its process peak is its own): one at a time.
    threads: config["resources"]["threads"]
    resources:
        gpus=lambda w: measurement_gpus(MEMORY[w.memory_name]),
        gpu=lambda w: measurement_gpus(MEMORY[w.memory_name]),
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
    shell:
        "{params.gpus}{params.lomo} memory {params.flags} --reference paper/reference/table1_memory.csv"
        " --raw {output.raw} --csv {output.csv} --tex {output.tex}"
        " > {log} 2>&1"


rule throughput_table:
    output:
        csv=report(
            f"{ARTIFACTS}/tables/throughput_{{throughput_name}}.csv",
            caption="../report/throughput_table.rst",
            category="Memory and throughput",
        ),
        tex=f"{ARTIFACTS}/tables/throughput_{{throughput_name}}.tex",
    params:
        lomo=LOMO,
        flags=lambda w: measurement_flags(THROUGHPUT[w.throughput_name]),
        gpus=lambda w: on_gpus(measurement_gpus(THROUGHPUT[w.throughput_name])),
    conda:
        "../../environment.yml"
    log:
        f"{RESULTS}/logs/throughput/{{throughput_name}}.log",
    threads: config["resources"]["threads"]
    resources:
        gpus=lambda w: measurement_gpus(THROUGHPUT[w.throughput_name]),
        gpu=lambda w: measurement_gpus(THROUGHPUT[w.throughput_name]),
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
    shell:
        "{params.gpus}{params.lomo} throughput {params.flags} --reference paper/reference/table2_throughput.csv"
        " --csv {output.csv} --tex {output.tex} > {log} 2>&1"
