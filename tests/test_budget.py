"""lomo.budget: the GPUs, memory, time and disk each paper job is submitted with (a dry run of
the SLURM profile), the cost table, and the constants it is calibrated on."""

import math
import os
import random
import re
import statistics
import subprocess
import sys

import pytest
from paths import DATA_DIR, ROOT

from lomo import budget
from lomo.cli import main as lomo_main
from lomo.train.evaluate import encode_prompt
from lomo.train.models import SMOLLM2, load_tokenizer
from tasks.superglue import TASKS, get_template, load_split

SIZES = ["huggyllama/llama-7b", "huggyllama/llama-13b", "huggyllama/llama-30b"]
SIZES += ["huggyllama/llama-65b"]


@pytest.fixture(scope="module")
def slurm_dry_run() -> dict[str, dict[str, str]]:
    """The paper profile under profiles/slurm, planned (-n): job wildcards -> resources."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm"]
        + ["--configfile", "config/paper.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs, wildcards = {}, None
    for line in done.stdout.splitlines():
        if line.strip().startswith("wildcards:"):
            wildcards = line.split(":", 1)[1].strip()
        elif line.strip().startswith("resources:") and wildcards:
            jobs[wildcards] = dict(re.findall(r"(\w+)=([^,]+)", line))
            wildcards = None
    return jobs


def test_slurm_gets_each_jobs_own_resources(slurm_dry_run):
    zero_shot = slurm_dry_run["model=huggyllama--llama-7b, variant=zero-shot, task=rte, seed=42"]
    lomo = slurm_dry_run[
        "model=huggyllama--llama-65b, variant=lomo@lr=0.05,warmup_ratio=0.05, task=boolq, seed=42"
    ]
    assert (zero_shot["gpu"], zero_shot["nodes"], zero_shot["mem_mb"]) == ("1", "1", "10240")
    assert (lomo["gpu"], lomo["nodes"], lomo["mem_mb"]) == ("8", "1", str(1024 * (6 * 8 + 4)))
    # 65B LOMO on BoolQ, by hand: 10 epochs x 1000 examples x 319 tokens trained, 11 x 1000 x
    # 319 evaluated at a third of the cost, x 1.5, at Table 2's 4.93 tokens/GPU/s on 8 GPUs.
    seconds = 1.5 * (10 * 1000 * 319 + 11 * 1000 * 319 / 3) / (4.93 * 8)
    work = math.ceil(seconds / 60)  # about 46 hours: over the profile's 24-hour limit
    assert int(lomo["runtime"]) == 1440  # resources.runtime, the partition's limit
    resources = budget.job_resources(
        "huggyllama/llama-65b", "lomo", "boolq", {"max_length": 1024}, 8, 1440
    )
    # two submissions, each stopping 10 minutes before the limit after 15 minutes of start-up
    assert resources["submissions"] == math.ceil(work / (1440 - 15 - 10)) == 2
    assert resources["minutes"] == work + 2 * (15 + 10)
    assert int(lomo["disk_mb"]) >= 2 * 2 * 65e9 / 1e6  # two fp16 checkpoints of the weights
    # No --signal: SLURM sends it to every process of the job step, and the Snakemake and shell
    # processes around lomo finetune die of SIGUSR1; lomo finetune reads SLURM_JOB_END_TIME.
    assert "--signal" not in lomo.get("slurm_extra", "")
    # zero-shot: 1000 + 277 RTE examples evaluated, minutes; no checkpoint
    assert int(zero_shot["runtime"]) < 30 and int(zero_shot["disk_mb"]) == 1000


def test_the_distance_run_has_room_for_its_saved_weights(slurm_dry_run):
    """The first model's first-seed LOMO run on RTE saves its final weights (--save-model) for
    `lomo sgd-claims`: rank 0 gathers all of them onto its CPU and writes them beside the run."""
    weights = 2 * 6_738_415_616  # fp16
    rte = [
        job
        for key, job in slurm_dry_run.items()
        if key.startswith("model=huggyllama--llama-7b, variant=lomo") and "task=rte" in key
    ]
    saving = [job for job in rte if int(job["mem_mb"]) > 10240]
    assert len(rte) > 1 and len(saving) == 1  # one grid point's run (one seed in the profile)
    assert int(saving[0]["mem_mb"]) == 10240 + math.ceil(weights / 2**20)
    assert int(saving[0]["disk_mb"]) == math.ceil((2 * weights + weights) / 1e6) + 1000


def test_gpus_follow_the_gpu_memory():
    config = budget.load_profile(str(ROOT / "config/paper.yaml"), None)
    from lomo.workflow import expand_runs

    runs = expand_runs(config, config["tasks"])
    assert list(budget.model_gpus(config, runs).values()) == [1, 2, 4, 8]  # Table 2's, at 24 GiB
    wide = budget.load_profile(str(ROOT / "config/paper.yaml"), 80)
    fewer = budget.model_gpus(wide, runs)
    assert fewer["huggyllama/llama-7b"] == 1 and fewer["huggyllama/llama-65b"] < 8


def test_the_budget_table(capsys):
    lomo_main(["budget", "--profile", str(ROOT / "config/paper-core.yaml")])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line.split("|") for line in lines if line.startswith("|")}
    total = rows["total"]
    assert total[2].strip() == "36"  # 2 models x 6 tasks x 3 methods
    jobs = budget.profile_jobs(budget.load_profile(str(ROOT / "config/paper-core.yaml"), None))
    gpu_hours = sum(job["gpus"] * job["minutes"] for job in jobs) / 60
    assert float(total[5].replace(",", "")) == round(gpu_hours)
    # 7B fits one 24 GB GPU: eight 28 GB LOMO checkpoints (two fp16 copies + 1 GB) at once
    assert (
        rows["huggyllama/llama-7b"][8].strip()
        == f"{8 * (2 * 2 * 6_738_415_616 / 1e6 + 1000) / 1000:.0f} GB"
    )
    # the 7B LOMO run on RTE whose final weights lomo sgd-claims reads keeps a third copy
    saved = 2 * 6_738_415_616 / 1e6
    assert rows["huggyllama/llama-7b"][7].strip() == f"{(3 * saved + 1000) / 1000:.0f} GB"
    weights = 2 * (6_738_415_616 + 13_015_864_320) / 1e9  # the two models' fp16 weights
    assert f"Disk for the profile: {weights:.0f} GB of model weights" in lines[-1]
    assert lines[-1].endswith(
        f"plus {saved / 1000:.0f} GB of final weights kept for `lomo sgd-claims` "
        "(the distance travelled) by 1 run."
    )


@pytest.mark.real_data
def test_the_calibration_constants_are_measured():
    """TASK_TOKENS: tokens per training example padded to a batch of 16's longest, measured on
    the local train splits with the official template; SPLIT_ROWS: the official validation
    sizes where the local folder has the whole split."""
    tokenizer, template = load_tokenizer(SMOLLM2), get_template("lomo+pronuon+score-eos")
    for name, task in TASKS.items():
        lengths = []
        for example in load_split(name, "train", "local", DATA_DIR):
            _, pairs = encode_prompt(task, example, template, tokenizer, 1024)
            lengths.append(max(len(p) + len(a) for p, a in pairs) + 1)
        rng = random.Random(0)
        padded = statistics.mean(max(rng.sample(lengths, 16)) for _ in range(200))
        assert budget.TASK_TOKENS[name] == pytest.approx(padded, rel=0.05), name
        val = DATA_DIR / task.folder / "val.jsonl"
        if val.exists():
            assert budget.SPLIT_ROWS[name][1] == len(load_split(name, "val", "local", DATA_DIR))
