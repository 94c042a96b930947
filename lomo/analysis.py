"""Helpers for the notebooks in analysis/: read run folders, compare methods on the same
examples, write tables (CSV + LaTeX), figures (PNG + PDF) and claim verdicts.

Nothing here trains or measures; the notebooks call these on files the workflow wrote.
"""

import csv
import io
import json
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

from lomo.report import wilson_interval
from tasks.superglue.data import write_atomic

CLAIM_COLUMNS = ["claim", "verdict", "evidence"]


def load_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per fine-tuning run: model, method, task, seed, n, accuracy (reported epoch),
    its 95% Wilson interval, and the run folder."""
    rows = []
    for path in sorted(Path(results_dir).glob("superglue/*/*/*/seed*/metrics.json")):
        run = json.loads(path.read_text())
        accuracy = run["reported"]["eval"].get("accuracy")
        if accuracy is None:  # ReCoRD reports F1 only
            continue
        low, high = wilson_interval(accuracy, run["n_eval"])
        rows.append(
            {
                "model": run["model"],
                "method": run["method"],
                "task": run["task"],
                "seed": run["seed"],
                "n": run["n_eval"],
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
                "run": str(path.parent),
            }
        )
    columns = ["model", "method", "task", "seed", "n", "accuracy", "ci_low", "ci_high", "run"]
    return pd.DataFrame(rows, columns=columns)


def read_measurements(paths: list[str] | None, default: str) -> pd.DataFrame:
    """The `lomo memory` or `lomo throughput` CSVs at `paths` (None: every file matching the
    glob `default`, e.g. the published paper/tables/memory_*.csv), one frame with each row's
    source file; empty when there is none."""
    files = sorted(Path().glob(default)) if paths is None else [Path(p) for p in paths]
    frames = [pd.read_csv(path).assign(source=str(path)) for path in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def correctness(run_dir: str | Path) -> dict[str, bool]:
    """Example id -> whether the run's reported epoch predicted it correctly."""
    lines = (Path(run_dir) / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {json.dumps(r["idx"], sort_keys=True): r["pred"] == r["gold"] for r in records}


def paired_comparison(runs: pd.DataFrame, model: str, method_a: str, method_b: str) -> dict:
    """method_a against method_b on the examples both evaluated (same model, task and seed),
    pooled over tasks and seeds: mean accuracy difference over the (task, seed) cells and an
    exact McNemar test on the discordant examples (a right and b wrong, or the reverse)."""
    runs = runs[runs["model"] == model]
    a = runs[runs["method"] == method_a].set_index(["task", "seed"])
    b = runs[runs["method"] == method_b].set_index(["task", "seed"])
    cells = sorted(set(a.index) & set(b.index))
    a_only = b_only = both = 0
    for cell in cells:
        right_a, right_b = correctness(a.loc[cell, "run"]), correctness(b.loc[cell, "run"])
        for key in right_a.keys() & right_b.keys():
            a_only += right_a[key] and not right_b[key]
            b_only += right_b[key] and not right_a[key]
            both += 1
    discordant = a_only + b_only
    diff = (
        sum(a.loc[c, "accuracy"] - b.loc[c, "accuracy"] for c in cells) / len(cells)
        if cells
        else float("nan")
    )
    return {
        "cells": len(cells),
        "tasks": sorted({task for task, _ in cells}),
        "examples": both,
        "mean_diff": float(diff),
        "a_only": a_only,
        "b_only": b_only,
        "p_value": binomtest(a_only, discordant).pvalue if discordant else 1.0,
    }


def comparison_verdict(comparison: dict, at_least: bool, alpha: float = 0.05) -> str:
    """'a beats b' (at_least=False) or 'a >= b' (at_least=True), from a paired comparison."""
    if comparison["cells"] == 0:
        return "not measured"
    better, significant = comparison["mean_diff"] > 0, comparison["p_value"] < alpha
    if at_least:
        if comparison["mean_diff"] >= 0:
            return "supported"
        return "not supported" if significant else "inconclusive"
    if better and significant:
        return "supported"
    if not better and significant:
        return "not supported"
    return "inconclusive"


def inference_memory_claims(memory: pd.DataFrame, paper_overhead: float) -> list[dict]:
    """'LOMO memory ~ inference memory', one claim per LOMO row of the memory tables: what
    training adds to a forward pass (gradients + optimizer states) relative to the parameters,
    supported below 10%, with AdamW's overhead at the same model, dtype and AC as contrast."""
    if memory.empty or "lomo" not in set(memory.optimizer):
        evidence = f"no memory table with a LOMO row; paper: +{100 * paper_overhead:.1f}%"
        return [
            {
                "claim": "lomo memory ~ inference memory",
                "verdict": "not measured",
                "evidence": evidence,
            }
        ]
    claims = []
    for row in memory[memory.optimizer == "lomo"].to_dict("records"):
        setting = f"{row['model']}, {row['dtype']}, AC {row['ac']}"
        trained = row["gradients_gb"] + row["optimizer_states_gb"]
        overhead = trained / row["parameters_gb"]
        same_setting = (
            (memory.model == row["model"])
            & (memory.dtype == row["dtype"])
            & (memory.ac == row["ac"])
        )
        adamw = memory[same_setting & (memory.optimizer == "adamw")]
        contrast = ""
        if len(adamw):
            a = adamw.iloc[0]
            contrast = (
                f"; AdamW +{100 * (a.gradients_gb + a.optimizer_states_gb) / a.parameters_gb:.0f}%"
            )
        claims.append(
            {
                "claim": f"lomo memory ~ inference memory ({setting})",
                "verdict": "supported" if overhead < 0.1 else "not supported",
                "evidence": (
                    f"{row['dtype']}, seq {row['seq']}, batch {row['batch']}: gradients + "
                    f"optimizer states = {trained:.3f} GB on {row['parameters_gb']:.3f} GB of "
                    f"parameters (+{100 * overhead:.1f}%, threshold 10%){contrast}; "
                    f"paper +{100 * paper_overhead:.1f}%"
                ),
            }
        )
    return claims


def latex_table(df: pd.DataFrame, float_format: str = "{:.3g}") -> str:
    """A booktabs tabular of `df` (numbers formatted with `float_format`)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if pd.isna(value) else float_format.format(value)
        return str(value).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = [
        r"\begin{tabular}{" + "l" * len(df.columns) + "}",
        r"\toprule",
        " & ".join(cell(c) for c in df.columns) + r" \\",
        r"\midrule",
        *(" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str) -> list[Path]:
    """`out_dir/tables/name.csv` and `.tex`; returns the paths."""
    tables = Path(out_dir) / "tables"
    csv_path, tex_path = tables / f"{name}.csv", tables / f"{name}.tex"
    write_atomic(csv_path, df.to_csv(index=False))
    write_atomic(tex_path, latex_table(df))
    return [csv_path, tex_path]


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """`out_dir/figures/name.png` (150 dpi) and `.pdf`; returns the paths."""
    paths = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        # no creation date in the PDF: an unchanged figure reruns to identical bytes
        metadata = {"CreationDate": None} if suffix == "pdf" else None
        fig.savefig(buffer, format=suffix, dpi=150, bbox_inches="tight", metadata=metadata)
        path = Path(out_dir) / "figures" / f"{name}.{suffix}"
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def save_claims(rows: list[dict], out_dir: str | Path, name: str) -> Path:
    """`out_dir/tables/claims_{name}.csv` (claim, verdict, evidence), read by
    `lomo readme-results`; also prints each verdict."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CLAIM_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in CLAIM_COLUMNS} for row in rows)
    path = Path(out_dir) / "tables" / f"claims_{name}.csv"
    write_atomic(path, text.getvalue())
    for row in rows:
        print(f"- {row['claim']}: {row['verdict'].upper()}. {row['evidence']}")
    return path
