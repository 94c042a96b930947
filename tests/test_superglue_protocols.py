import json
import random
from collections import Counter

import numpy as np
import pytest
from paths import DATA_DIR
from synthetic_superglue import write_superglue

from tasks.superglue import DataError, prepare
from tasks.superglue.protocols import heldout_rows, paper_rows


def synthetic_copa(root, split, n):
    """A COPA folder whose `split` has n rows, idx = 10 * row, labels alternating."""
    (root / "COPA").mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "premise": f"p{i}.",
            "choice1": "a.",
            "choice2": "b.",
            "question": "cause",
            "label": i % 2,
            "idx": 10 * i,
        }
        for i in range(n)
    ]
    (root / "COPA" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paper_protocol_matches_the_official_sampling(tmp_path):
    synthetic_copa(tmp_path / "data", "train", 3000)
    synthetic_copa(tmp_path / "data", "val", 400)
    random.seed(0)
    expected = random.sample(range(3000), 1000)  # the official code's draw

    prepared = prepare("copa", "paper", "local", tmp_path / "data", tmp_path / "out")
    assert [ex["idx"] for ex in prepared.train] == [10 * i for i in expected]
    assert [ex["idx"] for ex in prepared.eval] == [10 * i for i in range(400)]  # small: whole
    assert prepared.dev is None
    ids = json.loads((tmp_path / "out" / "ids.json").read_text())
    assert ids["splits"]["train"]["rows"] == expected
    assert ids["splits"]["train"]["from"] == "train"
    assert ids["splits"]["eval"]["rows"] == list(range(400))
    train_file = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["idx"] for line in train_file] == [10 * i for i in expected]


def test_paper_protocol_id_files_are_identical_across_runs(tmp_path):
    synthetic_copa(tmp_path / "data", "train", 3000)
    synthetic_copa(tmp_path / "data", "val", 1500)
    prepare("copa", "paper", "local", tmp_path / "data", tmp_path / "a")
    prepare("copa", "paper", "local", tmp_path / "data", tmp_path / "b")
    for name in ("ids.json", "train.jsonl", "eval.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_paper_rows_small_split_is_used_whole():
    assert paper_rows(1000) == list(range(1000))
    assert len(set(paper_rows(1001))) == 1000


def test_heldout_follows_mezo_permutations():
    rows = heldout_rows(2000, 700, num_train=1000, num_dev=500, num_test=1000, seed=3)
    np.random.seed(3)
    order = np.random.permutation(2000).tolist()
    np.random.seed(0)
    test = np.random.permutation(700).tolist()
    assert rows == {"train": order[:1000], "dev": order[1000:1500], "eval": test}


def test_heldout_prepare_on_larger_splits(tmp_path):
    # Synthetic RTE train and validation splits of 277 rows (the real validation split's size).
    write_superglue(tmp_path, rows={"train": 277, "val": 277})
    prepared = prepare(
        "rte", "heldout", "local", tmp_path, tmp_path / "out", num_train=200, num_dev=50
    )
    assert (len(prepared.train), len(prepared.dev), len(prepared.eval)) == (200, 50, 277)
    train_ids = {ex["idx"] for ex in prepared.train}
    assert not train_ids & {ex["idx"] for ex in prepared.dev}
    assert json.loads((tmp_path / "out" / "ids.json").read_text())["splits"]["dev"]["from"] == (
        "train"
    )


def test_heldout_needs_enough_train_rows():
    with pytest.raises(DataError, match="heldout needs 1000 train \\+ 500 dev rows .* of 32"):
        prepare("rte", "heldout", "local", DATA_DIR)


@pytest.mark.real_data
def test_val_split_is_stratified_seeded_and_disjoint(tmp_path):
    prepared = prepare("cb", "val-split", "local", DATA_DIR, tmp_path, train_size=28, seed=1)
    assert (len(prepared.train), len(prepared.eval)) == (28, 28)
    assert not {ex["idx"] for ex in prepared.train} & {ex["idx"] for ex in prepared.eval}
    # CB val has 23 / 28 / 5 examples per class; a stratified half keeps those proportions.
    counts = Counter(ex["label"] for ex in prepared.train)
    assert [counts[k] for k in range(3)] in ([11, 14, 3], [12, 14, 2])
    again = prepare("cb", "val-split", "local", DATA_DIR, train_size=28, seed=1)
    assert again.manifest == prepared.manifest
    ids = json.loads((tmp_path / "ids.json").read_text())
    assert ids["protocol"] == "val-split"
    assert ids["splits"]["train"]["from"] == ids["splits"]["eval"]["from"] == "val"


def test_empty_split_after_sampling_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="the eval split is empty after sampling"):
        prepare("copa", "paper", "local", DATA_DIR, tmp_path / "out", num_eval=0)
    assert not (tmp_path / "out").exists()


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'mezo': expected one of paper"):
        prepare("copa", "mezo", "local", DATA_DIR)
