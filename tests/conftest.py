"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "superglue"


@pytest.fixture(scope="session")
def full_superglue(tmp_path_factory) -> Path:
    """Every task folder with train and val files, for dry runs of profiles that need tasks
    whose validation split is held back here (BoolQ); dry runs read no data."""
    folder = tmp_path_factory.mktemp("superglue")
    for task in DATA.iterdir():
        if task.is_dir():
            (folder / task.name).mkdir()
            for name in ("train.jsonl", "val.jsonl"):
                source = task / name if (task / name).exists() else task / "train.jsonl"
                (folder / task.name / name).symlink_to(source)
    return folder
