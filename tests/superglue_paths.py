"""Where tests find the real SuperGLUE files: ../shared/superglue next to the repository."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "superglue"
