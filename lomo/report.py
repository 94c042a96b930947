"""`lomo table`: collect the runs' metrics.json into one SuperGLUE table (CSV, Markdown, LaTeX)
and a figure, with 95% confidence intervals and the paper's value where the model matches."""

import argparse
import csv
import io
import json
from pathlib import Path

from scipy.stats import binomtest

from tasks.superglue.data import write_atomic

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
    "task",
    "seed",
    "protocol",
    "metric",
    "value",
    "n",
    "ci_low",
    "ci_high",
    "epoch",
    "paper",
]


def load_reference(path: str | None) -> dict[tuple[str, str, str], float]:
    """(size, method, task) -> the paper's accuracy in percent."""
    if not path:
        return {}
    with open(path) as f:
        return {
            (r["size"], r["method"], r["task"]): float(r["accuracy"]) for r in csv.DictReader(f)
        }


def wilson_interval(accuracy: float, n: int) -> tuple[float, float]:
    successes = round(accuracy * n)
    interval = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return interval.low, interval.high


def collect(paths: list[str], reference: dict) -> list[dict]:
    rows = []
    for path in paths:
        run = json.loads(Path(path).read_text())
        reported = run["reported"]
        metric = "f1" if run["task"] == "record" else "accuracy"
        value = reported["eval"][metric]
        n = run["n_eval"]
        low, high = wilson_interval(value, n) if metric == "accuracy" else (None, None)
        size = PAPER_MODEL_SIZES.get(run["model"])
        paper = reference.get((size, PAPER_METHOD_NAMES.get(run["method"]), run["task"]))
        rows.append(
            {
                "model": run["model"],
                "method": run["method"],
                "task": run["task"],
                "seed": run["seed"],
                "protocol": run["protocol"],
                "metric": metric,
                "value": value,
                "n": n,
                "ci_low": low,
                "ci_high": high,
                "epoch": reported["epoch"],
                "paper": paper / 100 if paper is not None else None,
            }
        )
    rows.sort(key=lambda r: (r["model"], r["method"], r["task"], r["seed"]))
    return rows


def pivot(rows: list[dict]) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """Rows (model, method) x task columns; a cell is 'mean ± CI half-width' in percent over
    seeds (the CI of the first seed's run, which has the same n)."""
    tasks = sorted({r["task"] for r in rows})
    table = []
    for model in sorted({r["model"] for r in rows}):
        for method in sorted({r["method"] for r in rows if r["model"] == model}):
            cells, values = [], []
            for task in tasks:
                runs = [
                    r for r in rows if (r["model"], r["method"], r["task"]) == (model, method, task)
                ]
                if not runs:
                    cells.append("-")
                    continue
                mean = sum(r["value"] for r in runs) / len(runs)
                values.append(mean)
                half = (
                    (runs[0]["ci_high"] - runs[0]["ci_low"]) / 2
                    if runs[0]["ci_low"] is not None
                    else None
                )
                cells.append(f"{100 * mean:.1f}" + (f" ± {100 * half:.1f}" if half else ""))
            cells.append(f"{100 * sum(values) / len(values):.1f}" if values else "-")
            table.append((model, method, cells))
    return tasks + ["avg"], table


def to_markdown(rows: list[dict]) -> str:
    header, table = pivot(rows)
    lines = ["| model | method | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
    lines += [f"| {m} | {meth} | " + " | ".join(cells) + " |" for m, meth, cells in table]
    return "\n".join(lines) + "\n"


def to_latex(rows: list[dict]) -> str:
    header, table = pivot(rows)
    lines = [
        r"\begin{tabular}{ll" + "r" * len(header) + "}",
        r"\toprule",
        "Model & Method & "
        + " & ".join(h.upper() if h != "avg" else "Avg." for h in header)
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
    series = sorted({(r["model"], r["method"]) for r in rows})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    for i, (model, method) in enumerate(series):
        xs, ys, errs = [], [], [[], []]
        for t, task in enumerate(tasks):
            run = next(
                (r for r in rows if (r["model"], r["method"], r["task"]) == (model, method, task)),
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
    rows = collect(args.runs, load_reference(args.reference))
    if not rows:
        raise SystemExit("lomo table: no runs given")
    write_atomic(args.csv, to_csv(rows))
    if args.markdown:
        write_atomic(args.markdown, to_markdown(rows))
    if args.latex:
        write_atomic(args.latex, to_latex(rows))
    if args.figure:
        plot(rows, args.figure)
    print(to_markdown(rows))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("table", help="tabulate SuperGLUE runs (metrics.json files)")
    parser.add_argument("--runs", nargs="+", required=True, help="metrics.json files")
    parser.add_argument("--reference", help="the paper's Table 3 as CSV (size,method,task,...)")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--markdown")
    parser.add_argument("--latex")
    parser.add_argument("--figure")
    parser.set_defaults(func=run_table)
