"""Load SuperGLUE splits from the official jsonl layout or the Hugging Face hub into one format.

Both sources give the same records, shaped like the rows of `aps/super_glue` (the flat layout
that the official LOMO code, MeZO and lm-evaluation-harness read). A record is the task's
`idx`, its declared `fields` and, for tasks with label names, `label` (the label's index in the
declaration's `labels`, which is the hub's ClassLabel id); see `Task` (task.py) and the
declarations in tasks.py.
Tasks whose official rows are nested say how to read them (`from_jsonl`, `from_hub`; the
functions at the end of this file): MultiRC gives one record per answer option (idx
{paragraph, question, answer}), ReCoRD one per query (idx {passage, query}, `entities` and
`answers` as sorted unique strings, no label), WSC lifts its `target` fields.

Rows are checked as they load, each error a one-line `DataError` naming the file:line (or hub
row) and the field or ids: field types (no nulls), labels, UTF-8, and ids unique in a split.
"""

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from tasks.superglue.task import TYPE_NAMES, Task

# The hub copy we read: `aps/super_glue` at a pinned commit, so a later change to the repository
# cannot change the data under finished runs. At this revision the repository is the parquet
# conversion of the old loading script: one folder per config holding
# `{config}/{split}-00000-of-00001.parquet`, declared by the `configs:` YAML of its README.md
# (`path: rte/validation-*`), with the script's features (ClassLabel labels, MultiRC's and
# ReCoRD's `idx` structs). tests/superglue_hub.py writes ../shared/superglue in this layout and
# tests/test_superglue_hub.py loads it through `load_hub` with only HUB_DATASET changed.
HUB_DATASET = "aps/super_glue"
HUB_REVISION = "3de24cf8022e94f4ee4b9d55a6f539891524d646"
SPLITS = {"train": "train", "val": "validation"}  # our name -> hub split name


class DataError(ValueError):
    """A malformed or out-of-schema input row; the message names where it came from."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A task folder or split file that is not there; the message says what was looked for."""


def label_id(task: Task, value: object, where: str) -> int:
    # `True in (0, 1)` holds in Python, so compare types as well as values.
    for i, name in enumerate(task.labels):
        if type(value) is type(name) and value == name:
            return i
    raise DataError(
        f"{where}: label {value!r} is not one of the {task.name} labels {list(task.labels)}"
    )


def hub_label(task: Task, value: object, where: str) -> int:
    n = len(task.labels)
    if type(value) is not int or not 0 <= value < n:
        raise DataError(f"{where}: label {value!r} is not a {task.name} label id in 0..{n - 1}")
    return value


def require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


def has_type(value: object, kind: type) -> bool:
    if kind is int:
        return type(value) is int  # not bool
    if kind is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, kind)


def describe(value: object) -> str:
    return "null" if value is None else f"{value!r:.40} ({type(value).__name__})"


def check_fields(task: Task, record: dict, where: str) -> dict:
    """Every field of `record` has its schema type (so no null or number renders as text in a
    prompt), then the task's own check (ReCoRD: a query's answers are among its entities)."""
    for field, kind in task.fields.items():
        value = record[field]
        if not has_type(value, kind):
            expected = TYPE_NAMES[kind]
            raise DataError(f"{where}: field {field!r} is {describe(value)}, expected {expected}")
    idx = record["idx"]
    if task.idx_keys:
        ok = isinstance(idx, dict) and all(type(idx.get(key)) is int for key in task.idx_keys)
        expected = f"{{{', '.join(f'{key}: integer' for key in task.idx_keys)}}}"
    else:
        ok, expected = type(idx) is int, "an integer"
    if not ok:
        raise DataError(f"{where}: idx is {describe(idx)}, expected {expected}")
    return task.check(record, where) if task.check else record


