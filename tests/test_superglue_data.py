import json

import datasets
import pytest
from superglue_paths import DATA_DIR

from tasks.superglue import TASKS, DataError, get_task
from tasks.superglue.data import load_split


@pytest.mark.parametrize(
    ("task", "split", "n"),
    [
        ("cb", "val", 56),
        ("copa", "val", 100),
        ("rte", "val", 277),
        ("wic", "val", 638),
        ("wsc", "val", 104),
        ("multirc", "val", 4848),  # answer options of 83 passages
        ("boolq", "train", 32),
        ("record", "train", 32),  # 32 passages with one query each
    ],
)
def test_loaded_counts(task, split, n):
    assert len(load_split(task, split, "local", DATA_DIR)) == n


def test_label_encoding_of_official_strings_and_bools():
    # CB val: 23 entailment, 28 contradiction, 5 neutral (counted from the raw file by hand).
    cb = load_split("cb", "val", "local", DATA_DIR)
    assert [sum(ex["label"] == k for ex in cb) for k in range(3)] == [23, 28, 5]
    rte = load_split("rte", "val", "local", DATA_DIR)
    assert sum(ex["label"] == 0 for ex in rte) == 146  # "entailment" -> 0
    wsc = load_split("wsc", "val", "local", DATA_DIR)
    assert sum(ex["label"] for ex in wsc) == 38  # true -> 1


def test_multirc_and_record_are_flattened():
    multirc = load_split("multirc", "val", "local", DATA_DIR)
    assert len({ex["idx"]["paragraph"] for ex in multirc}) == 83
    first = multirc[0]
    assert set(first) == {"idx", "paragraph", "question", "answer", "label"}
    record = load_split("record", "train", "local", DATA_DIR)[12]
    assert record["idx"] == {"passage": 29280, "query": 45067}
    assert record["entities"] == [
        "Leon Watson",
        "Northampton",
        "Peter Roberts",
        "Roberts",
        "Shane Reeves",
    ]
    assert record["answers"] == ["Shane Reeves"]


# Hand-written rows in the Hugging Face `aps/super_glue` format for real examples of the local
# files, with the label ids of the hub's ClassLabel features.
HUB_ROWS = {
    ("cb", 14): {
        "premise": "A: Your turn. B: Okay. Uh, I don't think they should abolish it.",
        "hypothesis": "they should abolish it",
        "idx": 14,
        "label": 1,
    },
    ("copa", 32): {
        "premise": "I coughed.",
        "choice1": "I inhaled smoke.",
        "choice2": "I lowered my voice.",
        "question": "cause",
        "idx": 32,
        "label": 0,
    },
    ("rte", 208): {
        "premise": "The girl was found in Drummondville.",
        "hypothesis": "Drummondville contains the girl.",
        "idx": 208,
        "label": 1,
    },
    ("wic", 239): {
        "word": "curd",
        "sentence1": "Bean curd.",
        "sentence2": "Lemon curd.",
        "start1": 5,
        "start2": 6,
        "end1": 9,
        "end2": 10,
        "idx": 239,
        "label": 1,
    },
    ("wsc", 10): {
        "text": "Jane gave Joan candy because she was hungry.",
        "span1_index": 0,
        "span2_index": 5,
        "span1_text": "Jane",
        "span2_text": "she",
        "idx": 10,
        "label": 0,
    },
}


@pytest.mark.parametrize(("task", "position"), list(HUB_ROWS))
def test_hub_rows_give_the_same_records_as_local_files(task, position, monkeypatch):
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [HUB_ROWS[(task, position)]]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (hub,) = load_split(task, "val", "hub")
    assert calls == [("aps/super_glue", task, "validation")]
    assert hub == load_split(task, "val", "local", DATA_DIR)[position]


