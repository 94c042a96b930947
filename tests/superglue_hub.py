"""Local copies of SuperGLUE in the layout of the hub dataset `aps/super_glue`, for rehearsing
the hub path offline (the revision is tasks.superglue.data.HUB_REVISION).

At that revision the repository holds one folder per config with one parquet file per split
(`rte/validation-00000-of-00001.parquet`), declared by the YAML header of its README.md
(`configs:` with `path: rte/validation-*`, and `dataset_info:` with the features below). Its
rows are what the old `super_glue.py` loading script generated from the official jsonl files;
`hub_rows` does the same, written from that script and the dataset card, not from
tasks.superglue.data:
- labels are ClassLabel ids of the card's names: booleans as 'False'/'True', COPA's 0/1 as
  'choice1'/'choice2', the CB and RTE strings as they are;
- MultiRC: one row per answer option, `idx` a struct {paragraph, question, answer};
- ReCoRD: one row per query, `idx` {passage, query}, `entities` the set of entity texts
  (unsorted), `entity_spans` sorted by start with an exclusive end, `answers` sorted, unique;
- WSC (`wsc`, not `wsc.fixed`): the `target` span fields lifted to the top level.
"""

import json
from pathlib import Path

import datasets
import yaml

from tasks.superglue import TASKS

FOLDERS = {name: task.folder for name, task in TASKS.items()}  # the official folder names

SPLITS = {"train": "train", "val": "validation"}  # official file name -> hub split


def string(name: str) -> dict:
    return {"name": name, "dtype": "string"}


def int32(name: str) -> dict:
    return {"name": name, "dtype": "int32"}


def class_label(*names: str) -> dict:
    return {"name": "label", "dtype": {"class_label": {"names": dict(enumerate(names))}}}


# The features of each config as the dataset card's `dataset_info` declares them.
CARD_FEATURES = {
    "boolq": [string("question"), string("passage"), int32("idx"), class_label("False", "True")],
    "cb": [
        string("premise"),
        string("hypothesis"),
        int32("idx"),
        class_label("entailment", "contradiction", "neutral"),
    ],
    "copa": [
        string("premise"),
        string("choice1"),
        string("choice2"),
        string("question"),
        int32("idx"),
        class_label("choice1", "choice2"),
    ],
    "multirc": [
        string("paragraph"),
        string("question"),
        string("answer"),
        {"name": "idx", "struct": [int32("paragraph"), int32("question"), int32("answer")]},
        class_label("False", "True"),
    ],
    "record": [
        string("passage"),
        string("query"),
        {"name": "entities", "sequence": "string"},
        {
            "name": "entity_spans",
            "sequence": [string("text"), int32("start"), int32("end")],
        },
        {"name": "answers", "sequence": "string"},
        {"name": "idx", "struct": [int32("passage"), int32("query")]},
    ],
    "rte": [
        string("premise"),
        string("hypothesis"),
        int32("idx"),
        class_label("entailment", "not_entailment"),
    ],
    "wic": [
        string("word"),
        string("sentence1"),
        string("sentence2"),
        int32("start1"),
        int32("start2"),
        int32("end1"),
        int32("end2"),
        int32("idx"),
        class_label("False", "True"),
    ],
    "wsc": [
        string("text"),
        int32("span1_index"),
        int32("span2_index"),
        string("span1_text"),
        string("span2_text"),
        int32("idx"),
        class_label("False", "True"),
    ],
}


def cast_label(label: object) -> str:
    """The loading script's `_cast_label`: the label as the string of a ClassLabel name."""
    if isinstance(label, str):
        return label
    if isinstance(label, bool):
        return "True" if label else "False"
    assert label in (0, 1), label
    return str(label)


