"""The hub path, rehearsed offline: ../shared/superglue written in the layout of `aps/super_glue`
(tests/superglue_hub.py) and loaded through the `datasets.load_dataset` call of `load_hub`, with
only the location changed. Hub and local rows must give the same records, prompts, answers and
labels, and the protocols must select the same examples from both.
"""

import json
import random

import datasets
import numpy as np
import pytest
import yaml
from paths import DATA_DIR
from superglue_hub import (
    FOLDERS,
    SPLITS,
    read_official,
    write_full_size,
    write_hub_copy,
    write_hub_dataset,
)

from tasks.superglue import DataError, data, get_task, get_template, load_split, prepare
from tasks.superglue.data import HUB_REVISION

TEMPLATES = ["lomo", "lomo+pronuon+score-eos", "mezo", "lm-eval"]
# Every split of the local data: BoolQ and ReCoRD hold back their validation files.
LOCAL_SPLITS = [
    (task, split)
    for task in FOLDERS
    for split in SPLITS
    if (DATA_DIR / FOLDERS[task] / f"{split}.jsonl").is_file()
]


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory):
    return write_hub_copy(DATA_DIR, tmp_path_factory.mktemp("hub"))


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """Point the hub path at a local folder, the one thing that differs from a run on the hub,
    and record every `load_dataset` call (passed through to the real one)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    calls = []
    real = datasets.load_dataset

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording)

    def point(root):
        monkeypatch.setattr(data, "HUB_DATASET", str(root))
        return calls

    return point


def official_ids(task: str, path) -> list:
    """Example ids in file order, flattened as the hub flattens MultiRC and ReCoRD."""
    rows = read_official(path)
    if task == "multirc":
        return [
            {"paragraph": row["idx"], "question": q["idx"], "answer": a["idx"]}
            for row in rows
            for q in row["passage"]["questions"]
            for a in q["answers"]
        ]
    if task == "record":
        return [{"passage": row["idx"], "query": qa["idx"]} for row in rows for qa in row["qas"]]
    return [row["idx"] for row in rows]


def official_labels(task: str, path) -> list:
    rows = read_official(path)
    if task == "multirc":
        return [
            a["label"] for row in rows for q in row["passage"]["questions"] for a in q["answers"]
        ]
    return [row["label"] for row in rows]


def test_hub_copy_has_the_repository_layout(hub_copy):
    files = sorted(str(p.relative_to(hub_copy)) for p in hub_copy.rglob("*") if p.is_file())
    parquet = [f"{task}/{SPLITS[split]}-00000-of-00001.parquet" for task, split in LOCAL_SPLITS]
    assert files == sorted(["README.md", *parquet])
    card = yaml.safe_load(hub_copy.joinpath("README.md").read_text().split("---")[1])
    assert {
        "config_name": "rte",
        "data_files": [
            {"split": "train", "path": "rte/train-*"},
            {"split": "validation", "path": "rte/validation-*"},
        ],
    } in card["configs"]
    assert [info["config_name"] for info in card["dataset_info"]] == list(FOLDERS)


@pytest.mark.parametrize(("task", "split"), LOCAL_SPLITS)
def test_hub_rows_give_the_local_records_prompts_and_labels(task, split, hub_copy, hub_at):
    calls = hub_at(hub_copy)
    hub = load_split(task, split, "hub")
    # Exactly the hub call: only the location differs.
    assert calls == [((str(hub_copy), task), {"split": SPLITS[split], "revision": HUB_REVISION})]
    local = load_split(task, split, "local", DATA_DIR)
    ids = official_ids(task, DATA_DIR / FOLDERS[task] / f"{split}.jsonl")
    assert [ex["idx"] for ex in hub] == [ex["idx"] for ex in local] == ids
    assert hub == local
    for template in map(get_template, TEMPLATES):
        for hub_example, local_example in zip(hub, local, strict=True):
            assert get_task(task).render(hub_example, template) == get_task(task).render(
                local_example, template
            )


@pytest.mark.parametrize(("task", "split"), [ts for ts in LOCAL_SPLITS if ts[0] != "record"])
def test_hub_label_ids_name_the_official_labels(task, split, hub_copy, hub_at):
    """The hub's ClassLabel names (from the card) against the official jsonl label of each row:
    bools as 'False'/'True', COPA 0/1 as 'choice1'/'choice2', CB and RTE strings as they are."""
    hub_at(hub_copy)
    table = datasets.load_dataset(str(hub_copy), task, split=SPLITS[split])
    names = table.features["label"].names
    path = DATA_DIR / FOLDERS[task] / f"{split}.jsonl"
    expected = {
        "copa": lambda label: ["choice1", "choice2"][label],
        "multirc": lambda label: str(bool(label)),
    }.get(task, str)
    assert [names[i] for i in table["label"]] == [expected(x) for x in official_labels(task, path)]
    records = load_split(task, split, "hub")
    assert [ex["label"] for ex in records] == table["label"]


# --- full-size splits: the protocols on more than 1000 rows -----------------------------------


def official_sample(n: int, size: int = 1000) -> list[int]:
    """The official LOMO code's draw, on the global `random` module as it does it."""
    state = random.getstate()
    random.seed(0)
    rows = random.sample(range(n), size)
    random.setstate(state)
    return rows


