"""scripts/lomo_lr_sweep.py: the baselines and the paired comparison it reports, on run folders
written by hand."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).parents[1] / "scripts" / "lomo_lr_sweep.py"
spec = importlib.util.spec_from_file_location("lomo_lr_sweep", SCRIPT)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def write_run(folder: Path, method: str, golds: list[int], scores: list[list[float]]) -> Path:
    folder.mkdir(parents=True)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
    records = [
        {"idx": i, "gold": g, "pred": p, "scores": s}
        for i, (g, p, s) in enumerate(zip(golds, preds, scores, strict=True))
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    accuracy = sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)
    metrics = {"task": "rte", "method": method, "n_eval": len(golds)}
    metrics["reported"] = {"epoch": 1, "eval": {"accuracy": accuracy}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"lr": 0.03, "epochs": 1, "template": "lomo"})
    )
    ids = {"splits": {"eval": {"rows": list(range(len(golds)))}}}
    (folder / "data").mkdir()
    (folder / "data" / "ids.json").write_text(json.dumps(ids))
    return folder


def test_calibration_removes_the_class_prior_without_labels(tmp_path):
    # Zero-shot always prefers class 0 by a margin; relative to each class's mean score,
    # the examples sort correctly (hand computation: means are -1.0 and -2.0).
    golds = [0, 1, 0, 1]
    scores = [[-0.5, -2.0], [-1.5, -1.5], [-0.5, -2.0], [-1.5, -2.5]]
    zero = write_run(tmp_path / "zero", "zero-shot", golds, scores)
    records = sweep.predictions(zero)
    assert sweep.calibrated_accuracy(records) == pytest.approx(0.75)


def test_summary_pairs_examples_and_counts_predictions(tmp_path):
    golds = [0, 1, 1, 1, 0, 1]
    zero = write_run(tmp_path / "zero", "zero-shot", golds, [[0.0, -1.0]] * 6)
    lomo_scores = [[-1.0, 0.0]] * 4 + [[0.0, -1.0], [-1.0, 0.0]]
    lomo = write_run(tmp_path / "lomo", "lomo", golds, lomo_scores)
    row = sweep.summarize(lomo, zero, "lr0.03")
    assert row["accuracy"] == pytest.approx(5 / 6)
    assert row["pred_counts"] == {0: 1, 1: 5}
    assert row["gold_counts"] == {0: 2, 1: 4}
    # LOMO alone is right on examples 1, 2, 3, 5; zero-shot alone on example 4.
    assert (row["only_run_right"], row["only_zero_shot_right"]) == (4, 1)
    assert row["mcnemar_p"] == pytest.approx(0.375)  # two-sided exact binomial, 4 of 5
    assert row["majority"] == pytest.approx(4 / 6)
    assert row["zero_shot"] == pytest.approx(2 / 6)
