"""Every command in the README's shell blocks and in scripts/slurm works as written.

Each `lomo` command line parses with the real CLI (and `lomo finetune` lines validate); the
multi-process ones run on two CPU ranks with a tiny model: the same flags, with only these
substitutions (what a GPU cluster has and this machine does not) and a smoke-sized run
appended (later flags win in argparse):
- hub models (huggyllama/llama-*, smollm2-135m) -> tiny-llama; --nproc_per_node N -> 2
- --source hub -> the local SuperGLUE copy; BoolQ (validation held back here) -> RTE
- --dtype fp16 -> bf16 (fp16 matmuls need a GPU)
The sbatch scripts run under bash with the SLURM variables they read set and stand-ins for
`srun` and `scontrol` (tests/fake_slurm/): the two-node script starts two torchrun agents on
this machine that meet at a c10d rendezvous, as on two nodes.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from paths import DATA_DIR, ROOT

from lomo.cli import build_parser
from lomo.train import finetune as ft

SMOKE = "--epochs 1 --limit-train 8 --limit-eval 8 --max-length 64 --global-batch 4"
SMOKE += " --micro-batch 4 --eval-batch 8"


def readme_commands() -> list[str]:
    """The shell commands of the README's ```bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    lines = (line.split(" # ")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def substitute(command: str) -> str:
    command = re.sub(r"huggyllama/llama-\w+|smollm2-135m", "tiny-llama", command)
    command = re.sub(r"--nproc_per_node \d+", "--nproc_per_node 2", command)
    command = command.replace("--source hub", f"--source local --data-dir {DATA_DIR}")
    command = command.replace("../shared/superglue", str(DATA_DIR)).replace(
        "--dtype fp16", "--dtype bf16"
    )
    return re.sub(r"--task boolq|\bboolq\b", lambda m: m[0].replace("boolq", "rte"), command)


def run(command: str, cwd: Path, env: dict | None = None, timeout: int = 420):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # torchrun, lomo of this venv
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def lomo_args(command: str) -> list[str] | None:
    """The lomo CLI arguments of a command line (`lomo ...`, `-m lomo.cli ...`), else None."""
    words = shlex.split(command.split("&&")[-1])
    for i, word in enumerate(words):
        if word.endswith("lomo") and i == 0 or word == "lomo.cli":
            return words[i + 1 :]
    return None


COMMANDS = readme_commands()


def test_the_readme_documents_the_multi_gpu_and_slurm_commands():
    assert sum("torchrun" in c and "lomo.cli finetune" in c for c in COMMANDS) == 3
    assert sum("sbatch scripts/slurm/" in c for c in COMMANDS) == 2
    assert any(c.startswith("lomo prepare-model") for c in COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if lomo_args(c)])
