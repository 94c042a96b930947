"""scripts/gpu_acceptance.sh: its CPU dry run executes every step at tiny sizes and writes the
results folder and the summary; bad invocations stop with one line; --prepare stages the data."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paths import ROOT

SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"
STEPS = ("optim", "finetune", "finetune_fp16", "memory", "plan", "plan_throughput", "throughput")


def run_script(
    *args: str, env: dict | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def write_rte(folder: Path, rows: int = 32) -> Path:
    """A small RTE folder in the official layout (the script must not need ../shared)."""
    (folder / "RTE").mkdir(parents=True)
    for split in ("train", "val"):
        lines = [
            json.dumps(
                {
                    "premise": f"The cat number {i} sat on the mat.",
                    "hypothesis": f"A cat sat {'on' if i % 2 else 'under'} the mat.",
                    "label": "entailment" if i % 2 else "not_entailment",
                    "idx": i,
                }
            )
            for i in range(rows)
        ]
        (folder / "RTE" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


# About 60 s of CPU, mostly the start-up of a dozen Python processes.
# slow (-m slow); in the default suite: the script's staging and interpreter tests
@pytest.mark.slow
def test_dry_run_executes_every_step_and_summarises(tmp_path):
    data = write_rte(tmp_path / "superglue")
    out = tmp_path / "results"
    done = run_script("--dry-run", "--data", str(data), str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert summary in done.stdout  # printed and kept
    assert "DRY RUN" in summary
    for step in STEPS:
        assert any(line.split()[:2] == [step, "PASS"] for line in summary.splitlines()), step
    assert len(summary.splitlines()) <= 24  # one screen
    # the results folder: every step's log and outputs
    for name in (*(f"{step}.log" for step in STEPS), "optim.xml", "memory.csv", "throughput.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "accuracy" in json.dumps(json.loads((out / "finetune" / "metrics.json").read_text()))
    resources = json.loads((out / "finetune" / "resources.json").read_text())
    assert resources["processes"] == 1  # one rank, under torchrun with ZeRO-3
    plans = [
        json.loads(line)
        for line in (out / "plan.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert len(plans) == 2 and all(p["fits"] for p in plans)
    assert "LOMO / lomo-optim TGS" in summary
    # fp16 with dynamic loss scaling under ZeRO-3: the forced overflow (step 2) was skipped,
    # the scale halved, and training went on
    log = list(csv.DictReader((out / "finetune_fp16" / "train_log.csv").open()))
    scale = [float(r["loss_scale"]) for r in log]
    assert log[1]["overflow"] == "1" and log[2]["overflow"] == "0"
    line = f"overflow at step 2 skipped, scale {scale[0]:g} -> {scale[1]:g}, recovered"
    assert scale[1] == scale[0] / 2 and line in summary
    config = yaml.safe_load((out / "finetune_fp16" / "config.yaml").read_text())
    assert (config["dtype"], config["allow_cpu_fp16"]) == ("fp16", True)


def test_the_interpreter_defaults_to_the_repository_venv(tmp_path):
    """Invoked as the README says, after scripts/setup.sh, without PYTHON or an activated .venv
    (`python3` is then the system interpreter, without torch): --prepare still runs Python."""
    source = write_rte(tmp_path / "superglue")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env |= {"PATH": "/usr/bin:/bin", "ACCEPTANCE_STAGE": str(tmp_path / "stage")}
    env["LOMO_ACCEPTANCE_NO_WEIGHTS"] = "1"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--prepare", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "stage" / "smollm2-135m" / "config.json").exists()


def test_missing_data_is_one_line(tmp_path):
    done = run_script("--dry-run", "--data", str(tmp_path / "none"), str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "RTE/val.jsonl" in done.stderr
    assert "--prepare" in done.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_one_line():
    done = run_script("--bogus")
    assert (
        done.returncode == 2 and done.stderr.strip() == "gpu_acceptance.sh: unknown option --bogus"
    )


def test_prepare_stages_a_subset_without_weights(tmp_path):
    source = write_rte(tmp_path / "superglue", rows=100)
    stage = tmp_path / "stage"
    env = {"ACCEPTANCE_STAGE": str(stage), "LOMO_ACCEPTANCE_NO_WEIGHTS": "1"}
    done = run_script("--prepare", str(source), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    for split in ("train", "val"):
        assert len((stage / "superglue" / "RTE" / f"{split}.jsonl").read_text().splitlines()) == 64
    model = stage / "smollm2-135m"
    assert (model / "config.json").exists() and (model / "tokenizer.json").exists()
    assert not list(model.glob("*.safetensors"))