def mezo_order(n: int, seed: int) -> list[int]:
    """MeZO's permutation, on numpy's global generator as it does it."""
    state = np.random.get_state()
    np.random.seed(seed)
    order = np.random.permutation(n).tolist()
    np.random.set_state(state)
    return order


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """Each task with a train split of >= 1600 and a validation split of >= 1100 examples,
    renumbered copies of the real rows, in the official layout and as a hub copy."""
    local = tmp_path_factory.mktemp("full-local")
    for task in FOLDERS:
        write_full_size(DATA_DIR, local, task, {"train": 1600, "val": 1100})
    return local, write_hub_copy(local, tmp_path_factory.mktemp("full-hub"))


@pytest.mark.parametrize("task", list(FOLDERS))
def test_paper_protocol_on_full_size_splits(task, full_size, hub_at, tmp_path):
    local_dir, hub_dir = full_size
    hub_at(hub_dir)
    ids = {s: official_ids(task, local_dir / FOLDERS[task] / f"{s}.jsonl") for s in SPLITS}
    assert len(ids["train"]) >= 1600 and len(ids["val"]) >= 1100
    assert len({json.dumps(i, sort_keys=True) for i in ids["train"]}) == len(ids["train"])

    local = prepare(task, "paper", "local", local_dir, tmp_path / "local")
    hub = prepare(task, "paper", "hub", out_dir=tmp_path / "hub")
    for name, split in (("train", "train"), ("eval", "val")):
        expected = official_sample(len(ids[split]))
        manifest = local.manifest["splits"][name]
        assert manifest["rows"] == expected
        assert manifest["idx"] == [ids[split][i] for i in expected]
        assert hub.manifest["splits"][name] == manifest
    assert (hub.train, hub.eval) == (local.train, local.eval)
    assert len(local.train) == len(local.eval) == 1000
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "hub" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


@pytest.mark.parametrize("task", list(FOLDERS))
def test_heldout_protocol_on_full_size_splits(task, full_size, hub_at):
    local_dir, hub_dir = full_size
    hub_at(hub_dir)
    ids = {s: official_ids(task, local_dir / FOLDERS[task] / f"{s}.jsonl") for s in SPLITS}
    local = prepare(task, "heldout", "local", local_dir, seed=13)
    hub = prepare(task, "heldout", "hub", seed=13)
    order = mezo_order(len(ids["train"]), seed=13)
    expected = {
        "train": order[:1000],
        "dev": order[1000:1500],
        "eval": mezo_order(len(ids["val"]), seed=0)[:1000],
    }
    for name, rows in expected.items():
        split = "val" if name == "eval" else "train"
        assert local.manifest["splits"][name]["rows"] == rows
        assert local.manifest["splits"][name]["idx"] == [ids[split][i] for i in rows]
        assert hub.manifest["splits"][name] == local.manifest["splits"][name]
    assert (hub.train, hub.dev, hub.eval) == (local.train, local.dev, local.eval)


# --- bad hub rows --------------------------------------------------------------------------


RTE_ROW = {"premise": "p", "hypothesis": "h", "idx": 0, "label": "entailment"}


def test_hub_test_split_label(tmp_path, hub_at):
    # Unlabeled test rows carry -1, which a ClassLabel stores as it is.
    hub_at(write_hub_dataset(tmp_path, {"rte": {"validation": [{**RTE_ROW, "label": -1}]}}))
    with pytest.raises(DataError, match=r"rte validation row 0: label -1 is not a rte label id"):
        load_split("rte", "val", "hub")


def test_hub_null_field(tmp_path, hub_at):
    rows = [RTE_ROW, {**RTE_ROW, "idx": 1, "hypothesis": None}]
    hub_at(write_hub_dataset(tmp_path, {"rte": {"validation": rows}}))
    with pytest.raises(DataError, match=r"rte validation row 1: field 'hypothesis' is null, "):
        load_split("rte", "val", "hub")


def test_hub_duplicate_ids(tmp_path, hub_at):
    rows = [RTE_ROW, {**RTE_ROW, "idx": 1}, RTE_ROW, {**RTE_ROW, "premise": "q"}]
    hub_at(write_hub_dataset(tmp_path, {"rte": {"validation": rows}}))
    with pytest.raises(
        DataError, match=r"rte validation: rows sharing an idx: idx 0 on rows 0, 2, 3$"
    ):
        load_split("rte", "val", "hub")