def check_unique(records: list[dict], numbers: list[int], unit: str, where: str) -> None:
    """Refuse a split in which two records share an id (record i comes from `unit` numbers[i]):
    a repeated row would be trained on and scored twice, and a val-split could put its copies
    on both sides."""
    by_id = defaultdict(list)
    for i, record in enumerate(records):
        by_id[json.dumps(record["idx"], sort_keys=True)].append(i)
    repeated = [group for group in by_id.values() if len(group) > 1]
    if not repeated:
        return
    identical = all(records[i] == records[group[0]] for group in repeated for i in group)
    what = "duplicated rows" if identical else "rows sharing an idx"

    def show(group: list[int]) -> str:
        places = ", ".join(str(numbers[i]) for i in group[:4])
        more = f" (+{len(group) - 4} more)" if len(group) > 4 else ""
        return f"idx {records[group[0]]['idx']} on {unit} {places}{more}"

    shown = "; ".join(show(group) for group in repeated[:3])
    more = f"; {len(repeated) - 3} more repeated ids" if len(repeated) > 3 else ""
    raise DataError(f"{where}: {what}: {shown}{more}")


# --- official jsonl rows -> records ----------------------------------------------------------


def labelled_rows(task: Task, row: dict, where: str) -> list[dict]:
    """The usual row: idx, the task's fields as they are, and the label by name."""
    require(row, ("idx", *task.fields, "label"), where)
    label = label_id(task, row["label"], where)
    return [{"idx": row["idx"], **{f: row[f] for f in task.fields}, "label": label}]


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[error.start]:02x} at column "
                    f"{error.start + 1}); save the file as UTF-8"
                ) from error
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{lineno}: malformed JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            try:  # a lone surrogate escape ("\\ud800") decodes to text no tokenizer can encode
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as error:
                raise DataError(
                    f"{path}:{lineno}: text that cannot be encoded as UTF-8 "
                    f"({error.object[error.start : error.end]!r}, a lone surrogate escape)"
                ) from None
            yield lineno, row


def task_folder(data_dir: str | Path, task: Task) -> Path:
    """The task's folder in `data_dir`: the official name (RTE/) or that name in another letter
    case (rte/, Rte/), as unpacked archives and hand-made copies name it."""
    data_dir = Path(data_dir)
    name = task.folder
    if (data_dir / name).is_dir():
        return data_dir / name
    if not data_dir.is_dir():
        raise DataNotFoundError(f"data folder {data_dir} does not exist or is not a folder")
    folders = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    matches = [folder for folder in folders if folder.lower() == name.lower()]
    if len(matches) > 1:
        raise DataError(f"{data_dir}: several folders could hold {task.name}: {matches}; keep one")
    if not matches:
        raise DataNotFoundError(
            f"{data_dir}: no {name}/ folder for {task.name} (in any letter case); "
            f"found: {folders or 'no folders'}"
        )
    return data_dir / matches[0]


def load_local(task: Task, split: str, data_dir: str | Path) -> list[dict]:
    folder = task_folder(data_dir, task)
    path = folder / f"{split}.jsonl"
    if path.exists() and not path.is_file():
        raise DataError(f"{path} is a folder, not a file: the {split} split must be a jsonl file")
    if not path.exists():
        present = sorted(p.name for p in folder.glob("*.jsonl") if p.is_file())
        raise DataNotFoundError(
            f"no {split} split for {task.name}: {path} does not exist "
            f"(found: {present or 'nothing'})"
        )
    records, lines = [], []
    try:
        for lineno, row in read_jsonl(path):
            where = f"{path}:{lineno}"
            try:
                rows = (task.from_jsonl or labelled_rows)(task, row, where)
            except (KeyError, TypeError, AttributeError) as error:
                raise DataError(f"{where}: unexpected {task.name} structure ({error!r})") from error
            records.extend(check_fields(task, record, where) for record in rows)
            lines.extend([lineno] * len(rows))
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error
    check_unique(records, lines, "lines", str(path))
    return records


# --- hub rows -> records ---------------------------------------------------------------------


