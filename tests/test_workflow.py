"""The Snakemake workflow: lint, dry runs of every profile, start-up errors, and the `ci`
profile end to end (tiny model, the SuperGLUE folder of tests/paths.py), including a partial
rerun."""

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from paths import DATA_DIR, ROOT

from lomo import budget, workflow
from lomo.cli import build_parser
from lomo.train import finetune as ft
from lomo.workflow import (
    SCHEMA,
    expand_runs,
    grid_points,
    model_slug,
    settings_to_flags,
    typed_by_schema,
)

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, env: dict | None = None, timeout: int = 120):
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_lint_is_clean():
    done = snakemake("--lint", env={"LOMO_SUPERGLUE_DIR": str(DATA_DIR)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Congratulations" in done.stdout + done.stderr


def test_every_rule_environment_lists_dependencies_only():
    """Snakemake creates a rule's conda environment from a copy of its file in .snakemake/conda,
    so a path in it (`-e .`) would install whatever lies next to the copy: every rule that runs
    a command names an environment of named packages only (jobs find lomo via PYTHONPATH)."""
    environments = set()
    for path in (ROOT / "workflow/rules").glob("*.smk"):
        for rule in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            if "    shell:" in rule:
                (name,) = re.findall(r"    conda:\n        \"(.+)\"", rule)
                environments.add((path.parent / name).resolve())
    assert environments == {ROOT / "environment.yml"}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert len(pip) > 20
    for line in pip:
        assert not line.startswith(("-", ".", "/")) and "://" not in line and "@" not in line, line


@pytest.mark.parametrize("use_conda", [False, True], ids=["venv", "use-conda"])
def test_jobs_run_lomo_from_the_workflow_directory(use_conda):
    """Under --use-conda a job runs the rule environment's `python` (first on PATH once
    Snakemake activates it), else the Python running Snakemake; either way with the workflow's
    directory on PYTHONPATH, as the environment holds the dependencies only. tests/fake_conda
    answers the checks a dry run makes; building the environment needs a real conda."""
    args = ["-n", "-p", "--forceall", "--configfile", "config/ci.yaml"]
    args += ["--config", f"superglue_dir={DATA_DIR}"]
    env = {}
    if use_conda:
        args.append("--use-conda")
        env["PATH"] = f"{ROOT / 'tests/fake_conda'}:{os.environ['PATH']}"
    done = snakemake(*args, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    commands = [line for line in done.stdout.splitlines() if line.startswith("Shell command: ")]
    commands = [command for command in commands if command != "Shell command: None"]  # `all`
    assert len(commands) > 10, done.stdout[-3000:]
    python = "python" if use_conda else sys.executable
    for command in commands:
        assert f" env PYTHONPATH={ROOT} {python} -m lomo.cli " in command, command
        assert (sys.executable in command) == (not use_conda), command


PROFILES = {
    "laptop": "config/config.yaml",
    "ci": "config/ci.yaml",
    "paper": "config/paper.yaml",
    "paper-core": "config/paper-core.yaml",
    "rehearsal": "config/rehearsal.yaml",
}
# Flags of a finetune job that say where and how it runs, not what it is.
PLACEMENT = {"model", "method", "task", "seed", "source", "data_dir", "deepspeed", "config"}


def planned_finetune_jobs(profile: str, superglue: Path) -> list[tuple[Path, dict, str]]:
    """(run folder, the flags given to lomo finetune, launcher) of every finetune job of a
    profile's dry run; the laptop profile is the default (no --configfile)."""
    args = ["-n", "-p", "--forceall", "--config", f"superglue_dir={superglue}"]
    if profile != "laptop":
        args += ["--configfile", PROFILES[profile]]
    done = snakemake(*args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = []
    for line in done.stdout.splitlines():
        if "lomo.cli finetune" not in line:
            continue
        launcher, rest = line.split(" finetune ", 1)
        words = shlex.split(rest.split(" > ")[0])
        args = vars(build_parser().parse_args(["finetune", *words]))
        given = {k: v for k, v in args.items() if k in ft.FinetuneConfig.__annotations__}
        jobs.append(
            (Path(args["out"]), {k: v for k, v in given.items() if v is not None}, launcher)
        )
    return jobs


def variant_settings(variant: str) -> dict:
    """`lomo@lr=0.05,warmup_ratio=0.1` -> {"lr": 0.05, "warmup_ratio": 0.1} (YAML scalars)."""
    _, _, own = variant.partition("@")
    return {k: yaml.safe_load(v) for k, v in (item.split("=") for item in own.split(",") if item)}


# paper-core and rehearsal share paper's rules and differ in their lists: slow (-m slow)
@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(p, marks=[pytest.mark.slow] * (p in ("paper-core", "rehearsal")))
        for p in PROFILES
    ],
)
def test_every_job_runs_exactly_what_its_profile_file_says(profile, full_superglue):
    """No setting leaks from one profile into another: each job's settings are the profile
    file's finetune + method + task settings + the run's own grid point / protocol / rank."""
    with open(ROOT / PROFILES[profile]) as f:
        said = yaml.safe_load(f)
    jobs = planned_finetune_jobs(profile, full_superglue)
    assert jobs
    # GPUs per model: the profile's model_gpus, else lomo.budget's (tests/test_budget.py)
    planned_gpus = said.get("model_gpus", {})
    if said.get("gpu_memory_gib") is not None and not planned_gpus:
        config = budget.load_profile(str(ROOT / PROFILES[profile]), None)
        planned_gpus = budget.model_gpus(config, expand_runs(config, config["tasks"]))
    variants, saving = defaultdict(set), []
    for out, given, launcher in jobs:
        model, variant, task, seed = out.parts[-4:]
        if given.pop("save_model", False):
            saving.append((model, variant.split("@")[0], task, seed))
        assert out.parts[:3] == ("results", said["profile"], "superglue")
        method = variant.split("@")[0]
        assert (given["method"], given["task"], f"seed{given['seed']}") == (method, task, seed)
        expected = {
            **said["finetune"],
            **said.get("method_settings", {}).get(method, {}),
            **said.get("task_settings", {}).get(task, {}),
            **variant_settings(variant),
        }
        assert {k: v for k, v in given.items() if k not in PLACEMENT} == expected, out
        ds = said.get("deepspeed_config")
        assert given.get("deepspeed") == ds
        gpus = planned_gpus.get(given["model"], said["resources"]["gpus"])
        python = f"env PYTHONPATH={ROOT} {sys.executable}"  # lomo from the workflow's folder
        assert launcher.endswith(said["launcher"].format(python=python, gpus=gpus)), launcher
        # a GPU job claims its own GPUs of the machine (lomo.gpus) before the launcher starts
        assert (f"-m lomo.gpus {gpus} -- " in launcher) == (gpus > 0), launcher
        variants[(model, method, task)].add(variant)
    # The distance runs of `lomo sgd-claims` save their final weights, and no other run: the
    # first model's first-seed LOMO and AdamW runs (one grid point each) on RTE.
    first = model_slug(said["models"][0])
    distance_task = "rte" if "rte" in said["tasks"] else said["tasks"][0]
    assert sorted(saving) == [
        (first, method, distance_task, f"seed{said['seeds'][0]}")
        for method in ("adamw", "lomo")
        if method in said["methods"]
    ]
    # Every grid point ran: Table 3's grid (times its extra protocols) for every method.
    for (model, method, task), names in variants.items():
        points = 1
        for values in said.get("grid", {}).get(method, {}).values():
            points *= len(values)
        protocols = 1 + sum(task in t for t in said.get("extra_protocols", {}).values())
        figure3 = said.get("figure3") or {}
        if method in figure3.get("methods", []) and task in figure3["tasks"]:
            continue  # Figure 3 adds LoRA ranks (checked below)
        assert len(names) == points * protocols, (model, method, task, names)
    if said.get("figure3"):
        figure3 = said["figure3"]
        for task in figure3["tasks"]:
            for method in figure3["methods"]:
                ranks = {
                    variant_settings(v).get("lora_r", said["method_settings"][method]["lora_r"])
                    for (_, m, t), names in variants.items()
                    if (m, t) == (method, task)
                    for v in names
                }
                assert ranks == set(figure3["lora_r"]), (method, task)


def test_invalid_config_value_stops_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "config/ci.yaml")
        .read_text()
        .replace("[zero-shot, lomo, lora]", "[zero-shot, magic]")
    )
    done = snakemake("-n", "--configfile", str(bad))
    assert done.returncode != 0
    assert "magic" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "profile, change, job, largest",
    [
        # the paper profile before LoRA accumulated micro batches: 16 x 1024 tokens of full
        # logits on one 24 GB GPU (25.2 GiB)
        (
            "paper",
            ("adam_eps: 0.000001, micro_batch: 8}", "adam_eps: 0.000001}"),
            "huggyllama--llama-7b/lora/",
            "largest micro batch that fits: 14 per GPU",
        ),
        # and before it bounded the evaluation's cache: 16 prompts of 1024 tokens at once
        (
            "paper",
            ("  eval_tokens: 1024\n", ""),
            "huggyllama--llama-7b/zero-shot/",
            "largest eval_tokens that fits: ",
        ),
        # the rehearsal profile's check at the tiny model's scale
        (
            "rehearsal",
            ("gpu_memory_gib: 0.25", "gpu_memory_gib: 0.038"),
            "tiny-llama/zero-shot/",
            "largest eval_tokens that fits: 671",
        ),
    ],
    ids=["paper-lora-training", "paper-evaluation", "rehearsal"],
)
def test_a_job_that_does_not_fit_the_gpus_stops_the_dry_run(
    tmp_path, full_superglue, profile, change, job, largest
):
    """`gpu_memory_gib`: every job is planned (lomo plan) when the workflow parses, so a dry
    run stops with one line naming the first job that does not fit and what would."""
    text = (ROOT / PROFILES[profile]).read_text()
    assert text.count(change[0]) == 1
    bad = tmp_path / "bad.yaml"
    # GPUs fixed as in Table 2: without model_gpus the workflow would give the job more GPUs
    fixed = "model_gpus: {huggyllama/llama-7b: 1, huggyllama/llama-13b: 2, "
    fixed += "huggyllama/llama-30b: 4, huggyllama/llama-65b: 8}\n"
    bad.write_text(text.replace(*change) + (fixed if profile == "paper" else ""))
    done = snakemake("-n", "--configfile", str(bad), "--config", f"superglue_dir={full_superglue}")
    assert done.returncode != 0
    output = (done.stdout + done.stderr).splitlines()
    (line,) = [line for line in output if line.startswith("config: job ")]
    assert job in line and "does not fit in" in line and largest in line, line


