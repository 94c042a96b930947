import json
import re

import pytest
from paths import DATA_DIR

from tasks.superglue import TASKS, DataError, get_task, load_split, prepare
from tasks.superglue.data import DataNotFoundError
from tasks.superglue.source import SourceError, local_tasks, resolve_source


@pytest.mark.real_data
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


@pytest.mark.real_data
def test_label_encoding_of_official_strings_and_bools():
    # CB val: 23 entailment, 28 contradiction, 5 neutral (counted from the raw file by hand).
    cb = load_split("cb", "val", "local", DATA_DIR)
    assert [sum(ex["label"] == k for ex in cb) for k in range(3)] == [23, 28, 5]
    rte = load_split("rte", "val", "local", DATA_DIR)
    assert sum(ex["label"] == 0 for ex in rte) == 146  # "entailment" -> 0
    wsc = load_split("wsc", "val", "local", DATA_DIR)
    assert sum(ex["label"] for ex in wsc) == 38  # true -> 1


@pytest.mark.real_data
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


# --- data checks: every error a one-line DataError naming file:line, ids or field ----------


def raises_data_error(match, error_type=DataError):
    """pytest.raises for a one-line data error."""

    class OneLine:
        def __enter__(self):
            self.context = pytest.raises(error_type, match=match)
            self.info = self.context.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.context.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return suppressed

    return OneLine()


RTE_ROW = {"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}


def test_rows_sharing_an_idx_are_named(tmp_path):
    rows = [json.dumps({**RTE_ROW, "premise": f"p{i}"}) for i in range(40)]
    path = write_task(tmp_path, "RTE", "val", rows)
    with raises_data_error(
        rf"^{path}: rows sharing an idx: idx 0 on lines 1, 2, 3, 4 \(\+36 more\)$"
    ):
        load_split("rte", "val", "local", tmp_path)


def test_duplicated_rows_are_named(tmp_path):
    lines = (DATA_DIR / "RTE/val.jsonl").read_text().splitlines()
    n = len(lines)  # 277 in the real file
    path = write_task(tmp_path, "RTE", "val", lines + lines[:40])
    with raises_data_error(
        rf"^{path}: duplicated rows: idx 0 on lines 1, {n + 1}; idx 1 on lines 2, {n + 2}; "
        rf"idx 2 on lines 3, {n + 3}; 37 more repeated ids$"
    ):
        load_split("rte", "val", "local", tmp_path)


def test_duplicated_multirc_paragraph_names_the_answer_ids(tmp_path):
    lines = (DATA_DIR / "MultiRC/train.jsonl").read_text().splitlines()
    path = write_task(tmp_path, "MultiRC", "train", lines[:3] + lines[1:2])
    first = json.loads(lines[1])
    question = first["passage"]["questions"][0]
    idx = {
        "paragraph": first["idx"],
        "question": question["idx"],
        "answer": question["answers"][0]["idx"],
    }
    with raises_data_error(rf"^{path}: duplicated rows: idx {re.escape(str(idx))} on lines 2, 4;"):
        load_split("multirc", "train", "local", tmp_path)


@pytest.mark.real_data
def test_real_files_have_unique_ids():
    # Repeated content under distinct ids stays (WSC's official validation set has 3 such
    # pairs, MultiRC's one): they are separate examples of the benchmark.
    for task, split in (("wsc", "val"), ("multirc", "val"), ("record", "train")):
        records = load_split(task, split, "local", DATA_DIR)
        assert len({json.dumps(r["idx"], sort_keys=True) for r in records}) == len(records)


@pytest.mark.parametrize(
    ("task", "folder", "row", "message"),
    [
        (
            "rte",
            "RTE",
            {**RTE_ROW, "hypothesis": None},
            "field 'hypothesis' is null, expected a string",
        ),
        (
            "rte",
            "RTE",
            {**RTE_ROW, "premise": 3},
            r"field 'premise' is 3 \(int\), expected a string",
        ),
        ("rte", "RTE", {**RTE_ROW, "idx": None}, "idx is null, expected an integer"),
        ("rte", "RTE", {**RTE_ROW, "idx": "7"}, r"idx is '7' \(str\), expected an integer"),
        (
            "wic",
            "WiC",
            {
                "word": "w",
                "sentence1": "a",
                "sentence2": "b",
                "start1": "0",
                "end1": 1,
                "start2": 0,
                "end2": 1,
                "idx": 0,
                "label": True,
            },
            r"field 'start1' is '0' \(str\), expected an integer",
        ),
        (
            "wsc",
            "WSC",
            {
                "text": "t",
                "target": {
                    "span1_index": True,
                    "span2_index": 0,
                    "span1_text": "a",
                    "span2_text": "b",
                },
                "idx": 0,
                "label": True,
            },
            r"field 'span1_index' is True \(bool\), expected an integer",
        ),
        (
            "multirc",
            "MultiRC",
            {
                "idx": 0,
                "passage": {
                    "text": "t",
                    "questions": [
                        {
                            "idx": 0,
                            "question": "q",
                            "answers": [{"idx": 0, "text": None, "label": 1}],
                        }
                    ],
                },
            },
            "field 'answer' is null, expected a string",
        ),
        (
            "record",
            "ReCoRD",
            {
                "idx": 0,
                "passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": 2}]},
                "qas": [{"idx": 1, "query": None, "answers": [{"text": "Ann"}]}],
            },
            "field 'query' is null, expected a string",
        ),
    ],
)
def test_field_types_are_checked(tmp_path, task, folder, row, message):
    path = write_task(tmp_path, folder, "train", [json.dumps(row)])
    with raises_data_error(rf"^{path}:1: {message}$"):
        load_split(task, "train", "local", tmp_path)


