"""Fixtures shared by several test modules, and the `real_data` marker: the tests of facts
about the real SuperGLUE files (their sizes, prompts of real rows against lm-eval, constants
measured on them) are skipped when the files are not there; the other tests then read a
synthetic folder (paths: tests/paths.py)."""

from pathlib import Path

import pytest
from paths import HAS_REAL_DATA, REAL_DATA_DIR
from synthetic_superglue import write_superglue

NO_REAL_DATA = (
    f"checks the real SuperGLUE data, which is not at {REAL_DATA_DIR} "
    "(set $LOMO_TEST_SUPERGLUE_DIR)"
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_data: checks facts of the real SuperGLUE files; skipped without them"
    )


def pytest_collection_modifyitems(config, items):
    if HAS_REAL_DATA:
        return
    skip = pytest.mark.skip(reason=NO_REAL_DATA)
    for item in items:
        if item.get_closest_marker("real_data"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def full_superglue(tmp_path_factory) -> Path:
    """Every task folder with train and val files (the synthetic rows, none held back), for
    dry runs of profiles that need tasks whose validation split is held back in the real
    folder (BoolQ); dry runs read no data."""
    return write_superglue(tmp_path_factory.mktemp("superglue"), held_back=frozenset())
