"""`lomo table`: collect the runs' metrics.json into one SuperGLUE table (CSV, Markdown, LaTeX)
and a figure, with 95% confidence intervals and the paper's value where the model matches.

Runs that differ only in the `--select-over` settings (the grid: lr, warmup_ratio, ...) and
the seed form one grid; per seed the table keeps the run that the run's protocol selects
(`paper`: the best reported eval score, the paper's rule; `heldout`: the best dev score, whose
test score is reported), and says how many points the grid had and which one won. Runs that
differ in any other setting (a LoRA rank, a protocol) are separate rows, labelled with it.
"""

import argparse
import csv
import hashlib
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from scipy.stats import binomtest

from lomo.io import read_yaml, write_atomic
from lomo.provenance import code_and_environment
from tasks.superglue import get_task

# The paper's Table 3 names its models by size; our runs name them by hub id.
PAPER_MODEL_SIZES = {
    "huggyllama/llama-7b": "7B",
    "huggyllama/llama-13b": "13B",
    "huggyllama/llama-30b": "30B",
    "huggyllama/llama-65b": "65B",
}
PAPER_METHOD_NAMES = {"zero-shot": "Zero-shot", "lora": "LoRA", "lomo": "LOMO"}
COLUMNS = [
    "model",
    "method",
    "variant",
    "task",
    "seed",
    "protocol",
    "metric",
    "value",
    "n",
    "ci_low",
    "ci_high",
    "gold_nll",
    "train_gold_nll",
    "epoch",
    "grid_points",
    "chosen",
    "flags",
    "paper",
    "code",
]
# Settings that do not change what a run measures: where the data lives, how it was launched.
NOT_SETTINGS = {
    "seed",
    "data_dir",
    "source",
    "eval_batch",
    "eval_tokens",
    "save_model",
    "deepspeed",
    "report_to",
    # when a run checkpoints or stops early: the resumed run's results are the same
    "checkpoint_every_minutes",
    "time_limit_margin_minutes",
}


# What the table reads of a run's metrics.json and config.yaml (`lomo finetune` writes more): a
# run from an older version or another program is refused naming the file and what is missing.
NAMES = {"type": "string"}
RUN_METRICS_SCHEMA = {
    "type": "object",
    "required": ["model", "method", "task", "seed", "protocol", "n_eval", "reported"],
    "properties": {
        **dict.fromkeys(("model", "method", "task", "protocol"), NAMES),
        "seed": {"type": "integer"},
        "n_eval": {"type": "integer", "minimum": 1},
        "reported": {
            "type": "object",
            "required": ["epoch", "eval"],
            "properties": {
                "epoch": {"type": "integer"},
                **dict.fromkeys(("eval", "dev"), {"additionalProperties": {"type": "number"}}),
            },
        },
    },
}
RUN_CONFIG_SCHEMA = {
    "type": "object",
    "required": ["model", "method", "task", "seed", "protocol"],
    "properties": {
        "seed": {"type": "integer"},
        **dict.fromkeys(("model", "method", "task", "protocol"), NAMES),
    },
}
REFERENCE_COLUMNS = ("size", "method", "task", "accuracy")


def check_schema(value, schema: dict, what: str) -> None:
    """A ValueError naming `what` and the first thing in `value` that `schema` refuses."""
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = "".join(f"[{part!r}]" for part in error.absolute_path)
        raise ValueError(f"{what}: {where + ': ' if where else ''}{error.message}")