def labelled_hub_record(task: Task, row: dict, where: str) -> dict:
    """The usual hub row: idx (a struct for tasks with idx_keys), the fields, the label id."""
    idx = dict(row["idx"]) if task.idx_keys else row["idx"]
    label = hub_label(task, row["label"], where)
    return {"idx": idx, **{f: row[f] for f in task.fields}, "label": label}


def load_hub(task: Task, split: str, hub_copy: str | Path | None = None) -> list[dict]:
    """The task's rows of the hub config named like the task: from the hub at the pinned
    revision, or from `hub_copy`, a local copy of that revision (`lomo prepare-data`), which
    needs no network."""
    import datasets  # heavy import, only needed for the hub layout

    name = task.name
    repo, revision = (str(hub_copy), None) if hub_copy else (HUB_DATASET, HUB_REVISION)
    rows = datasets.load_dataset(repo, name, split=SPLITS[split], revision=revision)
    where = f"{repo}/{name} {SPLITS[split]}"
    records = []
    for i, row in enumerate(rows):
        try:
            record = (task.from_hub or labelled_hub_record)(task, row, f"{where} row {i}")
        except (KeyError, TypeError) as error:
            raise DataError(f"{where} row {i}: unexpected {name} structure ({error!r})") from error
        records.append(check_fields(task, record, f"{where} row {i}"))
    check_unique(records, list(range(len(records))), "rows", where)
    return records


def load(
    task: Task, split: str, source: str = "local", data_dir: str | Path | None = None
) -> list[dict]:
    """Load one split ("train" or "val") of a task from `source`: "local" (the official
    layout in `data_dir`) or "hub" (the hub dataset; with `data_dir`, a local copy of it)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if source == "local":
        if data_dir is None:
            raise ValueError("source 'local' needs data_dir (a folder in the SuperGLUE layout)")
        records = load_local(task, split, data_dir)
    elif source == "hub":
        records = load_hub(task, split, data_dir)
    else:
        raise ValueError(f"unknown source {source!r}: expected 'local' or 'hub'")
    if not records:
        raise DataError(f"{task.name} {split} from {source} is empty")
    return records


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


# --- the tasks whose rows are not the usual ones (named by their declarations in tasks.py) ----


def wsc_rows(task: Task, row: dict, where: str) -> list[dict]:
    """WSC's span fields are in the row's `target`."""
    require(row, ("idx", "text", "target", "label"), where)
    return labelled_rows(task, {**row, **row["target"]}, where)


def multirc_rows(task: Task, row: dict, where: str) -> list[dict]:
    """One record per answer option of each question of a paragraph."""
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


def unique_sorted(values: list[str]) -> list[str]:
    return sorted(set(values))


def record_rows(task: Task, row: dict, where: str) -> list[dict]:
    """One record per query of a passage; the passage's entities and the query's answers as
    sorted unique strings."""
    require(row, ("idx", "passage", "qas"), where)
    text = row["passage"]["text"]
    # Official entity spans are inclusive of `end`.
    spans = row["passage"]["entities"]
    entities = unique_sorted([text[span["start"] : span["end"] + 1] for span in spans])
    return [
        {
            "idx": {"passage": row["idx"], "query": qa["idx"]},
            "passage": text,
            "query": qa["query"],
            "entities": entities,
            "answers": unique_sorted([a["text"] for a in qa.get("answers", [])]),
        }
        for qa in row["qas"]
    ]


def record_hub_record(task: Task, row: dict, where: str) -> dict:
    return {
        "idx": dict(row["idx"]),
        "passage": row["passage"],
        "query": row["query"],
        # The hub lists the entity texts unsorted (a set in the old loading script).
        "entities": unique_sorted(row["entities"]),
        "answers": unique_sorted(row["answers"]),
    }


def check_record(record: dict, where: str) -> dict:
    if not record["answers"]:
        raise DataError(f"{where}: ReCoRD query has no answers")
    outside = [answer for answer in record["answers"] if answer not in record["entities"]]
    if outside:
        raise DataError(f"{where}: ReCoRD answers {outside} are not among the passage entities")
    return record
