"""Where the workflow reads SuperGLUE from: a local folder if one is configured, else the hub.

Checked before any work starts, so a missing data source stops a run with a message that
says exactly what to set, instead of failing hours later inside a training job.
"""

import os
from pathlib import Path

from tasks.superglue.data import (
    HUB_DATASET,
    HUB_REVISION,
    DataError,
    DataNotFoundError,
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