def test_invalid_task_name_stops_naming_the_declared_tasks(tmp_path):
    """The schema lists no task names; the workflow checks them against tasks.superglue.TASKS."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/ci.yaml").read_text().replace("[copa, rte]", "[copa, mnli]"))
    done = snakemake("-n", "--configfile", str(bad), "--config", f"superglue_dir={DATA_DIR}")
    assert done.returncode != 0
    assert "config: tasks.1: 'mnli' is not one of ['boolq', 'cb'," in done.stdout + done.stderr


def test_command_line_settings_are_typed_like_lomo_finetune():
    """--config 'finetune={epochs: 2}' reaches Snakemake as the string "2": typed by the key
    as lomo finetune types it, then validated; a bad value names its block and key."""
    data = f"superglue_dir={DATA_DIR}"
    done = snakemake("-n", "-p", "--config", "finetune={epochs: 2}", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " --epochs 2 " in done.stdout and " --protocol val-split " in done.stdout
    bad = snakemake("-n", "--config", "finetune={epochs: two}", data)
    assert bad.returncode != 0
    assert "config: finetune: epochs: expected a whole number, got 'two'" in bad.stdout + bad.stderr


def test_every_config_block_is_typed_by_the_schema():
    """Snakemake's --config gives every value inside a list or mapping as a string."""
    schema = yaml.safe_load(SCHEMA.read_text())
    strings = {
        "seeds": ["43"],
        "grid": {"lomo": {"lr": ["0.01", "3e-2"]}},
        "figure3": "null",
        "memory": [{"name": "m", "model": "tiny-llama", "layers": "2", "clip": "no"}],
        "claims": {"confidence": "0.9", "sgd_settings": "--pairs 2"},
        "profile": "42",  # a string where the schema says string
    }
    assert typed_by_schema(strings, schema, schema["$defs"]) == {
        "seeds": [43],
        "grid": {"lomo": {"lr": [0.01, 0.03]}},
        "figure3": None,
        "memory": [{"name": "m", "model": "tiny-llama", "layers": 2, "clip": False}],
        "claims": {"confidence": 0.9, "sgd_settings": "--pairs 2"},
        "profile": "42",
    }
    untyped = {"seeds": ["many"], "figure3": "nul"}  # left for the schema check to name
    assert typed_by_schema(untyped, schema, schema["$defs"]) == untyped


