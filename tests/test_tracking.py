"""`lomo finetune --report-to tensorboard|wandb`: what is logged, that it changes nothing the
run computes, and that the tracker closes however the run ends."""

import csv
import dataclasses
import json
import os
import signal
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from launch import torchrun
from paths import DATA_DIR
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_finetune import killed_at_step, tiny_config
from test_report import write_run
from test_workflow import snakemake

from lomo.cli import main
from lomo.report import tables
from lomo.train import finetune as ft

TRAIN_TAGS = [
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_second",
    "train/peak_memory_bytes",
]


def finetune_command(tmp_path: Path, out: Path, *flags: str, **overrides) -> None:
    """`lomo finetune` on tiny_config (lomo, 2 epochs of 2 steps) written as its --config."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(tiny_config(method="lomo", **overrides))))
    main(["finetune", "--config", str(path), *flags, "--out", str(out)])


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's TensorBoard files: [(step, value)] in step order."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        tag: sorted((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["scalars"]
    }


def open_writers() -> int:
    """TensorBoard writers not closed: each keeps a writer thread until its close()."""
    return sum(type(t).__name__ == "_AsyncWriterThread" for t in threading.enumerate())


def train_log(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "train_log.csv").open()))


def as_float32(values) -> list[float]:
    """TensorBoard keeps float32: the run's own float64 numbers as they are stored."""
    return [float(np.float32(float(v))) for v in values]


def test_tensorboard_logs_every_step_and_epoch_and_changes_nothing(tmp_path):
    finetune_command(tmp_path, tmp_path / "tracked", "--report-to", "tensorboard")
    ft.finetune(tiny_config(method="lomo"), tmp_path / "plain")
    tracked, plain = tmp_path / "tracked", tmp_path / "plain"
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tracked / name).read_bytes() == (plain / name).read_bytes(), name
    same = ("step", "examples", "lr", "loss", "grad_norm", "loss_scale", "overflow")
    rows = train_log(tracked)
    assert [[r[k] for k in same] for r in rows] == [[r[k] for k in same] for r in train_log(plain)]
    assert not (plain / "tensorboard").exists()

    logged = scalars(tracked)
    for tag in TRAIN_TAGS:
        assert [step for step, _ in logged[tag]] == [1, 2, 3, 4], tag  # one per update
    for tag, column in (("loss", "loss"), ("lr", "lr"), ("grad_norm", "grad_norm")):
        expected = as_float32(r[column] for r in rows)
        assert [value for _, value in logged[f"train/{tag}"]] == expected, tag
    assert [v for _, v in logged["train/peak_memory_bytes"]] == as_float32(
        r["peak_memory_bytes"] for r in rows
    )
    assert all(v > 0 for _, v in logged["train/tokens_per_second"])
    per_epoch = json.loads((tracked / "metrics.json").read_text())["per_epoch"]
    for metric in ("accuracy", "gold_nll"):  # each epoch's scores at its last step
        expected = [(2 * e["epoch"], float(np.float32(e["eval"][metric]))) for e in per_epoch]
        assert logged[f"eval/{metric}"] == expected, metric


def test_zero_shot_logs_its_scores_at_step_0(tmp_path):
    ft.finetune(tiny_config(method="zero-shot", report_to="tensorboard"), tmp_path)
    logged = scalars(tmp_path)
    accuracy = json.loads((tmp_path / "metrics.json").read_text())["reported"]["eval"]
    assert logged["eval/accuracy"] == [(0, float(np.float32(accuracy["accuracy"])))]
    assert not any(tag.startswith("train/") for tag in logged)


def test_a_signal_stop_closes_the_files_and_the_resumed_run_goes_on(tmp_path, monkeypatch):
    """Exit 75 after step 3: the writer is closed with steps 1-3 on disk; the rerun adds
    step 4, each step once, as in the run's final train_log.csv."""
    real_step = ft.train_step

    def signalled(*args):
        if args[5] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the step
        return real_step(*args)

    monkeypatch.setattr(ft, "train_step", signalled)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        finetune_command(tmp_path, out, report_to="tensorboard")
    assert stopped.value.code == ft.PREEMPTED_EXIT
    assert open_writers() == 0
    assert [step for step, _ in scalars(out)["train/loss"]] == [1, 2, 3]
    monkeypatch.setattr(ft, "train_step", real_step)
    finetune_command(tmp_path, out, report_to="tensorboard")
    losses = scalars(out)["train/loss"]
    assert losses == list(
        zip([1, 2, 3, 4], as_float32(r["loss"] for r in train_log(out)), strict=True)
    )


