"""The synthetic SuperGLUE folder (tests/synthetic_superglue.py) that the tests read without the
real one: it passes the project's row checks, has the real folder's layout, balanced labels and
consistent spans, is deterministic and fast; paths.DATA_DIR falls back to it, and `real_data`
tests are skipped only without the real folder."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from paths import DATA_DIR, REAL_DATA_DIR, ROOT
from synthetic_superglue import HELD_BACK, ROWS, SPLIT_ROWS, write_superglue

from tasks.superglue import TASKS
from tasks.superglue.data import load_local
from tasks.superglue.prompts import wsc_fixed


def files(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.glob("*/*.jsonl"))


def contents(root) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in files(root)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_superglue(tmp_path_factory.mktemp("synthetic"))


def splits(root):
    """(task, split file name, records) of every split file in `root`, through the loader."""
    for name, task in TASKS.items():
        for split in SPLIT_ROWS:
            if (task.folder, split) not in HELD_BACK:
                yield name, split, load_local(task, split, root)


def test_every_task_has_its_official_folder_and_split_files(synthetic):
    expected = [
        f"{task.folder}/{split}.jsonl"
        for task in TASKS.values()
        for split in SPLIT_ROWS
        if (task.folder, split) not in HELD_BACK
    ]
    assert files(synthetic) == sorted(expected)
    assert sorted(ROWS) == sorted(task.folder for task in TASKS.values())
    assert ("BoolQ", "val") in HELD_BACK and ("ReCoRD", "val") in HELD_BACK


@pytest.mark.real_data
def test_the_layout_is_the_real_folders(synthetic):
    assert files(synthetic) == files(REAL_DATA_DIR)


def test_every_split_passes_the_row_checks_with_balanced_labels(synthetic):
    for name, split, records in splits(synthetic):
        assert len(records) >= SPLIT_ROWS[split], (name, split)
        if TASKS[name].labels is not None:
            counts = Counter(record["label"] for record in records)
            assert len(counts) == len(TASKS[name].labels), (name, split)
            assert max(counts.values()) - min(counts.values()) <= 1, (name, split, counts)


def test_splits_have_disjoint_ids(synthetic):
    for name in TASKS:
        ids = [
            json.dumps(record["idx"], sort_keys=True)
            for task, _, records in splits(synthetic)
            if task == name
            for record in records
        ]
        assert len(set(ids)) == len(ids), name


def test_spans_and_offsets_point_at_their_words(synthetic):
    for record in load_local(TASKS["wsc"], "val", synthetic):
        assert wsc_fixed(record) == record  # nothing for lm-eval's wsc.fixed to repair
        assert record["text"].split()[record["span2_index"]] == record["span2_text"]
        assert record["text"].split()[record["span1_index"]] == record["span1_text"]
    for record in load_local(TASKS["wic"], "val", synthetic):
        assert record["sentence1"][record["start1"] : record["end1"]] == record["word"]
        assert record["sentence2"][record["start2"] : record["end2"]] == record["word"]


def test_multirc_examples_share_paragraphs_and_questions(synthetic):
    records = load_local(TASKS["multirc"], "val", synthetic)[:12]
    assert len({r["paragraph"] for r in records}) == 1
    assert 1 < len({r["question"] for r in records}) < len(records)


def test_the_folder_is_deterministic_and_fast(tmp_path):
    start = time.perf_counter()
    first = write_superglue(tmp_path / "a")
    assert time.perf_counter() - start < 1
    assert contents(first) == contents(write_superglue(tmp_path / "b"))


def test_held_back_and_row_counts_can_be_chosen(tmp_path):
    write_superglue(tmp_path, held_back=frozenset(), rows={"train": 5, "val": 7})
    assert len(files(tmp_path)) == 2 * len(TASKS)
    assert len(load_local(TASKS["boolq"], "val", tmp_path)) == 7
    assert len(load_local(TASKS["rte"], "train", tmp_path)) == 5


def data_dir_in_a_new_process(tmp_path, real: str) -> str:
    """paths.DATA_DIR as a fresh process (a torchrun worker, say) sees it."""
    env = {**os.environ, "LOMO_TEST_SUPERGLUE_DIR": real, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-c", "import paths; print(paths.DATA_DIR)"]
    done = subprocess.run(
        command, cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_data_dir_is_the_real_folder_else_the_synthetic_one(tmp_path, synthetic):
    assert data_dir_in_a_new_process(tmp_path, str(synthetic)) == str(synthetic)
    fallback = data_dir_in_a_new_process(tmp_path, str(tmp_path / "absent"))
    assert fallback.startswith(str(tmp_path / f"lomo-tests-{os.getuid()}" / "superglue-"))
    assert contents(synthetic) == contents(Path(fallback))
    # a second process reuses the folder the first one wrote
    assert data_dir_in_a_new_process(tmp_path, str(tmp_path / "absent")) == fallback
    assert len(list((tmp_path / f"lomo-tests-{os.getuid()}").iterdir())) == 1
    assert DATA_DIR.is_dir()


def pytest_on_the_real_layout_test(tmp_path, real: str) -> str:
    env = {**os.environ, "LOMO_TEST_SUPERGLUE_DIR": real, "TMPDIR": str(tmp_path)}
    test = f"{__file__}::test_the_layout_is_the_real_folders"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout


def test_real_data_tests_are_skipped_only_without_the_real_folder(tmp_path, synthetic):
    absent = pytest_on_the_real_layout_test(tmp_path, str(tmp_path / "absent"))
    assert "1 skipped" in absent and f"not at {tmp_path / 'absent'}" in absent, absent
    # a folder in the real layout (here a synthetic one) runs it
    assert "1 passed" in pytest_on_the_real_layout_test(tmp_path, str(synthetic))
