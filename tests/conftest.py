"""Fixtures shared by several test modules, and skipping what needs the real SuperGLUE data
when it is not there (paths: tests/paths.py)."""

from pathlib import Path

import pytest
from paths import DATA_DIR

NO_DATA = f"the real SuperGLUE data is not at {DATA_DIR} (set $LOMO_TEST_SUPERGLUE_DIR)"


def pytest_collection_modifyitems(config, items):
    """Without the data folder, every test of a module that reads it (imports DATA_DIR, or
    uses the full_superglue fixture) is skipped with the reason, instead of erroring."""
    if DATA_DIR.is_dir():
        return
    skip = pytest.mark.skip(reason=NO_DATA)
    for item in items:
        module = getattr(item, "module", None)
        if getattr(module, "DATA_DIR", None) is not None or "full_superglue" in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def full_superglue(tmp_path_factory) -> Path:
    """Every task folder with train and val files, for dry runs of profiles that need tasks
    whose validation split is held back here (BoolQ); dry runs read no data."""
    folder = tmp_path_factory.mktemp("superglue")
    for task in DATA_DIR.iterdir():
        if task.is_dir():
            (folder / task.name).mkdir()
            for name in ("train.jsonl", "val.jsonl"):
                source = task / name if (task / name).exists() else task / "train.jsonl"
                (folder / task.name / name).symlink_to(source)
    return folder
