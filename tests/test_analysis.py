"""The analysis notebooks on a small ci-like results folder, the helpers they use, and the
README Results section (rendered from, and traced back to, the tables)."""

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lomo import analysis, readme_results
from lomo import finetune as ft
from lomo.cli import main as lomo_main
from tests.superglue_paths import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "data" / "analysis"  # lomo memory / throughput CSVs
NOTEBOOKS = ("compare_to_paper", "sgd_claims", "memory_throughput")
MEASUREMENTS = json.dumps(
    {
        "memory_tables": [str(FIXTURES / "memory.csv")],
        "throughput_tables": [str(FIXTURES / "throughput.csv")],
    }
)


def tiny_run(results: Path, method: str, task: str, **overrides) -> Path:
    config = ft.FinetuneConfig(
        model="tiny-llama",
        method=method,
        task=task,
        data_dir=str(DATA_DIR),
        protocol="val-split",
        train_size=8,
        test_size=8,
        max_length=64,
        epochs=1,
        global_batch=4,
        micro_batch=4,
        lr=1e-2,
        lora_lr=1e-3,
        eval_batch=8,
        **overrides,
    )
    out = results / "superglue" / "tiny-llama" / method / task / "seed42"
    ft.finetune(config, out)
    return out


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory) -> Path:
    """results/{profile}/ as the ci profile lays it out (one task), plus `lomo sgd-claims` on a
    "pretrained" model (the LOMO run's saved weights), its random twin and tiny-llama."""
    results = tmp_path_factory.mktemp("results") / "ci"
    for method in ("zero-shot", "lora"):
        tiny_run(results, method, "rte")
    lomo_run = tiny_run(results, "lomo", "rte", save_model=True)
    tuned = lomo_run / "model"
    lomo_main(
        [
            "sgd-claims",
            "--models",
            str(tuned),
            f"{tuned}:random",
            "tiny-llama",
            "--data-dir",
            str(DATA_DIR),
            "--max-length",
            "48",
            "--pairs",
            "1",
            "--lrs",
            "0.001",
            "0.01",
            "--batch-size",
            "2",
            "--epsilons",
            "0.01",
            "--directions",
            "1",
            "--power-iterations",
            "2",
            "--distance-runs",
            str(lomo_run),
            "--out",
            str(results / "analysis" / "sgd_claims.json"),
        ]
    )
    return results


