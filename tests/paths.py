"""Paths every test uses: the repository and the SuperGLUE folder the tests read.

REAL_DATA_DIR holds the real SuperGLUE files: ../shared/superglue next to the repository, or
$LOMO_TEST_SUPERGLUE_DIR. DATA_DIR is that folder when it is there, else a synthetic folder in
the same layout (tests/synthetic_superglue.py), so a fresh clone still tests every training and
evaluation path. Tests of facts about the real files are marked `real_data` and skipped without
them (tests/conftest.py).
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from synthetic_superglue import write_superglue

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_DIR = Path(
    os.environ.get("LOMO_TEST_SUPERGLUE_DIR") or ROOT.parent / "shared" / "superglue"
)
HAS_REAL_DATA = REAL_DATA_DIR.is_dir()


def synthetic_data_dir() -> Path:
    """The synthetic folder, written once and kept under the system's temporary folder. Its
    name holds a hash of the generator, so a changed generator writes a new folder. It is
    written aside and renamed into place: processes that start together (several pytest runs,
    torchrun's workers, which import this module too) never read a half-written folder."""
    generator = Path(__file__).with_name("synthetic_superglue.py").read_bytes()
    version = hashlib.sha256(generator).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"lomo-tests-{os.getuid()}" / f"superglue-{version}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = write_superglue(Path(tempfile.mkdtemp(dir=folder.parent)))
        try:
            staging.rename(folder)
        except OSError:  # another process put its (identical) copy there first
            shutil.rmtree(staging)
    return folder


DATA_DIR = REAL_DATA_DIR if HAS_REAL_DATA else synthetic_data_dir()
