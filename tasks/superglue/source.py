"""Where the workflow reads SuperGLUE from: a local folder if one is configured, else the hub.

Checked before any work starts, so a missing data source stops a run with a message that
says exactly what to set, instead of failing hours later inside a training job.

`lomo prepare-data` copies the hub dataset's pinned revision to a folder once, on a machine with
network (a cluster's login node; the workflow's `prepare_superglue` is a local rule), so that
jobs on compute nodes without network read that copy (`--source hub --data-dir COPY`).
"""

import argparse
import json
import os
import re
import shutil
from pathlib import Path

from tasks.superglue.data import (
    HUB_DATASET,
    HUB_REVISION,
    DataError,
    DataNotFoundError,
    load,
    task_folder,
)
from tasks.superglue.tasks import TASKS

ENV_VAR = "LOMO_SUPERGLUE_DIR"


class SourceError(RuntimeError):
    pass


def hub_reachable(timeout: float = 10.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    import huggingface_hub

    try:
        huggingface_hub.HfApi().dataset_info(HUB_DATASET, revision=HUB_REVISION, timeout=timeout)
    except Exception:  # no network, DNS failure, proxy, hub outage: all mean "not reachable"
        return False
    return True


def local_tasks(folder: Path) -> list[str]:
    """Tasks whose train and validation files are both present in `folder` (task folders in
    any letter case, as `load_split` finds them)."""
    present = []
    for name, task in TASKS.items():
        try:
            task_dir = task_folder(folder, task)
        except DataNotFoundError:
            continue
        except DataError as error:  # two folders for one task
            raise SourceError(str(error)) from error
        if (task_dir / "train.jsonl").is_file() and (task_dir / "val.jsonl").is_file():
            present.append(name)
    return present


def resolve_source(
    superglue_dir: str | None, tasks: list[str], optional_tasks: list[str] = ()
) -> tuple[str, str | None, list[str]]:
    """(source, data_dir, tasks to run): `tasks` must all be available; `optional_tasks` are
    added where the source has them."""
    folder = superglue_dir or os.environ.get(ENV_VAR)
    if folder:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise SourceError(
                f"superglue_dir {folder!r} is not a folder. Point superglue_dir (config) or "
                f"${ENV_VAR} at a folder in the official SuperGLUE layout (RTE/train.jsonl, "
                "RTE/val.jsonl, ...)"
            )
        present = local_tasks(path)
        missing = [t for t in tasks if t not in present]
        if missing:
            raise SourceError(
                f"{path} lacks train.jsonl/val.jsonl for {', '.join(missing)} "
                f"(expected e.g. {path / TASKS[missing[0]].folder / 'val.jsonl'}); remove those "
                "tasks from `tasks` or use a complete SuperGLUE folder"
            )
        return "local", str(path), list(tasks) + [t for t in optional_tasks if t in present]
    if hub_reachable():
        return "hub", None, list(tasks) + list(optional_tasks)
    raise SourceError(
        "no SuperGLUE data source: set superglue_dir in config/config.yaml (or run with "
        f"--config superglue_dir=PATH, or export {ENV_VAR}=PATH) to a folder in the official "
        "SuperGLUE layout (BoolQ/train.jsonl, BoolQ/val.jsonl, ...), or run on a machine that "
        f"reaches the Hugging Face hub (dataset {HUB_DATASET})"
    )


# --- a local copy of the hub dataset ------------------------------------------------------------


def copy_hub_dataset(tasks: list[str], out: Path, origin: str = HUB_DATASET) -> dict:
    """The pinned revision's files of `tasks` (each config's parquet splits and the README.md
    that declares them) in `out`, every split then read back from the copy alone; `origin` is
    the hub dataset, or a folder holding a copy of it (rehearsals). Returns what was copied."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: expected some of {', '.join(TASKS)}")
    names = [TASKS[t].name for t in tasks]  # the hub config of each task
    if not Path(origin).is_dir() and not re.fullmatch(r"[\w.-]+/[\w.-]+", origin):
        raise ValueError(
            f"--origin {origin}: not a folder, nor a hub dataset id (owner/name, e.g. "
            f"{HUB_DATASET})"
        )
    if Path(origin).is_dir():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(origin) / "README.md", out / "README.md")
        for name in names:
            shutil.copytree(Path(origin) / name, out / name, dirs_exist_ok=True)
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(
            origin,
            repo_type="dataset",
            revision=HUB_REVISION,
            allow_patterns=["README.md", *(f"{name}/*" for name in names)],
            local_dir=out,
        )
    rows = {
        t: {split: len(load(TASKS[t], split, "hub", out)) for split in ("train", "val")}
        for t in tasks
    }
    return {"origin": origin, "revision": HUB_REVISION, "rows": rows}


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("prepare-data", help=summary, description=__doc__)
    parser.add_argument("--tasks", nargs="+", required=True, help="SuperGLUE tasks to copy")
    parser.add_argument("--out", required=True, help="folder for the copy")
    parser.add_argument(
        "--origin",
        default=HUB_DATASET,
        help=f"the hub dataset (default {HUB_DATASET}, revision {HUB_REVISION[:10]}), or a "
        "folder holding a copy of it",
    )
    parser.set_defaults(func=prepare_data_command)


def prepare_data_command(args: argparse.Namespace) -> None:
    from lomo.io import write_atomic

    out = Path(args.out)
    copied = copy_hub_dataset(args.tasks, out, args.origin)
    # Written last: a folder with prepared.json is a finished copy (the workflow's target).
    write_atomic(out / "prepared.json", json.dumps(copied, indent=1) + "\n")
    print(json.dumps(copied))