def load_reference(path: str | None) -> dict[tuple[str, str, str], float]:
    """(size, method, task) -> the paper's accuracy in percent."""
    if not path:
        return {}
    reference = {}
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        missing = [c for c in REFERENCE_COLUMNS if c not in (rows.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: no column {', '.join(missing)}: expected the paper's Table 3 with "
                f"the columns {','.join(REFERENCE_COLUMNS)}"
            )
        for row in rows:
            try:
                accuracy = float(row["accuracy"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}:{rows.line_num}: accuracy {row['accuracy']!r} is not a number"
                ) from None
            reference[row["size"], row["method"], row["task"]] = accuracy
    return reference


def wilson_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on n examples."""
    successes = round(accuracy * n)
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return interval.low, interval.high


def load_run(path: str) -> dict:
    """A finished run: its metrics.json and the config.yaml beside it, and which examples it
    used (`data`: a hash of fingerprint.json's data hashes; runs from before it have none)."""
    metrics_path = Path(path)
    config_path = metrics_path.with_name("config.yaml")
    fingerprint_path = metrics_path.with_name("fingerprint.json")
    resources_path = metrics_path.with_name("resources.json")
    try:
        metrics = json.loads(metrics_path.read_text())
        config = read_yaml(config_path)
        data = (
            json.loads(fingerprint_path.read_text())["data"] if fingerprint_path.exists() else None
        )
        resources = json.loads(resources_path.read_text()) if resources_path.exists() else {}
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the run {metrics_path}: {error}") from None
    check_schema(metrics, RUN_METRICS_SCHEMA, f"{metrics_path}: not a lomo finetune run")
    check_schema(config, RUN_CONFIG_SCHEMA, f"{config_path}: not a lomo finetune run")
    metric = get_task(metrics["task"]).primary_metric
    split = "dev" if config["protocol"] == "heldout" else "eval"
    if metric not in metrics["reported"].get(split, {}):
        raise ValueError(f"{metrics_path}: reported.{split} has no {metric} (the task's metric)")
    if data is not None:
        data = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    code = code_and_environment(resources.get("provenance"))
    return {
        "path": str(metrics_path),
        "metrics": metrics,
        "config": config,
        "data": data,
        "code": code,
    }


def unique_paths(paths: list[str]) -> list[str]:
    """Each run once, however often (or however spelled) it is listed."""
    first = {}
    for path in paths:
        first.setdefault(Path(path).resolve(), path)
    return list(first.values())


def defining_settings(run: dict, select_over: list[str]) -> dict:
    """What makes runs the same experiment up to the grid and the seed: every setting that
    changes what is measured, and the examples used (the same settings on other data are
    another experiment)."""
    settings = {
        k: v for k, v in run["config"].items() if k not in NOT_SETTINGS and k not in select_over
    }
    return {**settings, "data": run["data"]}


def primary_value(run: dict, split: str) -> float:
    return run["metrics"]["reported"][split][get_task(run["metrics"]["task"]).primary_metric]


def select_grid(runs: list[dict], select_over: list[str]) -> list[dict]:
    """Per grid and seed, the run the protocol's rule selects (first best on ties, in path
    order), with `grid_points` and `chosen` (the winner's grid settings) added."""
    grids = defaultdict(list)
    for run in sorted(runs, key=lambda r: r["path"]):
        settings = defining_settings(run, select_over)
        grids[json.dumps([settings, run["config"]["seed"]], sort_keys=True)].append(run)
    selected = []
    for grid in grids.values():
        split = "dev" if grid[0]["config"]["protocol"] == "heldout" else "eval"
        best = max(grid, key=lambda r: primary_value(r, split))
        chosen = ", ".join(f"{k}={best['config'][k]}" for k in select_over if k in best["config"])
        selected.append({**best, "grid_points": len(grid), "chosen": chosen})
    return selected


def variant_labels(runs: list[dict], select_over: list[str]) -> dict[str, str]:
    """Path -> row label: the method, plus the settings that tell apart the rows of one
    (model, method) on one task (e.g. "lora (lora_r=4)", "lomo (protocol=heldout)")."""
    by_cell = defaultdict(list)
    for run in runs:
        by_cell[(run["config"]["model"], run["config"]["method"], run["config"]["task"])].append(
            run
        )
    label_keys = defaultdict(set)
    for (model, method, _), cell in by_cell.items():
        for key in cell[0]["config"]:
            if key not in NOT_SETTINGS and key not in select_over:
                if len({json.dumps(r["config"].get(key)) for r in cell}) > 1:
                    label_keys[(model, method)].add(key)
        # Data tells rows apart only where nothing else does: runs of one seed (a seed may draw
        # its own examples) with the same settings on different examples.
        same = defaultdict(set)
        for r in cell:
            settings = {k: v for k, v in defining_settings(r, select_over).items() if k != "data"}
            same[json.dumps([settings, r["config"]["seed"]], sort_keys=True)].add(r["data"])
        if any(len(data) > 1 for data in same.values()):
            label_keys[(model, method)].add("data")
    labels = {}
    for run in runs:
        config = {**run["config"], "data": run["data"]}
        keys = sorted(label_keys[(config["model"], config["method"])])
        extra = ", ".join(f"{k}={config[k]}" for k in keys)
        labels[run["path"]] = config["method"] + (f" ({extra})" if extra else "")
    return labels


def collect(paths: list[str], reference: dict, select_over: list[str] = ()) -> list[dict]:
    runs = select_grid([load_run(path) for path in unique_paths(paths)], list(select_over))
    labels = variant_labels(runs, list(select_over))
    rows = []
    for run in runs:
        metrics = run["metrics"]
        reported = metrics["reported"]
        metric = get_task(metrics["task"]).primary_metric
        value = reported["eval"][metric]
        n = metrics["n_eval"]
        low, high = wilson_interval(value, n) if metric == "accuracy" else (None, None)
        size = PAPER_MODEL_SIZES.get(metrics["model"])
        variant = labels[run["path"]]
        # The paper's number only beside the same design: its protocol, its method as run.
        like_paper = metrics["protocol"] == "paper" and variant == metrics["method"]
        paper = reference.get((size, PAPER_METHOD_NAMES.get(metrics["method"]), metrics["task"]))
        rows.append(
            {
                "model": metrics["model"],
                "method": metrics["method"],
                "variant": variant,
                "task": metrics["task"],
                "seed": metrics["seed"],
                "protocol": metrics["protocol"],
                "metric": metric,
                "value": value,
                "n": n,
                "ci_low": low,
                "ci_high": high,
                "gold_nll": reported["eval"].get("gold_nll"),
                "train_gold_nll": metrics.get("train_end", {}).get("gold_nll"),
                "epoch": reported["epoch"],
                "grid_points": run["grid_points"],
                "chosen": run["chosen"],
                "flags": "; ".join(metrics.get("flags", [])),
                "paper": paper / 100 if paper is not None and like_paper else None,
                "code": run["code"],
            }
        )
    rows.sort(key=lambda r: (r["model"], r["variant"], r["task"], r["seed"]))
    return rows


# The paper's Table 3 tasks: the "avg" column averages these (as the paper does), not CB.
PAPER_TASKS = ("boolq", "copa", "multirc", "rte", "wic", "wsc")


def pivot(rows: list[dict]) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """Rows (model, variant) x task columns; a cell is 'mean ± CI half-width' in percent over
    seeds (the CI of the first seed's run, which has the same n), and with several seeds
    their standard deviation, '(sd x)'. The last columns are the average over the paper's
    tasks present and the grid each cell was selected from."""
    tasks = sorted({r["task"] for r in rows})
    averaged = [t for t in tasks if t in PAPER_TASKS]
    table = []
    for model in sorted({r["model"] for r in rows}):
        for variant in sorted({r["variant"] for r in rows if r["model"] == model}):
            cells, values, points = [], {}, set()
            for task in tasks:
                runs = [
                    r
                    for r in rows
                    if (r["model"], r["variant"], r["task"]) == (model, variant, task)
                ]
                if not runs:
                    cells.append("-")
                    continue
                mean = sum(r["value"] for r in runs) / len(runs)
                values[task] = mean
                points.add(runs[0]["grid_points"])
                half = (
                    (runs[0]["ci_high"] - runs[0]["ci_low"]) / 2
                    if runs[0]["ci_low"] is not None
                    else None
                )
                flag = "!" if any(r["flags"] for r in runs) else ""  # see the CSV's flags
                spread = ""
                if len(runs) > 1:
                    sd = statistics.stdev(r["value"] for r in runs)
                    spread = f" (sd {100 * sd:.1f})"
                interval = f" ± {100 * half:.1f}" if half else ""
                cells.append(f"{100 * mean:.1f}{interval}{spread}{flag}")
            complete = averaged and all(t in values for t in averaged)
            cells.append(
                f"{100 * sum(values[t] for t in averaged) / len(averaged):.1f}" if complete else "-"
            )
            cells.append(" / ".join(str(n) for n in sorted(points)))
            table.append((model, variant, cells))
    return tasks + [f"avg ({' '.join(averaged)})", "grid points"], table


def to_markdown(rows: list[dict]) -> str:
    header, table = pivot(rows)
    lines = ["| model | method | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
    lines += [f"| {m} | {variant} | " + " | ".join(cells) + " |" for m, variant, cells in table]
    codes = sorted({r["code"] for r in rows})
    if len(codes) > 1:
        lines += ["", "The runs of this table come from different code or packages:"]
        lines += [f"- {code}: {sum(r['code'] == code for r in rows)} run(s)" for code in codes]
    if any(r["flags"] for r in rows):
        lines += ["", "! flagged run (one class for >= 90% of predictions, or tied option scores):"]
        lines += [
            f"- {r['model']} {r['variant']} {r['task']}: {r['flags']}" for r in rows if r["flags"]
        ]
    return "\n".join(lines) + "\n"


def to_latex(rows: list[dict]) -> str:
    header, table = pivot(rows)
    lines = [
        r"\begin{tabular}{ll" + "r" * len(header) + "}",
        r"\toprule",
        "Model & Method & "
        + " & ".join(h if h.startswith(("avg", "grid")) else h.upper() for h in header)
        + r" \\",
        r"\midrule",
    ]
    for model, method, cells in table:
        cells = [c.replace("±", r"$\pm$") for c in cells]
        lines.append(f"{model} & {method} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    series = sorted({(r["model"], r["variant"]) for r in rows})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    for i, (model, method) in enumerate(series):
        xs, ys, errs = [], [], [[], []]
        for t, task in enumerate(tasks):
            run = next(
                (r for r in rows if (r["model"], r["variant"], r["task"]) == (model, method, task)),
                None,
            )
            if run is None:
                continue
            xs.append(t + (i - (len(series) - 1) / 2) * width)
            ys.append(100 * run["value"])
            low = run["ci_low"] if run["ci_low"] is not None else run["value"]
            high = run["ci_high"] if run["ci_high"] is not None else run["value"]
            errs[0].append(100 * (run["value"] - low))
            errs[1].append(100 * (high - run["value"]))
        label = method if len(models_in(rows)) == 1 else f"{model} {method}"
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label)
    ax.set_xticks(range(len(tasks)), [t.upper() for t in tasks])
    ax.set_ylabel("accuracy (%) with 95% CI")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small", ncols=min(4, len(series)))
    ax.set_title(f"SuperGLUE, {', '.join(models_in(rows))}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def models_in(rows: list[dict]) -> list[str]:
    return sorted({r["model"] for r in rows})


def run_table(args: argparse.Namespace) -> None:
    rows = collect(args.runs, load_reference(args.reference), args.select_over)
    if not rows:
        raise ValueError("no runs given")
    write_atomic(args.csv, to_csv(rows))
    if args.markdown:
        write_atomic(args.markdown, to_markdown(rows))
    if args.latex:
        write_atomic(args.latex, to_latex(rows))
    if args.figure:
        plot(rows, args.figure)
    print(to_markdown(rows))


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("table", help=summary)
    parser.add_argument("--runs", nargs="+", required=True, help="metrics.json files")
    parser.add_argument(
        "--select-over",
        nargs="*",
        default=[],
        help="settings of a grid (e.g. lr warmup_ratio): runs differing only in these are one "
        "cell, selected by the protocol's rule",
    )
    parser.add_argument("--reference", help="the paper's Table 3 as CSV (size,method,task,...)")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--markdown")
    parser.add_argument("--latex")
    parser.add_argument("--figure")
    parser.set_defaults(func=run_table)