def test_hub_multirc_and_record_rows(monkeypatch):
    local_multirc = load_split("multirc", "val", "local", DATA_DIR)[2147]
    local_record = load_split("record", "train", "local", DATA_DIR)[12]
    hub_rows = {
        "multirc": {
            "paragraph": local_multirc["paragraph"],
            "question": "How many people did Susan call?",
            "answer": "5",
            "idx": {"paragraph": 36, "question": 425, "answer": 2147},
            "label": 1,
        },
        "record": {
            "passage": local_record["passage"],
            "query": "After undergoing surgery, Mr @placeholder spent a month recovering from "
            "his injuries.",
            # The hub lists an entity once per mention, unsorted.
            "entities": ["Leon Watson", "Peter Roberts", "Northampton", "Shane Reeves", "Roberts"]
            + ["Peter Roberts", "Northampton", "Shane Reeves"],
            "entity_spans": {"text": [], "start": [], "end": []},
            "answers": ["Shane Reeves"],
            "idx": {"passage": 29280, "query": 45067},
        },
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: [hub_rows[name]])
    assert load_split("multirc", "val", "hub") == [local_multirc]
    assert load_split("record", "train", "hub") == [local_record]


def test_hub_label_outside_the_label_set(monkeypatch):
    row = {**HUB_ROWS[("rte", 208)], "label": -1}  # what unlabeled test rows carry
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: [row])
    with pytest.raises(DataError, match=r"aps/super_glue/rte validation row 0: label -1"):
        load_split("rte", "val", "hub")


def write_task(root, folder, split, lines):
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return root / folder / f"{split}.jsonl"


CB_ROW = {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_task(tmp_path, "CB", "val", [json.dumps(CB_ROW), '{"premise": "p",'])
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        load_split("cb", "val", "local", tmp_path)


def test_label_outside_the_label_set(tmp_path):
    bad = {**CB_ROW, "label": "maybe"}
    path = write_task(tmp_path, "CB", "val", [json.dumps(CB_ROW), json.dumps(bad)])
    with pytest.raises(DataError, match=rf"{path}:2: label 'maybe' is not one of the cb labels"):
        load_split("cb", "val", "local", tmp_path)


def test_bool_label_where_a_string_is_expected(tmp_path):
    write_task(tmp_path, "RTE", "train", [json.dumps({**CB_ROW, "label": True})])
    with pytest.raises(DataError, match="label True is not one of the rte labels"):
        load_split("rte", "train", "local", tmp_path)


def test_missing_field(tmp_path):
    row = {"premise": "p", "label": "neutral", "idx": 0}
    path = write_task(tmp_path, "CB", "val", [json.dumps(row)])
    with pytest.raises(DataError, match=rf"{path}:1: missing field\(s\) \['hypothesis'\]"):
        load_split("cb", "val", "local", tmp_path)


def test_record_answer_not_among_entities(tmp_path):
    row = {
        "idx": 3,
        "passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": 2}]},
        "qas": [{"query": "@placeholder left.", "answers": [{"text": "Bob"}], "idx": 7}],
    }
    path = write_task(tmp_path, "ReCoRD", "train", [json.dumps(row)])
    with pytest.raises(DataError, match=rf"{path}:1: ReCoRD answers \['Bob'\] are not among"):
        load_split("record", "train", "local", tmp_path)


def test_missing_split_file():
    with pytest.raises(FileNotFoundError, match=r"BoolQ/val.jsonl does not exist"):
        load_split("boolq", "val", "local", DATA_DIR)


def test_empty_split(tmp_path):
    write_task(tmp_path, "COPA", "val", [])
    with pytest.raises(DataError, match="copa val from local is empty"):
        load_split("copa", "val", "local", tmp_path)


def test_unknown_task_source_and_split():
    with pytest.raises(ValueError, match="unknown task 'mnli': expected one of boolq, cb"):
        get_task("mnli")
    with pytest.raises(ValueError, match="unknown task 'mnli'"):
        load_split("mnli", "val", "local", DATA_DIR)
    with pytest.raises(ValueError, match="unknown source 'web'"):
        load_split("cb", "val", "web")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_split("cb", "test", "local", DATA_DIR)
    assert sorted(TASKS) == ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"]