def test_every_lomo_command_parses_and_validates_as_written(command):
    args = build_parser().parse_args(lomo_args(command))
    if args.command == "finetune":
        overrides = {k: v for k, v in vars(args).items() if k in ft.FinetuneConfig.__annotations__}
        with mock.patch("torch.cuda.is_available", return_value=True):  # fp16 needs a GPU
            ft.load_config(args.config, overrides)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [
        # slow (-m slow) but the first: the launch is the same, the method and runtime differ
        pytest.param(c, marks=[pytest.mark.slow] * (i > 0))
        for i, c in enumerate(
            c for c in COMMANDS if c.startswith("torchrun") and "lomo.cli finetune" in c
        )
    ],
    ids=["zero3-lomo", "zero3-lora", "data-parallel"],
)
def test_readme_torchrun_lines_run_on_two_cpu_ranks(command, tmp_path):
    done = run(f"{substitute(command)} {SMOKE} --out {tmp_path}", ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    resources = json.loads((tmp_path / "resources.json").read_text())
    zero3 = "--deepspeed" in command
    assert (resources["processes"], resources["runtime"]) == (2, "zero3" if zero3 else "replicated")
    assert json.loads((tmp_path / "metrics.json").read_text())["n_train"] == 8


# slow (-m slow); in the default suite: the README's torchrun lines: the zero3-lomo one
@pytest.mark.slow
def test_readme_bench_distributed_line_runs(tmp_path):
    (command,) = [c for c in COMMANDS if "bench_distributed.py" in c]
    done = run(f"{command} --layers 1 --hidden 64 --intermediate 128 --steps 2 --warmup 1", ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "step_seconds" in done.stdout or "tgs" in done.stdout.lower(), done.stdout[-2000:]


def test_readme_prepare_model_line_runs():
    (command,) = [c for c in COMMANDS if c.startswith("lomo prepare-model")]
    done = run(substitute(command), ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["model"] == "tiny-llama"


@pytest.mark.e2e
# one node: slow (-m slow); the two-node script runs the same launcher in the default suite
@pytest.mark.parametrize("nodes", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_sbatch_scripts_run_under_slurm_variables(nodes, tmp_path):
    script = "lomo_zero3_1node.sbatch" if nodes == 1 else "lomo_zero3_2nodes.sbatch"
    (command,) = [c for c in COMMANDS if script in c]
    assert command.startswith("mkdir -p logs && sbatch ")
    args = substitute(command.split("sbatch ", 1)[1])
    env = {
        "PATH": f"{ROOT / 'tests' / 'fake_slurm'}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_GPUS_ON_NODE": str(2 // nodes),  # 2 ranks in all
        "LOMO_SUPERGLUE_DIR": str(DATA_DIR),
        "LOMO_RESULTS_DIR": str(tmp_path),
        "LOMO_RDZV_PORT": str(29500 + os.getpid() % 1000),
    }
    done = run(f"bash {args} --dtype bf16 {SMOKE}", ROOT, env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = tmp_path / "zero3" / "tiny-llama" / "rte" / "lomo-seed42"
    resources = json.loads((out / "resources.json").read_text())
    assert (resources["processes"], resources["runtime"]) == (2, "zero3")
    config = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert config["template"] == "lomo+pronuon+score-eos" and config["protocol"] == "paper"


INLINE = [  # inline `...` commands of the README, line breaks inside them joined
    " ".join(command.split())
    for command in re.findall(
        r"`((?:\.venv/bin/)?(?:snakemake|lomo) [^`]+)`", (ROOT / "README.md").read_text()
    )
]


# The local-GPU profile's line is slow (-m slow): it plans the paper profile as the SLURM one does
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=[pytest.mark.slow] * ("profiles/local-gpu" in c))
        for c in INLINE
        if c.startswith("snakemake --")
    ],
)
def test_inline_snakemake_commands_plan_as_written(command, full_superglue):
    """Dry run (-n) of each snakemake command in the README's text, data from a full-layout
    folder (every task's train and val files, tests/conftest.py)."""
    if "--report" in command:
        pytest.skip("--report needs finished results (tests/test_workflow.py builds one)")
    done = run(
        f"{sys.executable} -m {command} -n", ROOT, {"LOMO_SUPERGLUE_DIR": str(full_superglue)}
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# Inline mentions that name a subcommand in prose rather than give a command line.
NAMES = {"lomo finetune", "lomo evaluate", "lomo readme-results", "lomo finetune --deepspeed"}
NAMES |= {"lomo plan", "lomo sgd-claims", "lomo finetune --report-to tensorboard"}
NAMES |= {"lomo throughput --optimizers NAME"}  # NAME: a method declared in a test


@pytest.mark.parametrize("command", [c for c in INLINE if c.split()[0].endswith("lomo")])
def test_inline_lomo_commands_parse(command):
    if command in NAMES:
        return
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exit:  # --help exits 0; a usage error exits 2
        assert exit.code == 0, command


def test_ci_runs_exactly_the_readme_test_command():
    quick_start = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    (test_line,) = [line for line in quick_start.splitlines() if line.endswith("# the tests")]
    command = test_line.removesuffix("# the tests").strip()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line]
    assert ci == [command]
