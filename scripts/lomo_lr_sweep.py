"""Learning-rate and data sweep on top of the laptop profile's runs (issue 4's investigation
of why LOMO barely beats zero-shot on SmolLM2-135M).

Each (task, lr) reruns `lomo finetune` with the resolved config of the laptop run
results/laptop/superglue/smollm2-135m/{method}/{task}/seed42 (method: lomo unless --method),
changing only the lr (and any extra `lomo finetune` flags given after `--`), into
results/laptop/sweeps/{tag}{method}_lr{lr}/{task}; `--zero-shot` also evaluates zero-shot
with the same flags into {tag}zero-shot (needed when the flags change the data split or the
template). Then every trained run of the sweep, and the laptop profile's LOMO runs, are
compared with the zero-shot run evaluated on exactly the same examples (same data/ids.json)
with the same prompt template: accuracy with its 95% Wilson interval, the predicted-class
counts, an exact McNemar test, and two baselines that need no training: the majority class,
and zero-shot with its per-class mean score removed (label-free calibration, fit on the
evaluated examples themselves).

    .venv/bin/python scripts/lomo_lr_sweep.py --tasks rte cb --lrs 0.01 0.1 0.3
    .venv/bin/python scripts/lomo_lr_sweep.py --tasks rte --lrs 0.03 --tag train213- \\
        --zero-shot -- --train-size 213
    .venv/bin/python scripts/lomo_lr_sweep.py --tasks rte --lrs 5e-5 --tag train213- \\
        --method adamw -- --train-size 213
    .venv/bin/python scripts/lomo_lr_sweep.py --tasks rte wic --lrs 0.03 --tag mezo- \\
        --zero-shot -- --template mezo
"""

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lomo.io import read_yaml, write_atomic
from lomo.report.analysis import correctness, mcnemar_p
from lomo.report.tables import wilson_interval

RUNS = Path("results/laptop/superglue/smollm2-135m")
SWEEPS = Path("results/laptop/sweeps")


def predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def calibrated_accuracy(records: list[dict]) -> float:
    """Accuracy after subtracting each class's mean score over the examples (no labels used)."""
    classes = range(len(records[0]["scores"]))
    means = [sum(r["scores"][c] for r in records) / len(records) for c in classes]
    right = [max(classes, key=lambda c: r["scores"][c] - means[c]) == r["gold"] for r in records]
    return sum(right) / len(right)


def evaluated_as(run: Path) -> tuple:
    """What makes two runs' scores comparable: the evaluated examples and the template."""
    rows = json.loads((run / "data" / "ids.json").read_text())["splits"]["eval"]["rows"]
    return tuple(rows), read_yaml(run / "config.yaml")["template"]


def summarize(run: Path, zero_shot: Path, label: str) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    config = read_yaml(run / "config.yaml")
    accuracy, n = metrics["reported"]["eval"]["accuracy"], metrics["n_eval"]
    low, high = wilson_interval(accuracy, n)
    right, right_zero = correctness(run), correctness(zero_shot)
    only_run = sum(right[k] and not right_zero[k] for k in right)
    only_zero = sum(right_zero[k] and not right[k] for k in right)
    records, zero_records = predictions(run), predictions(zero_shot)
    golds = collections.Counter(r["gold"] for r in records)
    return {
        "task": metrics["task"],
        "method": metrics["method"],
        "run": label,
        "lr": config["lr"],
        "epochs": config["epochs"],
        "template": config["template"],
        "n": n,
        "accuracy": accuracy,
        "ci_low": low,
        "ci_high": high,
        "pred_counts": dict(sorted(collections.Counter(r["pred"] for r in records).items())),
        "gold_counts": dict(sorted(golds.items())),
        "only_run_right": only_run,
        "only_zero_shot_right": only_zero,
        "mcnemar_p": mcnemar_p(only_run, only_zero),
        "majority": max(golds.values()) / n,
        "zero_shot": sum(right_zero.values()) / len(right_zero),
        "zero_shot_calibrated": calibrated_accuracy(zero_records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--lrs", nargs="+", required=True)
    parser.add_argument("--tag", default="", help="sweep folder prefix")
    parser.add_argument("--method", default="lomo", help="a method the laptop profile ran")
    parser.add_argument("--zero-shot", action="store_true", help="also run zero-shot")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    for task in args.tasks:
        base = RUNS / args.method / task / "seed42" / "config.yaml"
        if not base.exists():
            sys.exit(f"{base} is missing: run the laptop profile first (README, quick start)")
        lr_flag = "--lora-lr" if args.method == "lora" else "--lr"
        points = [(f"{args.method}_lr{lr}", [lr_flag, lr]) for lr in args.lrs]
        points += [("zero-shot", ["--method", "zero-shot"])] if args.zero_shot else []
        for name, options in points:
            out = SWEEPS / f"{args.tag}{name}" / task
            if not (out / "metrics.json").exists():
                finetune = [sys.executable, "-m", "lomo.cli", "finetune", "--config", str(base)]
                options += ["--out", str(out), "--threads", "2", *extra]
                subprocess.run(finetune + options, check=True)
    runs = [p.parent for p in sorted(SWEEPS.glob("*/*/metrics.json"))]
    runs += [p.parent for p in sorted(RUNS.glob("*/*/seed42/metrics.json"))]
    method = {run: json.loads((run / "metrics.json").read_text())["method"] for run in runs}
    zero_shot = {evaluated_as(run): run for run in runs if method[run] == "zero-shot"}
    rows = []
    for run in runs:
        laptop = run.is_relative_to(RUNS)
        if method[run] == "zero-shot" or (laptop and method[run] != "lomo"):
            continue
        label = "laptop" if laptop else run.parent.name
        rows.append(summarize(run, zero_shot[evaluated_as(run)], label))
    table = pd.DataFrame(rows).sort_values(["task", "method", "run"])
    write_atomic(SWEEPS / "sweep.csv", table.to_csv(index=False))
    print(table.to_string(index=False, float_format="{:.3g}".format))


if __name__ == "__main__":
    main()