def test_null_hypothesis_never_reaches_a_prompt(tmp_path):
    write_task(tmp_path, "CB", "val", [json.dumps({**CB_ROW, "hypothesis": None})])
    with raises_data_error("field 'hypothesis' is null"):
        prepare("cb", "val-split", "local", tmp_path, train_size=0.5)


def test_non_utf8_byte_names_file_and_line(tmp_path):
    path = write_task(tmp_path, "CB", "val", [json.dumps(CB_ROW), json.dumps({**CB_ROW, "idx": 1})])
    path.write_bytes(path.read_bytes() + b'{"premise": "caf\xe9"}\n')  # Latin-1 e-acute
    with raises_data_error(rf"^{path}:3: not UTF-8 \(byte 0xe9 at column 17\)"):
        load_split("cb", "val", "local", tmp_path)


def test_lone_surrogate_escape_names_file_and_line(tmp_path):
    """JSON "\\ud800" parses, but the text cannot be encoded: refused where it is read."""
    row = json.dumps({**CB_ROW, "idx": 1, "premise": "caf\ud800"})
    path = write_task(tmp_path, "CB", "val", [json.dumps(CB_ROW), row])
    assert "\\ud800" in path.read_text()
    with raises_data_error(rf"^{path}:2: text that cannot be encoded as UTF-8 \('\\ud800'"):
        load_split("cb", "val", "local", tmp_path)


@pytest.mark.parametrize("folder", ["rte", "Rte", "rTE"])
def test_task_folder_in_another_letter_case(tmp_path, folder):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "val.jsonl").write_bytes((DATA_DIR / "RTE/val.jsonl").read_bytes())
    assert load_split("rte", "val", "local", tmp_path) == load_split(
        "rte", "val", "local", DATA_DIR
    )
    assert local_tasks(tmp_path) == []  # no train.jsonl
    (tmp_path / folder / "train.jsonl").write_bytes((DATA_DIR / "RTE/train.jsonl").read_bytes())
    assert local_tasks(tmp_path) == ["rte"]


def test_two_folders_for_one_task(tmp_path):
    for folder in ("rte", "Rte"):
        write_task(tmp_path, folder, "val", [json.dumps(RTE_ROW)])
    with raises_data_error(
        rf"^{tmp_path}: several folders could hold rte: \['Rte', 'rte'\]; keep one$"
    ):
        load_split("rte", "val", "local", tmp_path)
    with pytest.raises(SourceError, match="several folders could hold rte"):
        resolve_source(str(tmp_path), ["rte"])


def test_missing_task_folder_names_what_was_looked_for_and_found(tmp_path):
    write_task(tmp_path, "CB", "val", [json.dumps(CB_ROW)])
    (tmp_path / "notes").mkdir()
    with raises_data_error(
        rf"^{tmp_path}: no RTE/ folder for rte \(in any letter case\); found: \['CB', 'notes'\]$",
        DataNotFoundError,
    ):
        load_split("rte", "val", "local", tmp_path)
    with raises_data_error(rf"^data folder {tmp_path / 'nope'} does not exist", FileNotFoundError):
        load_split("rte", "val", "local", tmp_path / "nope")


def test_split_file_that_is_a_folder(tmp_path):
    (tmp_path / "RTE" / "val.jsonl").mkdir(parents=True)
    with raises_data_error(rf"^{tmp_path / 'RTE' / 'val.jsonl'} is a folder, not a file") as info:
        load_split("rte", "val", "local", tmp_path)
    assert "does not exist" not in str(info.value)


def test_unreadable_split_file(tmp_path, monkeypatch):
    path = write_task(tmp_path, "RTE", "val", [json.dumps(RTE_ROW)])

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "open", refuse)
    with raises_data_error(rf"^{path}: cannot be read \(Permission denied\)$"):
        load_split("rte", "val", "local", tmp_path)