def test_an_error_closes_the_files_and_the_rerun_replaces_unsaved_steps(tmp_path, monkeypatch):
    """A run that dies before step 4 closes its writer with steps 1-3 on disk; its checkpoint
    holds epoch 1 (steps 1-2), so the rerun logs steps 3 and 4 again, replacing the first."""
    config = tiny_config(method="lomo", report_to="tensorboard")
    killed_at_step(monkeypatch, 4, config, tmp_path)
    assert open_writers() == 0
    assert [step for step, _ in scalars(tmp_path)["train/loss"]] == [1, 2, 3]
    ft.finetune(config, tmp_path)
    logged = scalars(tmp_path)
    assert logged["train/loss"] == list(
        zip([1, 2, 3, 4], as_float32(r["loss"] for r in train_log(tmp_path)), strict=True)
    )
    assert [step for step, _ in logged["eval/accuracy"]] == [2, 4]


def test_wandb_is_refused_at_start_when_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(SystemExit) as exit:
        finetune_command(tmp_path, tmp_path / "out", "--report-to", "wandb")
    assert str(exit.value) == (
        "lomo finetune: report_to wandb needs the wandb package: pip install wandb"
    )
    assert not (tmp_path / "out").exists()


def wandb_records(run: Path) -> list:
    """The records of the run folder's offline W&B run, from its .wandb file: a 7-byte file
    header, then per record a 7-byte header (crc32, length, kind) and a protobuf Record (one
    32 KiB block here, so no record is split)."""
    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert len(data) < 32 * 1024
    records, position = [], 7
    while position + 7 <= len(data):
        _, length, _ = struct.unpack("<IHB", data[position : position + 7])
        records.append(Record.FromString(data[position + 7 : position + 7 + length]))
        position += 7 + length
    return records


def test_wandb_offline_run_in_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(method="lomo", report_to="wandb")
    ft.finetune(config, tmp_path / "tracked")
    ft.finetune(tiny_config(method="lomo"), tmp_path / "plain")
    for name in ("metrics.json", "predictions.jsonl"):
        tracked = (tmp_path / "tracked" / name).read_bytes()
        assert tracked == (tmp_path / "plain" / name).read_bytes(), name

    records = wandb_records(tmp_path / "tracked")
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.display_name == "tracked"
    settings = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert settings["report_to"] == "wandb" and settings["lr"] == config.lr
    rows = [  # an item has a key, or a nested key ("_step")
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.HasField("history")
    ]
    assert [row["_step"] for row in rows] == [1, 2, 3, 4]
    assert all(set(TRAIN_TAGS) <= set(row) for row in rows)
    log = train_log(tmp_path / "tracked")
    assert [row["train/loss"] for row in rows] == [float(r["loss"]) for r in log]
    per_epoch = json.loads((tmp_path / "tracked" / "metrics.json").read_text())["per_epoch"]
    assert [rows[1]["eval/accuracy"], rows[3]["eval/accuracy"]] == [
        e["eval"]["accuracy"] for e in per_epoch
    ]
    (finished,) = [r.exit for r in records if r.HasField("exit")]
    assert finished.exit_code == 0

    killed_at_step(monkeypatch, 3, config, tmp_path / "killed")  # an error: a failed W&B run
    (failed,) = [r.exit for r in wandb_records(tmp_path / "killed") if r.HasField("exit")]
    assert failed.exit_code == 1


def test_runs_differing_only_in_tracking_are_one_experiment(tmp_path):
    assert "report_to" in tables.NOT_SETTINGS
    a = write_run(tmp_path, "a", [0.60], lr=0.05, report_to="tensorboard")
    b = write_run(tmp_path, "b", [0.80], lr=0.03)  # a run from before report_to
    (row,) = tables.collect([a, b], {}, ["lr"])
    assert (row["value"], row["grid_points"], row["variant"]) == (0.80, 2, "lomo")


def test_a_profile_turns_tracking_on_for_every_job():
    """`finetune: {report_to: tensorboard}` in a profile (here by --config) reaches every
    job's command; a tracker that does not exist stops the workflow at start."""
    data = f"superglue_dir={DATA_DIR}"
    done = snakemake("-n", "-p", "--config", "finetune={report_to: tensorboard}", data)
    assert done.returncode == 0, done.stdout + done.stderr
    commands = [line for line in done.stdout.splitlines() if " finetune " in line]
    assert commands and all(" --report-to tensorboard " in line for line in commands)
    bad = snakemake("-n", "--config", "finetune={report_to: mlflow}", data)
    assert bad.returncode != 0
    assert "'mlflow' is not one of ['none', 'tensorboard', 'wandb']" in bad.stdout + bad.stderr


# slow (-m slow); in the default suite: the one-process tracking tests
@pytest.mark.slow
def test_on_two_ranks_only_rank_0_writes(tmp_path):
    """Two data-parallel ranks (torchrun): one writer, one value per step, the run's own."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(dataclasses.asdict(tiny_config(method="lomo"))))
    out = tmp_path / "run"
    args = ["finetune_worker.py", "finetune", "--config", str(config), "--out", str(out)]
    done = torchrun([*args, "--report-to", "tensorboard"], 240, Path(__file__).parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file
    assert scalars(out)["train/loss"] == list(
        zip([1, 2, 3, 4], as_float32(r["loss"] for r in train_log(out)), strict=True)
    )
