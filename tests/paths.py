"""Paths every test uses: the repository, and the real SuperGLUE files (../shared/superglue
next to the repository, or $LOMO_TEST_SUPERGLUE_DIR). Without them, the tests that read them
are skipped (tests/conftest.py)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LOMO_TEST_SUPERGLUE_DIR") or ROOT.parent / "shared" / "superglue")
