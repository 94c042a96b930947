"""Load SuperGLUE splits from the official jsonl layout or the Hugging Face hub into one format.

Both sources give the same records, shaped like the rows of `aps/super_glue` (the flat layout
that the official LOMO code, MeZO and lm-evaluation-harness read):

- boolq:   idx, question, passage, label (0 False, 1 True)
- cb:      idx, premise, hypothesis, label (0 entailment, 1 contradiction, 2 neutral)
- copa:    idx, premise, choice1, choice2, question ("cause"/"effect"), label (0/1)
- multirc: idx {paragraph, question, answer}, paragraph, question, answer, label (0/1);
           one record per answer option
- record:  idx {passage, query}, passage, query, entities, answers (sorted unique strings);
           one record per query
- rte:     idx, premise, hypothesis, label (0 entailment, 1 not_entailment)
- wic:     idx, word, sentence1, sentence2, start1, end1, start2, end2, label (0/1)
- wsc:     idx, text, span1_index, span2_index, span1_text, span2_text, label (0/1)
"""

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

HUB_DATASET = "aps/super_glue"
SPLITS = {"train": "train", "val": "validation"}  # our name -> hub split name

# Label names in the official jsonl files, in the hub's ClassLabel order (index = label id).
LABEL_NAMES = {
    "boolq": (False, True),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": (0, 1),
    "multirc": (0, 1),
    "rte": ("entailment", "not_entailment"),
    "wic": (False, True),
    "wsc": (False, True),
}

# Official folder name and the fields copied unchanged from each official jsonl row.
FOLDERS = {
    "boolq": "BoolQ",
    "cb": "CB",
    "copa": "COPA",
    "multirc": "MultiRC",
    "record": "ReCoRD",
    "rte": "RTE",
    "wic": "WiC",
    "wsc": "WSC",
}
FIELDS = {
    "boolq": ("question", "passage"),
    "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "rte": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2", "start1", "end1", "start2", "end2"),
    "wsc": ("text", "span1_index", "span2_index", "span1_text", "span2_text"),
}


class DataError(ValueError):
    """A malformed or out-of-schema input row; the message names where it came from."""


def label_id(task: str, value: object, where: str) -> int:
    names = LABEL_NAMES[task]
    # `True in (0, 1)` holds in Python, so compare types as well as values.
    for i, name in enumerate(names):
        if type(value) is type(name) and value == name:
            return i
    raise DataError(f"{where}: label {value!r} is not one of the {task} labels {list(names)}")


def hub_label(task: str, value: object, where: str) -> int:
    if type(value) is not int or not 0 <= value < len(LABEL_NAMES[task]):
        n = len(LABEL_NAMES[task])
        raise DataError(f"{where}: label {value!r} is not a {task} label id in 0..{n - 1}")
    return value


def require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


def unique_sorted(values: list[str]) -> list[str]:
    return sorted(set(values))


def check_record(record: dict, where: str) -> dict:
    if not record["answers"]:
        raise DataError(f"{where}: ReCoRD query has no answers")
    outside = [answer for answer in record["answers"] if answer not in record["entities"]]
    if outside:
        raise DataError(f"{where}: ReCoRD answers {outside} are not among the passage entities")
    return record


# --- official jsonl rows -> records ----------------------------------------------------------


def local_rows(task: str, row: dict, where: str) -> list[dict]:
    if task == "multirc":
        require(row, ("idx", "passage"), where)
        records = []
        for question in row["passage"]["questions"]:
            for answer in question["answers"]:
                label = answer.get("label")
                records.append(
                    {
                        "idx": {
                            "paragraph": row["idx"],
                            "question": question["idx"],
                            "answer": answer["idx"],
                        },
                        "paragraph": row["passage"]["text"],
                        "question": question["question"],
                        "answer": answer["text"],
                        "label": label_id(task, label, where),
                    }
                )
        return records
    if task == "record":
        require(row, ("idx", "passage", "qas"), where)
        text = row["passage"]["text"]
        # Official entity spans are inclusive of `end`.
        spans = row["passage"]["entities"]
        entities = unique_sorted([text[span["start"] : span["end"] + 1] for span in spans])
        return [
            check_record(
                {
                    "idx": {"passage": row["idx"], "query": qa["idx"]},
                    "passage": text,
                    "query": qa["query"],
                    "entities": entities,
                    "answers": unique_sorted([a["text"] for a in qa.get("answers", [])]),
                },
                where,
            )
            for qa in row["qas"]
        ]
    fields = FIELDS[task]
    if task == "wsc":
        require(row, ("idx", "text", "target", "label"), where)
        row = {**row, **row["target"]}
    require(row, ("idx", *fields, "label"), where)
    label = label_id(task, row["label"], where)
    return [{"idx": row["idx"], **{f: row[f] for f in fields}, "label": label}]


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{lineno}: malformed JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, row


def load_local(task: str, split: str, data_dir: str | Path) -> list[dict]:
    folder = Path(data_dir) / FOLDERS[task]
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"no {split} split for {task}: {path} does not exist (found: {present or 'nothing'})"
        )
    records = []
    for lineno, row in read_jsonl(path):
        try:
            records.extend(local_rows(task, row, f"{path}:{lineno}"))
        except (KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{path}:{lineno}: unexpected {task} structure ({error!r})") from error
    return records


# --- hub rows -> records ---------------------------------------------------------------------


def hub_record(task: str, row: dict, where: str) -> dict:
    if task == "record":
        return check_record(
            {
                "idx": dict(row["idx"]),
                "passage": row["passage"],
                "query": row["query"],
                "entities": unique_sorted(row["entities"]),
                "answers": unique_sorted(row["answers"]),
            },
            where,
        )
    fields = ("paragraph", "question", "answer") if task == "multirc" else FIELDS[task]
    idx = dict(row["idx"]) if task == "multirc" else row["idx"]
    label = hub_label(task, row["label"], where)
    return {"idx": idx, **{f: row[f] for f in fields}, "label": label}


def load_hub(task: str, split: str) -> list[dict]:
    import datasets  # heavy import, only needed with network access

    rows = datasets.load_dataset(HUB_DATASET, task, split=SPLITS[split])
    where = f"{HUB_DATASET}/{task} {SPLITS[split]}"
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(hub_record(task, row, f"{where} row {i}"))
        except KeyError as error:
            raise DataError(f"{where} row {i}: missing field {error}") from error
    return records


def load_split(
    task: str, split: str, source: str = "local", data_dir: str | Path | None = None
) -> list[dict]:
    """Load one split ("train" or "val") of a task from `source` ("local" or "hub")."""
    if task not in FOLDERS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(FOLDERS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if source == "local":
        if data_dir is None:
            raise ValueError("source 'local' needs data_dir (a folder in the SuperGLUE layout)")
        records = load_local(task, split, data_dir)
    elif source == "hub":
        records = load_hub(task, split)
    else:
        raise ValueError(f"unknown source {source!r}: expected 'local' or 'hub'")
    if not records:
        raise DataError(f"{task} {split} from {source} is empty")
    return records


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
