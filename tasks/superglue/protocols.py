"""Sampling protocols: which examples are trained on, selected on, and reported.

- `paper` (official LOMO code): a split with more than 1000 rows is cut to
  `random.seed(0); random.sample(range(n), 1000)`, train and validation separately; smaller
  splits are used whole. Evaluation is on the validation sample (no dev set).
- `heldout` (MeZO): 1000 train + 500 dev from the train split (one seeded permutation,
  `np.random.seed(seed); np.random.permutation(n)`, first 1000 train, next 500 dev) and up to
  1000 test rows from validation (permutation under seed 0, fixed across training seeds).
  Select on dev, report test once.
- `val-split`: NOT the paper's protocol. For folders whose train split is tiny (32 rows in
  ../shared/superglue): a seeded split of validation into train and test, stratified by label.

`prepare` writes the chosen rows (`train.jsonl`, `dev.jsonl`, `eval.jsonl`) and the manifest of
selected row positions and example ids (`ids.json`) into one folder.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lomo.io import write_atomic
from tasks.superglue.data import DataError, to_jsonl
from tasks.superglue.tasks import get_task, load_split

PROTOCOLS = ("paper", "heldout", "val-split")


@dataclass
class Prepared:
    train: list[dict]
    eval: list[dict]
    dev: list[dict] | None  # heldout only
    manifest: dict  # what was selected from where; written as ids.json


def paper_rows(n: int, size: int = 1000, seed: int = 0) -> list[int]:
    if n <= size:
        return list(range(n))
    return random.Random(seed).sample(range(n), size)  # same draw as random.seed(seed) + sample


def heldout_rows(
    n_train: int, n_val: int, num_train: int, num_dev: int, num_test: int, seed: int
) -> dict[str, list[int]]:
    if n_train < num_train + num_dev:
        raise DataError(
            f"heldout needs {num_train} train + {num_dev} dev rows from a train split of "
            f"{n_train}; lower --num-train/--num-dev or use the val-split protocol"
        )
    order = np.random.RandomState(seed).permutation(n_train).tolist()
    test = np.random.RandomState(0).permutation(n_val).tolist()[:num_test]
    return {"train": order[:num_train], "dev": order[num_train : num_train + num_dev], "eval": test}


def val_split_rows(
    n: int,
    labels: list[int] | None,
    train_size: int | float,
    test_size: int | float | None,
    seed: int,
) -> dict[str, list[int]]:
    from sklearn.model_selection import train_test_split  # on use: keeps imports light

    train, test = train_test_split(
        list(range(n)),
        train_size=train_size,
        test_size=test_size,
        random_state=seed,
        stratify=labels,
    )
    return {"train": sorted(train), "eval": sorted(test)}


def prepare(
    task: str,
    protocol: str,
    source: str = "local",
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    num_train: int = 1000,
    num_dev: int = 500,
    num_eval: int = 1000,
    train_size: int | float = 0.5,
    test_size: int | float | None = None,
) -> Prepared:
    """Select train / (dev) / eval examples for `task` under `protocol`; write them if `out_dir`.

    paper uses num_train / num_eval as sample sizes (1000 each) and seed 0; heldout uses
    num_train / num_dev / num_eval; val-split uses train_size / test_size (counts or fractions).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    declared = get_task(task)
    val = load_split(task, "val", source, data_dir)
    if protocol == "val-split":
        # Stratified by label where the task has labels (ReCoRD has none).
        labels = None if declared.labels is None else [ex["label"] for ex in val]
        rows = val_split_rows(len(val), labels, train_size, test_size, seed)
        sources = {"train": ("val", val), "eval": ("val", val)}
    else:
        train = load_split(task, "train", source, data_dir)
        if protocol == "paper":
            rows = {
                "train": paper_rows(len(train), num_train, seed),
                "eval": paper_rows(len(val), num_eval, seed),
            }
            sources = {"train": ("train", train), "eval": ("val", val)}
        else:
            rows = heldout_rows(len(train), len(val), num_train, num_dev, num_eval, seed)
            sources = {"train": ("train", train), "dev": ("train", train), "eval": ("val", val)}

    selected = {name: [sources[name][1][i] for i in rows[name]] for name in rows}
    for name, examples in selected.items():
        if not examples:
            raise DataError(f"{task} {protocol}: the {name} split is empty after sampling")
    manifest = {
        "task": task,
        "protocol": protocol,
        "source": source,
        "seed": seed,
        "splits": {
            name: {
                "from": sources[name][0],
                "rows": rows[name],
                "idx": [ex["idx"] for ex in selected[name]],
            }
            for name in rows
        },
    }
    prepared = Prepared(selected["train"], selected["eval"], selected.get("dev"), manifest)
    if out_dir is not None:
        write_prepared(prepared, out_dir)
    return prepared


def write_prepared(prepared: Prepared, out_dir: str | Path) -> None:
    """The selected examples as {split}.jsonl files and the manifest as ids.json."""
    splits = {"train": prepared.train, "eval": prepared.eval, "dev": prepared.dev}
    for name, examples in splits.items():
        if examples is not None:
            write_atomic(Path(out_dir) / f"{name}.jsonl", to_jsonl(examples))
    write_atomic(Path(out_dir) / "ids.json", json.dumps(prepared.manifest, indent=1) + "\n")
