"""Every `lomo` command reports an anticipated error as one line `lomo <command>: ...` with exit
status 1 (a traceback only with --debug); what each case leaves behind."""

import os
import subprocess
import sys

import pytest
from paths import DATA_DIR, ROOT

from lomo.cli import main


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = str(exit_.value.code)
    assert message.startswith(f"lomo {argv[0]}: "), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["evaluate", "--model", "gpt-17", "--task", "rte"], "unknown model 'gpt-17'"),
        (["evaluate", "--model", "tiny-llama", "--task", "squad"], "unknown task 'squad'"),
        (
            ["evaluate", "--model", "tiny-llama", "--task", "rte", "--data-dir", "{tmp}/nodata"],
            "data folder {tmp}/nodata does not exist",
        ),
        (
            ["evaluate", "--model", "{tmp}/nomodel", "--task", "rte"],
            "model folder {tmp}/nomodel does not exist",
        ),
        (["finetune", "--model", "{tmp}/nomodel", "--out", "{tmp}/run"], "model folder"),
        (["finetune", "--threads", "-2", "--out", "{tmp}/run"], "--threads must be >= 1"),
        (
            ["finetune", "--model", "tiny-llama", "--deepspeed", "{tmp}/none.json"],
            "deepspeed: {tmp}/none.json is not a file",
        ),
        (
            ["table", "--runs", "{tmp}/truncated/metrics.json", "--csv", "{tmp}/t.csv"],
            "cannot read",
        ),
        (["table", "--runs", "--csv", "{tmp}/t.csv"], None),  # argparse: usage error, exit 2
        (["readme-results", "--tables", "{tmp}/none"], "tables folder {tmp}/none does not exist"),
        (["memory", "--model", "gpt-17", "--csv", "{tmp}/m.csv"], "unknown model 'gpt-17'"),
        (["throughput", "--model", "gpt-17", "--csv", "{tmp}/t.csv"], "unknown model 'gpt-17'"),
        (["plan", "3b"], "unknown size '3b'"),
        (["notebook", "{tmp}/none.ipynb", "{tmp}/out.ipynb"], "No such file or directory"),
        (["prepare-model", "--model", "gpt-17"], "unknown model 'gpt-17'"),
    ],
)
def test_anticipated_errors_are_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "metrics.json").write_text('{"model": "m"')
    (tmp_path / "truncated" / "config.yaml").write_text("model: m\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("evaluate", "finetune") and "--data-dir" not in argv:
        argv += ["--data-dir", str(DATA_DIR)]
    if argv[0] == "finetune" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    if argv[0] == "evaluate":
        argv += ["--out", str(tmp_path / "run" / "evaluation.json")]
    if expected is None:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        return
    message = one_line_error(capsys, argv)
    assert expected.replace("{tmp}", str(tmp_path)) in message
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "evaluation.json").exists()


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


@pytest.mark.parametrize(
    ("command", "text", "where"),
    [
        (["finetune", "--out", "{tmp}/run", "--config"], "lr: 0.03\nepochs: [2\n", ":3:1: invalid"),
        (
            ["finetune", "--out", "{tmp}/run", "--config"],
            "lr: 0.03\n  epochs: 2\n",
            ":2:9: invalid",
        ),
        (["budget", "--profile"], "models: [a\ntasks: {b: c\n", ":2:6: invalid"),
        (["budget", "--profile"], "just a string\n", "expected a workflow profile"),
    ],
)
def test_a_yaml_error_is_one_line_naming_file_and_line(tmp_path, capsys, command, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command] + [str(path)]
    message = one_line_error(capsys, argv)
    assert f"{path}" in message and where in message, message
    assert not (tmp_path / "run").exists()  # nothing written before the config is read
