"""The code base stays `ruff` clean (configuration in pyproject.toml)."""

import os
import subprocess
import sys

from paths import ROOT


def test_ruff_clean():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_real_data_checks_skip_with_the_reason_without_it():
    env = {**os.environ, "LOMO_TEST_SUPERGLUE_DIR": "/nonexistent/superglue"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + ["tests/test_superglue_data.py", "tests/test_report.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "the real SuperGLUE data, which is not at /nonexistent/superglue" in done.stdout
    assert " passed" in done.stdout and " skipped" in done.stdout and "error" not in done.stdout