def hub_rows(task: str, row: dict) -> list[dict]:
    """The hub rows the loading script made of one official jsonl row."""
    if task == "multirc":
        paragraph = row["passage"]
        return [
            {
                "paragraph": paragraph["text"],
                "question": question["question"],
                "answer": answer["text"],
                "idx": {
                    "paragraph": row["idx"],
                    "question": question["idx"],
                    "answer": answer["idx"],
                },
                "label": cast_label(bool(answer["label"])),
            }
            for question in paragraph["questions"]
            for answer in question["answers"]
        ]
    if task == "record":
        text = row["passage"]["text"]
        spans = sorted(
            (
                {"text": text[e["start"] : e["end"] + 1], "start": e["start"], "end": e["end"] + 1}
                for e in row["passage"]["entities"]
            ),
            key=lambda span: span["start"],
        )
        # The script stores a set; any order is the hub's. Reversed first mentions: not sorted.
        entities = list(dict.fromkeys(span["text"] for span in spans))[::-1]
        return [
            {
                "passage": text,
                "query": qa["query"],
                "entities": entities,
                # A sequence of structs is stored as a struct of lists.
                "entity_spans": {key: [span[key] for span in spans] for key in spans[0]},
                "answers": sorted({answer["text"] for answer in qa["answers"]}),
                "idx": {"passage": row["idx"], "query": qa["idx"]},
            }
            for qa in row["qas"]
        ]
    if task == "wsc":
        row = {**row, **row["target"]}
    names = [feature["name"] for feature in CARD_FEATURES[task]]
    hub = {name: row[name] for name in names if name != "label"}
    if task == "copa":
        hub["label"] = "choice2" if row["label"] else "choice1"
    else:
        hub["label"] = cast_label(row["label"])
    return [hub]


def read_official(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_hub_dataset(root: Path, splits: dict[str, dict[str, list[dict]]]) -> Path:
    """Write hub rows ({config: {hub split: rows}}) as the repository holds them: one parquet
    file per config and split, and the README.md card declaring configs and features."""
    infos, configs = [], []
    for config, by_split in splits.items():
        features = datasets.Features._from_yaml_list(CARD_FEATURES[config])
        for split, rows in by_split.items():
            table = datasets.Dataset.from_list(rows, features=features)
            table.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
        infos.append(
            {
                "config_name": config,
                "features": CARD_FEATURES[config],
                "splits": [{"name": s, "num_examples": len(rows)} for s, rows in by_split.items()],
            }
        )
        configs.append(
            {
                "config_name": config,
                "data_files": [{"split": s, "path": f"{config}/{s}-*"} for s in by_split],
            }
        )
    header = yaml.safe_dump({"dataset_info": infos, "configs": configs}, sort_keys=False)
    (root / "README.md").write_text(f"---\n{header}---\n\n# SuperGLUE, test copy\n")
    return root


def write_hub_copy(data_dir: Path, root: Path, tasks: tuple[str, ...] = tuple(FOLDERS)) -> Path:
    """The official-layout folder `data_dir` (train.jsonl / val.jsonl per task) as a hub copy."""
    splits = {}
    for task in tasks:
        splits[task] = {
            hub_split: [hub for row in read_official(path) for hub in hub_rows(task, row)]
            for ours, hub_split in SPLITS.items()
            if (path := data_dir / FOLDERS[task] / f"{ours}.jsonl").is_file()
        }
    return write_hub_dataset(root, splits)


# --- full-size splits --------------------------------------------------------------------------

STRIDE = 1_000_000  # copy k of a row gets ids + k * STRIDE: new ids, still int32


def renumbered(task: str, row: dict, k: int) -> dict:
    row = json.loads(json.dumps(row))  # a deep copy
    row["idx"] += k * STRIDE
    if task == "multirc":
        for question in row["passage"]["questions"]:
            question["idx"] += k * STRIDE
            for answer in question["answers"]:
                answer["idx"] += k * STRIDE
    if task == "record":
        for qa in row["qas"]:
            qa["idx"] += k * STRIDE
    return row


def examples_in(task: str, row: dict) -> int:
    if task == "multirc":
        return sum(len(question["answers"]) for question in row["passage"]["questions"])
    return len(row["qas"]) if task == "record" else 1


def write_full_size(data_dir: Path, out: Path, task: str, sizes: dict[str, int]) -> Path:
    """An official-layout folder whose splits have at least sizes[split] examples: renumbered
    copies of the real rows (of val.jsonl, or of train.jsonl where val.jsonl is held back)."""
    folder = out / FOLDERS[task]
    folder.mkdir(parents=True)
    for split, size in sizes.items():
        source = data_dir / FOLDERS[task] / f"{split}.jsonl"
        if not source.is_file():
            source = data_dir / FOLDERS[task] / "train.jsonl"
        rows, count, k = read_official(source), 0, 0
        lines = []
        while count < size:
            for row in rows:
                lines.append(json.dumps(renumbered(task, row, k)))
                count += examples_in(task, row)
            k += 1
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return out