def run_notebook(notebook: str, results: Path, out_dir: Path, executed: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "lomo.cli", "notebook"),
            *(str(ROOT / "analysis" / f"{notebook}.ipynb"), str(executed)),
            *("-p", "results_dir", str(results), "-p", "profile", "ci", "-p", "out_dir"),
            str(out_dir),
            *(("-y", MEASUREMENTS) if notebook != "sgd_claims" else ()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_notebooks_produce_their_tables_and_figures(ci_results, tmp_path):
    out = tmp_path / "artifacts"
    for notebook in NOTEBOOKS:
        run_notebook(notebook, ci_results, out, tmp_path / f"{notebook}.ipynb")
    tables = {p.name for p in (out / "tables").iterdir()}
    figures = {p.name for p in (out / "figures").iterdir()}
    for name in (
        "compare_superglue",
        "compare_memory",
        "compare_throughput",
        "sgd_implicit_batch",
        "sgd_smoothness",
        "sgd_hessian",
        "optimizer_comparison",
        "distance_travelled",
    ):
        assert {f"{name}.csv", f"{name}.tex"} <= tables, name
    for name in (
        "compare_superglue",
        "sgd_implicit_batch",
        "sgd_smoothness",
        "optimizer_comparison",
        "distance_travelled",
        "memory_breakdown",
        "throughput_tgs",
    ):
        assert {f"{name}.png", f"{name}.pdf"} <= figures, name
    assert all((out / "figures" / f).stat().st_size > 1000 for f in figures)

    claims = {
        r["claim"]: r["verdict"]
        for name in ("compare", "sgd")
        for r in csv.DictReader(open(out / "tables" / f"claims_{name}.csv"))
    }
    assert claims["lomo beats zero-shot (tiny-llama)"] in (
        "supported",
        "inconclusive",
        "not supported",
    )
    assert "lomo memory ~ inference memory (tiny-llama, fp32, AC no)" in claims
    measured = [c for c, v in claims.items() if v != "not measured"]
    assert any(c.startswith("sequential SGD steps") for c in measured)
    assert any(c.startswith("the pretrained loss surface is smooth") for c in measured)
    assert any(c.startswith("fine-tuning stays near") for c in measured)

    superglue = pd.read_csv(out / "tables" / "compare_superglue.csv")
    rte = superglue[(superglue.method == "lomo") & (superglue.task == "rte")].iloc[0]
    metrics = json.loads(
        (ci_results / "superglue/tiny-llama/lomo/rte/seed42/metrics.json").read_text()
    )
    assert rte.accuracy == pytest.approx(metrics["reported"]["eval"]["accuracy"])
    assert rte.paper == pytest.approx(0.866)  # LLaMA-7B LOMO RTE, the nearest size

    # The README section renders from these tables, and every number in it is in them.
    readme = tmp_path / "README.md"
    readme.write_text("# project\n")
    lomo_main(
        ["readme-results", "--tables", str(out / "tables"), "--readme", str(readme), "--write"]
    )
    assert_numbers_trace_to_tables(readme.read_text(), out / "tables")


@pytest.mark.slow
def test_notebooks_skip_missing_memory_and_throughput_tables(tmp_path):
    """memory_throughput on a results folder without any CSV: a note, and the paper's figures."""
    executed = tmp_path / "memory_throughput.ipynb"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "lomo.cli", "notebook"),
            *(str(ROOT / "analysis" / "memory_throughput.ipynb"), str(executed)),
            *("-p", "results_dir", str(tmp_path / "empty"), "-p", "out_dir", str(tmp_path)),
            *("-y", "{memory_tables: [], throughput_tables: []}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "our part is skipped" in executed.read_text()
    assert (tmp_path / "figures" / "memory_breakdown.png").is_file()


# --- helpers ---------------------------------------------------------------------------------


def write_run(root: Path, method: str, task: str, predictions: list[tuple[int, int]]) -> None:
    run = root / "superglue" / "m" / method / task / "seed1"
    run.mkdir(parents=True)
    correct = sum(p == g for p, g in predictions)
    metrics = {
        "model": "m",
        "method": method,
        "task": task,
        "seed": 1,
        "n_eval": len(predictions),
        "reported": {"epoch": 1, "eval": {"accuracy": correct / len(predictions)}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"idx": i, "gold": g, "pred": p} for i, (p, g) in enumerate(predictions)]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_comparison_counts_discordant_examples(tmp_path):
    # a right where b is wrong on 9 examples, the reverse on 1: McNemar p = 2 * P(X <= 1).
    write_run(tmp_path, "a", "rte", [(1, 1)] * 9 + [(0, 1)] + [(1, 1)] * 5)
    write_run(tmp_path, "b", "rte", [(0, 1)] * 9 + [(1, 1)] + [(1, 1)] * 5)
    runs = analysis.load_runs(tmp_path)
    c = analysis.paired_comparison(runs, "m", "a", "b")
    assert (c["cells"], c["examples"], c["a_only"], c["b_only"]) == (1, 15, 9, 1)
    assert c["mean_diff"] == pytest.approx(8 / 15)
    assert c["p_value"] == pytest.approx(2 * (1 + 10) / 2**10)
    assert analysis.comparison_verdict(c, at_least=False) == "supported"
    reverse = analysis.paired_comparison(runs, "m", "b", "a")
    assert analysis.comparison_verdict(reverse, at_least=True) == "not supported"
    none = analysis.paired_comparison(runs, "m", "a", "c")
    assert analysis.comparison_verdict(none, at_least=True) == "not measured"


def test_inference_memory_claims_per_model_dtype_and_ac():
    # Hand numbers: LOMO adds 0.2 GB to 10 GB (2%); AdamW adds 10 + 20 GB (300%) in fp32 and,
    # with fp32 master weights and moments, 5 + 30 GB to 5 GB (700%) in bf16.
    columns = ["model", "dtype", "ac", "optimizer", "seq", "batch"]
    columns += ["parameters_gb", "gradients_gb", "optimizer_states_gb"]
    memory = pd.DataFrame(
        [
            ["m", "fp32", "no", "lomo", 8, 2, 10.0, 0.2, 0.0],
            ["m", "fp32", "no", "adamw", 8, 2, 10.0, 10.0, 20.0],
            ["m", "bf16", "no", "lomo", 8, 2, 5.0, 1.0, 0.0],
            ["m", "bf16", "no", "adamw", 8, 2, 5.0, 5.0, 30.0],
        ],
        columns=columns,
    )
    claims = {c["claim"]: c for c in analysis.inference_memory_claims(memory, 0.019)}
    fp32 = claims["lomo memory ~ inference memory (m, fp32, AC no)"]
    bf16 = claims["lomo memory ~ inference memory (m, bf16, AC no)"]
    assert fp32["verdict"] == "supported" and "(+2.0%" in fp32["evidence"]
    assert "AdamW +300%" in fp32["evidence"] and "paper +1.9%" in fp32["evidence"]
    assert bf16["verdict"] == "not supported" and "(+20.0%" in bf16["evidence"]
    assert "AdamW +700%" in bf16["evidence"]
    none = analysis.inference_memory_claims(memory[memory.optimizer == "adamw"], 0.019)
    assert [c["verdict"] for c in none] == ["not measured"]


def test_read_measurements_from_paths_or_the_published_glob(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("model,census_peak_gb\nm,1\n")
    (tmp_path / "b.csv").write_text("model,census_peak_gb\nn,2\n")
    table = analysis.read_measurements([tmp_path / "a.csv", tmp_path / "b.csv"], "unused")
    assert table.model.tolist() == ["m", "n"]
    assert table.source.tolist() == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert analysis.read_measurements([], "*.csv").empty
    monkeypatch.chdir(tmp_path)
    assert analysis.read_measurements(None, "b*.csv").model.tolist() == ["n"]


# --- README Results section ------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.-])[-+]?\d+(?:\.\d+)?(?![\w.])")


def table_numbers(tables: Path) -> set[str]:
    """Every number in the tables' cells, as written and as a one-decimal percentage."""
    found = set()
    for path in tables.glob("*.csv"):
        for row in csv.DictReader(open(path)):
            for value in row.values():
                found.update(NUMBER.findall(value))
                try:
                    found.add(f"{100 * float(value):.1f}")
                except ValueError:
                    pass
    return found


def assert_numbers_trace_to_tables(readme: str, tables: Path) -> None:
    section = readme.split(readme_results.START)[1].split(readme_results.END)[0]
    lines = section.splitlines()
    rows = [
        line
        for i, line in enumerate(lines)
        if line.startswith("| ") and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))
    ]
    assert rows, "the section has no table rows"
    known = table_numbers(tables)
    for row in rows:
        missing = [n for n in NUMBER.findall(row) if n.lstrip("+") not in known and n not in known]
        assert not missing, f"{missing} in {row!r} are not in {tables}"