def test_command_line_config_is_typed_then_validated():
    data = f"superglue_dir={DATA_DIR}"
    overrides = ["seeds=[43]", "grid={lomo: {lr: [0.01, 0.03]}}", "figure3=null"]
    done = snakemake("-n", "-p", "--configfile", "config/ci.yaml", "--config", *overrides, data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lomo@lr=0.03/rte/seed43" in done.stdout and " --lr 0.03 " in done.stdout


BAD_CONFIG = [
    (
        "models=[gpt-17]",
        "config: models: unknown model 'gpt-17': expected one of smollm2-135m, tiny-llama, a "
        "local model folder with a config.json, or a Hugging Face hub id (owner/name)",
    ),
    ("seeds=[-1]", "config: seeds.0: -1 is less than the minimum of 0"),
    pytest.param(
        "seeds=[4294967296]",
        "config: seeds.0: 4294967296 is greater than the maximum of 4294967295",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "grid={lomo: {lr: [0.01, fast]}}",
        "config: grid.lomo.lr.1: 'fast' is not of type 'number'",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "models=[./nowhere]",
        "config: models: model folder ./nowhere does not exist or has no config.json",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "memory=[{name: m, model: tiny-llama, seq: 0}]",
        "config: memory.0.seq: 0 is less than the minimum of 1",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "figure3={models: [smollm2-135m], tasks: [rte], methods: [lora], lora_r: [2]}",
        "config: figure3.models ['smollm2-135m'] are not among models ['tiny-llama']: add them "
        "to models, or leave Figure 3 out (--config figure3=null)",
        marks=pytest.mark.slow,
    ),
]


def test_sgd_claims_models_are_checked_at_start():
    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    config["claims"]["sgd_models"] = ["tiny-llama", "tiny-llama:random"]
    workflow.check_models(config)
    config["claims"]["sgd_models"] = ["tiny-llama", "gpt-17:random"]
    with pytest.raises(ValueError, match="config: claims.sgd_models: unknown model 'gpt-17'"):
        workflow.check_models(config)


@pytest.mark.parametrize("override, message", BAD_CONFIG)
def test_bad_command_line_config_is_one_line_before_any_job(override, message):
    done = snakemake("-n", "--configfile", "config/ci.yaml", "--config", override)
    assert done.returncode != 0
    assert message in (done.stdout + done.stderr).splitlines(), done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# slow (-m slow); in the default suite: test_cli_errors' missing data folder
@pytest.mark.slow
def test_planning_works_without_data_and_the_first_job_that_reads_it_stops(tmp_path):
    # config/config.yaml leaves superglue_dir unset; the hub is unreachable (HF_HUB_OFFLINE).
    for args in (["--lint"], ["-n"]):
        done = snakemake(*args, env={"LOMO_SUPERGLUE_DIR": ""})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "set superglue_dir" in done.stderr  # said at once, as a warning
    missing = tmp_path / "superglue"
    profile = "no-data-test"
    args = ["--configfile", "config/ci.yaml", "--config", f"superglue_dir={missing}"]
    args += [f"profile={profile}"]
    planned = snakemake("-n", *args)
    assert planned.returncode == 0 and "is not a folder" in planned.stderr
    run = f"results/{profile}/superglue/tiny-llama/zero-shot/rte/seed42"
    done = snakemake("--cores", "1", f"{run}/metrics.json", *args, timeout=900)
    assert done.returncode != 0
    log = ROOT / f"results/{profile}/logs/finetune/tiny-llama/zero-shot/rte/seed42.log"
    assert f"lomo finetune: data folder {missing} does not exist" in log.read_text()
    assert not (ROOT / run / "metrics.json").exists()
    shutil.rmtree(ROOT / "results" / profile)


# --resources mem_mb=N, when given, is left as it is: that row is slow (-m slow)
@pytest.mark.parametrize(
    "extra, limit",
    [((), None), pytest.param(("--resources", "mem_mb=5000"), 5000, marks=pytest.mark.slow)],
    ids=["machine", "given"],
)
def test_local_jobs_are_scheduled_within_the_machines_memory(extra, limit):
    """Run locally, the scheduler counts each job's mem_mb against this machine's RAM, or
    against --resources mem_mb=N where that is given."""
    profile = f"memory-test-{len(extra)}"
    target = f"results/{profile}/models/tiny-llama.json"
    args = ("--cores", "1", target, *extra, "--configfile", "config/ci.yaml")
    args += ("--config", f"profile={profile}", f"superglue_dir={DATA_DIR}")
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    shutil.rmtree(ROOT / "results" / profile, ignore_errors=True)  # so the job runs
    done = snakemake(*args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    provided = re.search(r"Provided resources: .*mem_mb\D*(\d+)", done.stdout + done.stderr)
    assert provided and int(provided.group(1)) == (limit or machine), done.stdout + done.stderr
    shutil.rmtree(ROOT / "results" / profile)


def test_settings_to_flags():
    flags = settings_to_flags(
        {
            "max_length": 256,
            "activation_checkpointing": False,
            "lora_targets": ["q_proj", "v_proj"],
            "test_size": None,
            "sequential_updates": True,
        }
    )
    assert flags == (
        "--max-length 256 --no-activation-checkpointing --lora-targets q_proj "
        "v_proj --sequential-updates"
    )


# slow (-m slow; 85 s); in the default suite: one job of the rehearsal profile through the
# workflow, every profile's dry run, the tables' and notebooks' own tests
@pytest.mark.slow
def test_ci_profile_end_to_end_and_partial_rerun():
    profile = "ci-test"
    results = ROOT / "results" / profile
    shutil.rmtree(results, ignore_errors=True)
    args = ("--cores", "2", "--configfile", "config/ci.yaml", "--config", f"profile={profile}")
    args += (f"superglue_dir={DATA_DIR}",)
    done = snakemake(*args, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(results / "tables" / "superglue.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["task"]) for r in rows} == {
        (m, t) for m in ("zero-shot", "lomo", "lora") for t in ("copa", "rte")
    }
    assert all(0 <= float(r["value"]) <= 1 and int(r["n"]) == 8 for r in rows)
    assert (results / "figures" / "superglue.png").stat().st_size > 0
    # Tables 1 and 2 and the notebooks, all from this profile's own results.
    artifacts = results / "analysis"
    with open(artifacts / "tables" / "memory_tiny-llama.csv") as f:
        memory = list(csv.DictReader(f))
    assert {r["optimizer"] for r in memory} == {"adamw", "lomo"}
    assert all(float(r["census_peak_gb"]) > 0 for r in memory)
    with open(artifacts / "tables" / "throughput_tiny-llama.csv") as f:
        assert {r["optimizer"] for r in csv.DictReader(f)} == {"lomo", "sgd"}
    for notebook in ("compare_to_paper", "sgd_claims", "memory_throughput"):
        assert (artifacts / "notebooks" / f"{notebook}.ipynb").stat().st_size > 0
    with open(artifacts / "tables" / "compare_memory.csv") as f:
        assert {r["model"] for r in csv.DictReader(f)} == {"tiny-llama"}
    for figure in ("compare_superglue", "sgd_implicit_batch", "memory_breakdown"):
        assert (artifacts / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    assert "lomo beats zero-shot" in (artifacts / "README_results.md").read_text()
    # Every file the run wrote is declared (an output or a log) by some rule; Snakemake lists
    # the files inside a directory() output (a run's data/) as untracked, so those are skipped.
    listed = snakemake(*args, "--list-untracked")
    assert listed.returncode == 0, listed.stderr
    untracked = [
        line
        for line in (listed.stdout + listed.stderr).splitlines()
        if line.startswith(f"{results.relative_to(ROOT)}/")
        and not re.search(r"/seed\d+/data/", line)
    ]
    assert untracked == [], untracked

    report = results / "report.html"
    done = snakemake(*args, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    assert b"superglue.csv" in report.read_bytes()

    # Deleting one run's metrics recomputes that run and what reads it, nothing else.
    (results / "superglue/tiny-llama/lora/rte/seed42/metrics.json").unlink()
    plan = snakemake("-n", *args)
    assert plan.returncode == 0, plan.stderr
    # The dry run's job-count table: one "<rule> <count>" line per rule.
    counts = re.findall(r"^(\w+)\s+(\d+)$", plan.stdout, flags=re.MULTILINE)
    jobs = {rule: int(n) for rule, n in counts}
    assert jobs == {
        "finetune": 1,
        "superglue_table": 1,
        "compare_to_paper": 1,
        "sgd_claims_notebook": 1,
        "readme_results": 1,
        "all": 1,
        "total": 6,
    }
    shutil.rmtree(results)


REHEARSAL = ("--cores", "2", "--configfile", "config/rehearsal.yaml")


def check_rehearsal_run(resources_path: Path) -> bool:
    """A rehearsal run ran under ZeRO-3 on 2 ranks in the paper's dtype: LOMO in fp16 with
    dynamic loss scaling, LoRA+LOMO in bf16 (as the official code); a run whose step 3 was
    forced to overflow skipped it (the scale halved) on both ranks and went on. Returns
    whether it was forced."""
    resources = json.loads(resources_path.read_text())
    assert (resources["runtime"], resources["processes"]) == ("zero3", 2), resources_path
    config = yaml.safe_load((resources_path.parent / "config.yaml").read_text())
    if config["method"] == "lomo":
        assert config["dtype"] == "fp16" and config["allow_cpu_fp16"], resources_path
    if config["method"] == "lora+lomo":
        assert config["dtype"] == "bf16", resources_path
    if config["force_overflow_step"] != 3:
        return False
    log = list(csv.DictReader((resources_path.parent / "train_log.csv").open()))
    assert [r["overflow"] for r in log[2:4]] == ["1", "0"], resources_path
    assert float(log[2]["loss_scale"]) == float(log[1]["loss_scale"]) / 2, resources_path
    return True


@pytest.mark.e2e
def test_rehearsal_profile_runs_one_fp16_lomo_job():
    """The paper profile's launcher, torchrun on 2 CPU ranks, ZeRO-3 and fp16 loss scaling,
    through the workflow for one LOMO job (the whole profile: the slow test below)."""
    profile = "rehearsal-one-test"
    results = ROOT / "results" / profile
    shutil.rmtree(results, ignore_errors=True)
    run = results / "superglue/tiny-llama/lomo/rte/seed42"
    target = str(run.relative_to(ROOT) / "metrics.json")  # before --config, which takes the rest
    args = (target, *REHEARSAL, "--config", f"profile={profile}", f"superglue_dir={DATA_DIR}")
    done = snakemake(*args, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert check_rehearsal_run(run / "resources.json")
    shutil.rmtree(results)


@pytest.mark.slow
def test_rehearsal_profile_end_to_end():
    """The paper profile's path on 2 CPU ranks: every job through torchrun under ZeRO-3, the
    grid selected in the table, the held-out column, Figure 3's ranks, notebooks, report."""
    profile = "rehearsal-test"
    results = ROOT / "results" / profile
    shutil.rmtree(results, ignore_errors=True)
    args = (*REHEARSAL, "--config", f"profile={profile}", f"superglue_dir={DATA_DIR}")
    done = snakemake(*args, timeout=1800)  # a hang guard, not a benchmark
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = sorted((results / "superglue").glob("*/*/*/seed42/resources.json"))
    assert len(runs) == 17
    forced = sum(check_rehearsal_run(path) for path in runs)
    assert forced >= 4  # every LOMO run: 2 grid points x (copa, rte) and the held-out ones
    with open(results / "tables" / "superglue.csv") as f:
        rows = {(r["variant"], r["task"]): r for r in csv.DictReader(f)}
    lomo = rows[("lomo (protocol=paper)", "rte")]
    assert lomo["grid_points"] == "2"
    assert lomo["chosen"] in ("lr=0.05, warmup_ratio=0.1", "lr=0.03, warmup_ratio=0.1")
    assert rows[("lomo (protocol=heldout)", "rte")]["grid_points"] == "2"
    assert rows[("lomo (protocol=paper)", "copa")]["grid_points"] == "2"  # no held-out COPA run
    assert {v for v, t in rows if t == "rte" and v.startswith("lora+lomo")} == {
        "lora+lomo (lora_r=1)",
        "lora+lomo (lora_r=2)",
    }
    for notebook in ("compare_to_paper", "sgd_claims", "memory_throughput"):
        assert (results / "analysis" / "notebooks" / f"{notebook}.ipynb").stat().st_size > 0
    report = results / "report.html"
    done = snakemake(*args, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(results)


@pytest.mark.parametrize("order", [("lr", "warmup_ratio"), ("warmup_ratio", "lr")])
def test_grid_points_pair_each_value_with_its_key(order):
    grid = {"lr": [0.05, 0.03], "warmup_ratio": [0.1, 0.2, 0.3]}
    points = grid_points({key: grid[key] for key in order})  # YAML order is insertion order
    assert len(points) == 6
    assert {p["lr"] for p in points} == {0.05, 0.03}
    assert {p["warmup_ratio"] for p in points} == {0.1, 0.2, 0.3}


@pytest.mark.parametrize(
    "gpu_memory, left_out",
    [(24, {"memory_llama-7b_cuda", "sgd_claims"}), (80, {"sgd_claims"}), (141, set())],
)
def test_gpu_work_beyond_the_profiles_gpu_memory_is_named(gpu_memory, left_out):
    """The paper profile's GPU measurements against a card's memory: Table 1 at full depth
    without activation checkpointing (AdaLomo, the largest: 49 GiB by lomo plan) fits 80 GB
    but not 24 GB; sgd-claims holds five fp32 copies of LLaMA-7B's 6,738,415,616 weights."""
    config = budget.load_profile(str(ROOT / "config/paper.yaml"), gpu_memory)
    beyond = workflow.beyond_gpu_memory(config)
    assert set(beyond) == left_out
    if "sgd_claims" in beyond:
        assert beyond["sgd_claims"] == pytest.approx(5 * 4 * 6_738_415_616 / 2**30)
    config.pop("gpu_memory_gib")
    assert workflow.beyond_gpu_memory(config) == {}  # no GPU memory stated: nothing left out


def dry_run_jobs(*args: str) -> dict[str, int]:
    """Rule -> jobs of a dry run of the paper profile (with the laptop's data folder)."""
    done = snakemake("-n", "--configfile", "config/paper.yaml", "--config", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = done.stdout.split("Job stats:")[1].split("total")[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


# slow (-m slow); in the default suite: test_gpu_work_beyond_the_profiles_gpu_memory_is_named
@pytest.mark.slow
def test_all_completes_on_80_gb_cards_and_the_rest_is_its_own_target():
    """`snakemake --configfile config/paper.yaml all` on 80 GB cards: both Table 1
    measurements, no sgd-claims (126 GiB); `beyond_gpu_memory` is that job alone."""
    settings = ("gpu_memory_gib=80", f"superglue_dir={DATA_DIR}")
    jobs = dry_run_jobs(*settings)
    assert jobs["memory_table"] == 2 and jobs["throughput_table"] == 1
    assert "sgd_claims" not in jobs and "sgd_claims_notebook" not in jobs
    beyond = dry_run_jobs(*settings, "--", "beyond_gpu_memory")
    assert beyond["sgd_claims"] == 1 and "memory_table" not in beyond
