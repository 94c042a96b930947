"""A run folder of `lomo finetune`: held by one run at a time, never mixing two runs'
results, and the inputs a checkpoint was written with (the fingerprint), checked on resume."""

import contextlib
import dataclasses
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lomo.io import read_yaml
from lomo.train.config import FinetuneConfig
from lomo.train.models import model_fingerprint
from lomo.train.runtime import RunFolderError, read_checkpoint_file

RUN_FILES = ("checkpoint.pt", "config.yaml", "metrics.json", "train_log.csv", "predictions.jsonl")
RUN_FILES += ("resources.json", "fingerprint.json")
# --save-model's final weights, and the folder they are written to before the rename
SAVED_MODEL, SAVED_MODEL_PARTIAL = "model", ".model.partial"


@contextlib.contextmanager
def claim_folder(out: Path, config: FinetuneConfig, main: bool) -> Iterator[None]:
    """Hold `out` for this run: a second run on it stops at once (an OS lock, released on exit
    and after kill -9), a folder with another config's finished results is refused, and the
    final weights of the run before are removed, so a folder never mixes two runs."""
    if not main:
        yield
        return
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; give a folder for the run")
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = (out / ".lock.pid").read_text().strip() if (out / ".lock.pid").exists() else "?"
        raise RunFolderError(f"{out} is in use by another lomo finetune (pid {holder})") from None
    try:
        (out / ".lock.pid").write_text(f"{os.getpid()}\n")
        for stale in out.glob(".*.*-*"):  # write_atomic's temp files of an interrupted run
            base = stale.name[1:].split("-")[0]
            if stale.is_file() and (base in RUN_FILES or base.startswith("checkpoint.")):
                stale.unlink()
        if (out / "metrics.json").exists() and (out / "config.yaml").exists():
            finished = read_yaml(out / "config.yaml")
            changed = sorted(
                k for k, v in dataclasses.asdict(config).items() if finished.get(k) != v
            )
            if changed:
                raise RunFolderError(
                    f"{out} holds the finished results of another run (it differs in "
                    f"{', '.join(changed)}): use another --out, or delete that folder"
                )
        # Final weights (--save-model) of the run before, or half-written ones, are never to be
        # read as this run's.
        for saved in (SAVED_MODEL, SAVED_MODEL_PARTIAL):
            shutil.rmtree(out / saved, ignore_errors=True)
        yield
    finally:
        lock.release()


def fingerprint(out: Path, config: FinetuneConfig) -> dict[str, Any]:
    """What the run's inputs were: the selected examples (hashes of the data files written for
    the run) and the model, its name and its files' contents (models.model_fingerprint), so a
    resume can check that nothing changed under it."""
    data = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((out / "data").glob("*.jsonl"))
    }
    return {"model": config.model, "model_files": model_fingerprint(config.model), "data": data}


def changed_keys(before: dict | None, now: dict | None) -> list[str]:
    before, now = before or {}, now or {}
    return [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]


def check_fingerprint(checkpoint: dict, now: dict, path: Path) -> None:
    before = checkpoint.get("fingerprint", {})
    changed = changed_keys(before.get("data"), now["data"])
    if before.get("model") != now["model"]:
        changed.append("the model")
    changed += [
        f"the model's {name}"
        for name in changed_keys(before.get("model_files"), now["model_files"])
    ]
    if changed:
        raise RunFolderError(
            f"the inputs changed since {path} was written ({', '.join(changed)} differ): restore "
            "them, or delete the checkpoint to start over"
        )


def read_checkpoint(path: Path, config: FinetuneConfig) -> dict | None:
    """The last finished epoch's checkpoint of this run, if any."""
    if not path.exists():
        return None
    checkpoint = read_checkpoint_file(path)
    if checkpoint["config"] != dataclasses.asdict(config):
        raise ValueError(
            f"{path} was written by a different config; delete it (or use another output "
            "folder) to start over"
        )
    return checkpoint