def test_readme_section_round_trip_and_stale_check(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    columns = "model,method,task,seeds,n,accuracy,ci_low,ci_high,paper_model,paper,diff\n"
    (tables / "compare_superglue.csv").write_text(
        columns + "m,lomo,rte,1,100,0.62,0.52,0.71,LLaMA-7B (nearest),0.866,-0.246\n"
    )
    (tables / "claims_compare.csv").write_text(
        "claim,verdict,evidence\nlomo beats zero-shot (m),supported,+12.0 points (p = 0.003)\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\ntext\n")
    args = ["readme-results", "--tables", str(tables), "--readme", str(readme)]
    lomo_main([*args, "--write"])
    text = readme.read_text()
    assert text.startswith("# project\n\ntext\n\n" + readme_results.START)
    assert (
        "| m | lomo | rte | 100 | 62.0 [52.0, 71.0] | 86.6 | LLaMA-7B (nearest) | -24.6 |" in text
    )
    assert_numbers_trace_to_tables(text, tables)
    lomo_main([*args, "--check"])  # up to date
    lomo_main([*args, "--write"])
    assert readme.read_text() == text  # idempotent

    readme.write_text(text.replace("62.0 [52.0", "63.0 [52.0"))  # a number typed by hand
    with pytest.raises(SystemExit, match="differs"):
        lomo_main([*args, "--check"])
    with pytest.raises(AssertionError, match="63.0"):
        assert_numbers_trace_to_tables(readme.read_text(), tables)


def test_repository_readme_matches_the_published_tables(monkeypatch):
    monkeypatch.chdir(ROOT)  # the section names its tables folder relative to the repository
    lomo_main(["readme-results", "--check"])
    readme = (ROOT / "README.md").read_text()
    if (ROOT / "paper" / "tables" / readme_results.SUPERGLUE).exists():
        assert_numbers_trace_to_tables(readme, ROOT / "paper" / "tables")


def test_unchanged_figures_rerun_to_identical_bytes(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    first = [p.read_bytes() for p in analysis.save_figure(fig, tmp_path, "line")]
    time.sleep(1.1)  # PDF creation dates have one-second resolution
    again = [p.read_bytes() for p in analysis.save_figure(fig, tmp_path, "line")]
    plt.close(fig)
    assert first == again
