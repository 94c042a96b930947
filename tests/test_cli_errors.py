"""Every `lomo` command reports bad input as one line and writes nothing: its own error
`lomo <command>: ...` with status 1 (a traceback only with --debug), or argparse's for a flag
out of its range, with status 2."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml
from paths import DATA_DIR, ROOT
from test_report import write_run

from lomo.cli import COMMANDS, build_parser, main
from lomo.train.config import RANGES, FinetuneConfig


def bad_input_error(capsys, argv: list[str]) -> str:
    """The one line `lomo ARGV` (run in-process) stops with: its own error (status 1), or
    argparse's `lomo CMD: error: argument --flag: ...` after the usage (status 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    output = capsys.readouterr()
    assert "Traceback" not in output.out + output.err
    if exit_.value.code == 2:
        message = output.err.splitlines()[-1]
        assert message.startswith(f"lomo {argv[0]}: error: "), output.err
    else:
        message = str(exit_.value.code)
        assert message.startswith(f"lomo {argv[0]}: ") and "\n" not in message, message
    return message


def make_inputs(tmp: Path) -> None:
    """The bad files the table's commands read."""
    (tmp / "truncated").mkdir()
    (tmp / "truncated" / "metrics.json").write_text('{"model": "m"')
    (tmp / "truncated" / "config.yaml").write_text("model: m\n")
    (tmp / "old").mkdir()  # a metrics.json from before `seed`, `reported`, ...
    (tmp / "old" / "metrics.json").write_text('{"model": "m", "accuracy": 0.5}')
    (tmp / "old" / "config.yaml").write_text("model: m\n")
    (tmp / "foreign").mkdir()  # another program's metrics.json
    (tmp / "foreign" / "metrics.json").write_text("[1, 2]")
    (tmp / "foreign" / "config.yaml").write_text("model: m\n")
    (tmp / "badconfig").mkdir()  # a config.yaml that is not YAML
    (tmp / "badconfig" / "metrics.json").write_text("{}")
    (tmp / "badconfig" / "config.yaml").write_text("model: [m\n")
    write_run(tmp, "run", [0.6])
    (tmp / "columns.csv").write_text("a,b\n1,2\n")
    (tmp / "nonnumber.csv").write_text(
        "size,method,task,accuracy\n7B,LOMO,rte,57.0\n7B,LoRA,rte,x\n"
    )
    (tmp / "tables").mkdir()
    (tmp / "tables" / "compare_superglue.csv").write_text("model,task\nm,rte\n")
    (tmp / "bad.yaml").write_text("lr: 0.03\nepochs: [2\n")
    (tmp / "negative.yaml").write_text("lr: -1\n")
    (tmp / "profile.yaml").write_text("models: [a\ntasks: {b: c\n")
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    (tmp / "seeds.yaml").write_text(yaml.safe_dump({**paper, "seeds": [-1]}))
    rte = tmp / "surrogate" / "RTE"
    rte.mkdir(parents=True)
    row = {"premise": "a", "hypothesis": "b", "label": "entailment", "idx": 0}
    bad = {**row, "premise": "caf\ud800", "idx": 1}  # JSON "\ud800": a lone surrogate
    (rte / "val.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
    (rte / "train.jsonl").write_text(json.dumps(row) + "\n")


TINY = ["--model", "tiny-llama", "--csv", "{tmp}/out.csv"]
EVALUATE = ["evaluate", "--model", "tiny-llama", "--task", "rte", "--out", "{tmp}/out/e.json"]
FINETUNE = ["finetune", "--model", "tiny-llama", "--out", "{tmp}/out"]
SURROGATE = "{tmp}/surrogate/RTE/val.jsonl:2: text that cannot be encoded as UTF-8 ('\\ud800'"

# (argv, what the message must say). Every command, every kind of bad input: a number out of
# range (argparse names the flag), a name that is not there, a file that is not what it should be.
BAD_INPUTS = [
    ([*FINETUNE, "--threads", "0"], "argument --threads: expected a positive integer, got '0'"),
    ([*FINETUNE, "--seed", str(2**64)], "argument --seed: expected a seed in 0..4294967295"),
    ([*FINETUNE, "--seed", "-1"], "argument --seed: expected a seed in 0..4294967295, got '-1'"),
    ([*FINETUNE, "--lr", "0"], "argument --lr: expected a positive number, got '0'"),
    ([*FINETUNE, "--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    ([*FINETUNE, "--warmup-ratio", "1"], "argument --warmup-ratio: expected a number in [0, 1)"),
    ([*FINETUNE, "--micro-batch", "0"], "argument --micro-batch: expected a positive integer"),
    ([*FINETUNE, "--epochs", "-1"], "argument --epochs: expected an integer >= 0, got '-1'"),
    ([*FINETUNE, "--max-length", "many"], "argument --max-length: expected a positive integer"),
    ([*FINETUNE, "--train-size", "1.5"], "argument --train-size: expected a fraction in (0, 1)"),
    ([*FINETUNE, "--lora-dropout", "2"], "argument --lora-dropout: expected a number in [0, 1]"),
    ([*FINETUNE, "--config", "{tmp}/negative.yaml"], "lr: expected a positive number, got -1.0"),
    ([*FINETUNE, "--config", "{tmp}/bad.yaml"], "{tmp}/bad.yaml:3:1: invalid YAML"),
    ([*FINETUNE[:-4], "--model", "{tmp}/nomodel", "--out", "{tmp}/out"], "model folder"),
    ([*FINETUNE, "--deepspeed", "{tmp}/none.json"], "deepspeed: {tmp}/none.json is not a file"),
    (
        [*FINETUNE, "--task", "rte", "--protocol", "val-split", "--data-dir", "{tmp}/surrogate"],
        SURROGATE,
    ),
    ([*EVALUATE, "--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    ([*EVALUATE, "--limit", "-5"], "argument --limit: expected a positive integer, got '-5'"),
    ([*EVALUATE, "--max-length", "0"], "argument --max-length: expected a positive integer"),
    ([*EVALUATE, "--max-tokens", "0"], "argument --max-tokens: expected a positive integer"),
    ([*EVALUATE, "--data-dir", "{tmp}/surrogate"], SURROGATE),
    ([*EVALUATE, "--data-dir", "{tmp}/nodata"], "data folder {tmp}/nodata does not exist"),
    (["evaluate", "--model", "gpt-17", "--task", "rte", "--out", "{tmp}/o.json"], "unknown model"),
    (
        ["evaluate", "--model", "tiny-llama", "--task", "squad", "--out", "{tmp}/o.json"],
        "unknown task",
    ),
    (["memory", *TINY, "--seq", "0"], "argument --seq: expected a positive integer, got '0'"),
    (["memory", *TINY, "--batch", "-1"], "argument --batch: expected a positive integer"),
    (["memory", *TINY, "--layers", "1", "0"], "argument --layers: expected a positive integer"),
    (["memory", "--model", "gpt-17", "--csv", "{tmp}/out.csv"], "unknown model 'gpt-17'"),
    (["throughput", *TINY, "--steps", "0"], "argument --steps: expected a positive integer"),
    (["throughput", *TINY, "--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
    (["throughput", *TINY, "--threads", "0"], "argument --threads: expected a positive integer"),
    (["throughput", *TINY, "--layers", "0"], "argument --layers: expected a positive integer"),
    (["throughput", "--model", "gpt-17", "--csv", "{tmp}/out.csv"], "unknown model 'gpt-17'"),
    (["plan", "7b", "--gpus", "0"], "argument --gpus: expected a positive integer, got '0'"),
    (["plan", "7b", "--memory", "inf"], "argument --memory: expected a positive number"),
    (["plan", "7b", "--reserve", "-1"], "argument --reserve: expected a number >= 0"),
    (["plan", "7b", "--eval-tokens", "0"], "argument --eval-tokens: expected a positive integer"),
    (["plan", "7b", "--eval-candidates", "0"], "argument --eval-candidates: expected a positive"),
    (["plan", "3b"], "unknown size '3b'"),
    (["budget", "--node-gpus", "0"], "argument --node-gpus: expected a positive integer"),
    (["budget", "--gpu-memory", "-80"], "argument --gpu-memory: expected a positive number"),
    (["budget", "--profile", "{tmp}/profile.yaml"], "{tmp}/profile.yaml:2:6: invalid YAML"),
    (["budget", "--profile", "{tmp}/seeds.yaml"], "config: seeds.0: -1 is less than the minimum"),
    (["sgd-claims", "--out", "{tmp}/o.json", "--seed", "-1"], "argument --seed: expected a seed"),
    (["sgd-claims", "--out", "{tmp}/o.json", "--lrs", "0.1", "0"], "argument --lrs: expected a"),
    (["sgd-claims", "--out", "{tmp}/o.json", "--pairs", "0"], "argument --pairs: expected a"),
    (["sgd-claims", "--out", "{tmp}/o.json", "--clip-norm", "0"], "argument --clip-norm: expect"),
    (["demo", "--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    (["demo", "--lr", "inf"], "argument --lr: expected a positive number, got 'inf'"),
    (["table", "--runs", "{tmp}/truncated/metrics.json", "--csv", "{tmp}/t.csv"], "cannot read"),
    (
        ["table", "--runs", "{tmp}/old/metrics.json", "--csv", "{tmp}/t.csv"],
        "{tmp}/old/metrics.json: not a lomo finetune run: 'method' is a required property",
    ),
    (
        ["table", "--runs", "{tmp}/foreign/metrics.json", "--csv", "{tmp}/t.csv"],
        "{tmp}/foreign/metrics.json: not a lomo finetune run: [1, 2] is not of type 'object'",
    ),
    (
        ["table", "--runs", "{tmp}/badconfig/metrics.json", "--csv", "{tmp}/t.csv"],
        "{tmp}/badconfig/config.yaml:2:1: invalid YAML",
    ),
    (
        ["table", "--runs", "{tmp}/run/metrics.json", "--reference", "{tmp}/columns.csv"],
        "{tmp}/columns.csv: no column size, method, task, accuracy",
    ),
    (
        ["table", "--runs", "{tmp}/run/metrics.json", "--reference", "{tmp}/nonnumber.csv"],
        "{tmp}/nonnumber.csv:3: accuracy 'x' is not a number",
    ),
    (["readme-results", "--tables", "{tmp}/none"], "tables folder {tmp}/none does not exist"),
    (
        ["readme-results", "--tables", "{tmp}/tables", "--out", "{tmp}/out.md"],
        "compare_superglue.csv lacks the columns",
    ),
    (
        ["readme-results", "--tables", "{tmp}/none", "--readme", "{tmp}/no.md"],
        "tables folder {tmp}/none does not exist",
    ),
    (["notebook", "{tmp}/none.ipynb", "{tmp}/out.ipynb"], "No such file or directory"),
    (["notebook", "{tmp}/none.ipynb", "{tmp}/out.ipynb", "-y", "{a: [1}"], "-y:1:7: invalid YAML"),
    (["prepare-model", "--model", "gpt-17"], "unknown model 'gpt-17'"),
    (["prepare-model", "--model", "{tmp}/nomodel"], "model folder {tmp}/nomodel does not exist"),
    (["prepare-data", "--tasks", "mnli", "--out", "{tmp}/out"], "unknown task(s) ['mnli']"),
    (
        ["prepare-data", "--tasks", "rte", "--out", "{tmp}/out", "--origin", "{tmp}/nohub"],
        "--origin {tmp}/nohub: not a folder, nor a hub dataset id (owner/name",
    ),
]


@pytest.mark.parametrize(
    "argv, expected", BAD_INPUTS, ids=[" ".join(argv)[:70] for argv, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, expected):
    make_inputs(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "table" and "--csv" not in argv:
        argv += ["--csv", str(tmp_path / "t.csv")]
    if argv[0] in ("evaluate", "finetune") and "--data-dir" not in argv:
        argv += ["--data-dir", str(DATA_DIR)]
    message = bad_input_error(capsys, argv)
    assert expected.replace("{tmp}", str(tmp_path)) in message, message
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, no partial file


def test_bad_inputs_cover_every_command():
    assert {argv[0] for argv, _ in BAD_INPUTS} == set(COMMANDS)
    assert len(BAD_INPUTS) >= 40


def test_every_numeric_flag_has_a_bounded_type():
    """A flag typed plain int or float takes 0, -1, nan or a 70-bit seed and fails later, far
    from the flag (or never): every numeric flag of every command names its range
    (lomo.argtypes), and every numeric setting of lomo finetune has its range in RANGES."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    unbounded = [
        f"lomo {name} {action.option_strings or action.dest}"
        for name, command in commands.items()
        for action in command._actions
        if action.type in (int, float)
        or isinstance(action.default, int | float)
        and not isinstance(action.default, bool)
        and action.type is None
    ]
    assert unbounded == []
    numbers = [
        f.name
        for f in dataclasses.fields(FinetuneConfig)
        if {int, float} & {f.type, *get_args(f.type)} and f.type is not bool
    ]
    assert sorted(numbers) == sorted(RANGES)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown size '3b'"):
        main(["plan", "3b", "--debug"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The same through the `lomo` entry point, as a user runs it: status 1, one line on stderr;
    RANK without the rest of torchrun's variables is a distributed set-up error."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    command = [sys.executable, "-m", "lomo.cli", "finetune", "--model", "tiny-llama"]
    command += ["--data-dir", str(DATA_DIR), "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("lomo ")]
    assert lines == [
        "lomo finetune: RANK is set but MASTER_ADDR, MASTER_PORT not: start the processes with "
        "torchrun (or set every torch.distributed environment variable)"
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
