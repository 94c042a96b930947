"""The analysis notebooks on a small ci-like results folder, the helpers they use, and the
README Results section (rendered from, and traced back to, the tables)."""

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from paths import DATA_DIR, ROOT

from lomo.cli import main as lomo_main
from lomo.report import analysis, readme_results
from lomo.train import finetune as ft

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
        "sgd_smoothness_steps",
        "sgd_hessian",
        "optimizer_comparison",
        "distance_travelled",
    ):
        assert {f"{name}.csv", f"{name}.tex"} <= tables, name
    for name in (
        "compare_superglue",
        "sgd_implicit_batch",
        "sgd_smoothness",
        "sgd_smoothness_steps",
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
    # Each method claim's verdict follows its interval and the config's margin (ci.yaml: 2).
    evidence = {
        r["claim"]: r["evidence"]
        for r in csv.DictReader(open(out / "tables" / "claims_compare.csv"))
    }
    for claim, boundary in (
        ("lomo beats zero-shot (tiny-llama, val-split protocol)", 0.0),
        ("lomo not worse than lora (margin 2 points, tiny-llama, val-split protocol)", -2.0),
    ):
        low, high = map(float, re.search(r"95% CI \[(\S+), (\S+)\]", evidence[claim]).groups())
        expected = "supported" if low > boundary else "inconclusive"
        expected = "not supported" if high <= boundary else expected
        assert claims[claim] == expected, (claim, evidence[claim])
    executed = (tmp_path / "compare_to_paper.ipynb").read_text()
    assert "Figure 3 skipped" in executed  # the ci profile has no BoolQ/MultiRC runs
    assert "lomo memory ~ inference memory (tiny-llama, fp32, eager attention, AC no)" in claims
    measured = [c for c, v in claims.items() if v != "not measured"]
    assert any(c.startswith("sequential SGD steps") for c in measured)
    assert any(c.startswith("the loss surface is smooth where SGD moves") for c in measured)
    sgd = list(csv.DictReader(open(out / "tables" / "claims_sgd.csv")))
    assert all("measured at" in r["evidence"] for r in sgd if r["verdict"] != "not measured")
    assert any(c.startswith("fine-tuning stays near") for c in measured)

    superglue = pd.read_csv(out / "tables" / "compare_superglue.csv")
    rte = superglue[(superglue.method == "lomo") & (superglue.task == "rte")].iloc[0]
    metrics = json.loads(
        (ci_results / "superglue/tiny-llama/lomo/rte/seed42/metrics.json").read_text()
    )
    assert rte.accuracy == pytest.approx(metrics["reported"]["eval"]["accuracy"])
    assert rte.paper == pytest.approx(0.866)  # LLaMA-7B LOMO RTE, the nearest size
    assert rte.unlike_paper == "model tiny-llama, protocol val-split" and pd.isna(
        rte.ours_minus_paper
    )

    # The README section renders from these tables, and every number in it is in them.
    readme = tmp_path / "README.md"
    readme.write_text("# project\n")
    lomo_main(
        ["readme-results", "--tables", str(out / "tables"), "--readme", str(readme), "--write"]
    )
    assert_numbers_trace_to_tables(readme.read_text(), out / "tables")


@pytest.mark.slow
def test_compare_notebook_on_synthetic_figure3_runs(tmp_path):
    """The paper profile's Figure 3 design on synthetic run folders: LLaMA-13B LoRA and
    LoRA+LOMO at r 1, 2, 4, 8 and LOMO alone on BoolQ and MultiRC, plus zero-shot."""
    results = tmp_path / "results"
    llama = "huggyllama/llama-13b"
    nine = [(1, 1)] * 9 + [(0, 1)]
    for task in ("boolq", "multirc"):
        for method in ("zero-shot", "lomo"):
            write_run(results, method, task, nine, 42, llama, "paper")
        for method in ("lora", "lora+lomo"):
            for r in (1, 2, 4, 8):
                predictions = [(1, 1)] * r + [(0, 1)] * (10 - r)
                write_run(results, method, task, predictions, 42, llama, "paper", lora_r=r)
    out = tmp_path / "artifacts"
    run_notebook("compare_to_paper", results, out, tmp_path / "compare.ipynb")
    figure3 = pd.read_csv(out / "tables" / "compare_figure3.csv")
    assert len(figure3) == 2 * (1 + 4 + 4)
    row = figure3[(figure3.method == "lora+lomo") & (figure3.task == "multirc")]
    row = row[row.lora_r == 4].iloc[0]
    assert (row.accuracy, row.paper) == (0.4, pytest.approx(0.867))
    assert row.ours_minus_paper == pytest.approx(0.4 - 0.867)
    assert (out / "figures" / "compare_figure3.png").stat().st_size > 1000
    # Table 3 takes LoRA at r = 2 (2 of 10 right), not the other ranks pooled as seeds.
    superglue = pd.read_csv(out / "tables" / "compare_superglue.csv")
    lora = superglue[(superglue.method == "lora") & (superglue.task == "boolq")].iloc[0]
    assert (lora.n, lora.accuracy, lora.ours_minus_paper) == (10, 0.2, pytest.approx(0.2 - 0.871))


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


def write_run(
    root: Path,
    method: str,
    task: str,
    predictions: list[tuple[int, int]],
    seed: int = 1,
    model: str = "m",
    protocol: str = "val-split",
    template: str = "lomo",
    lora_r: int | None = None,
    gold_nlls: list[float] | None = None,
    option_scores: list[list[float]] | None = None,
    first_id: int = 0,
    flags: list[str] | None = None,
    **settings,
) -> Path:
    """A run folder as `lomo finetune` leaves it: metrics.json (with health `flags`),
    predictions.jsonl (pred, gold; example ids from `first_id` on; option scores from
    `gold_nlls` or `option_scores`, two answer tokens per option) and config.yaml (with
    `lora_r` for a LoRA method, and any further `settings`), in a variant folder named after
    the rank and settings."""
    extra = "".join(f"_{k}{v}" for k, v in settings.items())
    extra += "" if lora_r is None else f"_r{lora_r}"
    run = root / "superglue" / model.replace("/", "--") / (method + extra) / task / f"seed{seed}"
    run.mkdir(parents=True)
    correct = sum(p == g for p, g in predictions)
    metrics = {
        "model": model,
        "method": method,
        "task": task,
        "seed": seed,
        "protocol": protocol,
        "template": template,
        "n_eval": len(predictions),
        "flags": flags or [],
        # heldout runs are selected on dev: the same score here
        "reported": {
            "epoch": 1,
            **{split: {"accuracy": correct / len(predictions)} for split in ("eval", "dev")},
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"idx": first_id + i, "gold": g, "pred": p} for i, (p, g) in enumerate(predictions)]
    for row, nll in zip(rows, gold_nlls or [], strict=False):
        # two answer tokens per option, summed log-probabilities (reduction "sum")
        row["scores"] = [-2 * nll if option == row["gold"] else -9.0 for option in (0, 1)]
        row["n_tokens"] = [2, 2]
    for row, scores in zip(rows, option_scores or [], strict=False):
        row["scores"], row["n_tokens"] = scores, [2] * len(scores)
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"model": model, "method": method, "task": task, "seed": seed, "protocol": protocol}
    config |= {"template": template, "lora_r": 2 if lora_r is None else lora_r}  # 2: the default
    config |= settings
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def paired_predictions(both: int, a_only: int, b_only: int, neither: int):
    """(pred, gold) lists of methods a and b giving this paired 2x2 table."""
    a = [(1, 1)] * both + [(1, 1)] * a_only + [(0, 1)] * b_only + [(0, 1)] * neither
    b = [(1, 1)] * both + [(0, 1)] * a_only + [(1, 1)] * b_only + [(0, 1)] * neither
    return a, b


# Newcombe's paired interval (method 10), worked by hand for each table (both, a_only, b_only,
# neither): Wilson limits of p_a and p_b (z = 1.959964), phi = (both*neither - a_only*b_only)
# / sqrt of the product of the four margins, set to 0 for 0 <= cross <= n/2 and reduced by n/2
# above; low = d - sqrt((p_a-l_a)^2 - 2 phi (p_a-l_a)(u_b-p_b) + (u_b-p_b)^2), high alike.
HAND_INTERVALS = {
    # n 15, p_a 14/15 [.701835, .988133], p_b 6/15 [.198245, .642532], phi -9/sqrt(756)
    (5, 9, 1, 0): (0.533333, 0.147109, 0.759046),
    (5, 1, 9, 0): (-0.533333, -0.759046, -0.147109),
    # n 20, p_a .65 [.432854, .818808], p_b .6 [.386582, .781193], phi (44-10)/sqrt(8736)
    (10, 3, 2, 5): (0.05, -0.176624, 0.268708),
    # n 200, p_a .96 [.923068, .979594], p_b .965 [.929529, .982944], phi (944-100)/sqrt(2075206)
    (190, 2, 3, 5): (-0.005, -0.035156, 0.023769),
    # n 200, p_a .775 [.712259, .827376], p_b .95 [.910422, .972617], phi (550-100)/sqrt(13252500)
    (150, 5, 40, 5): (-0.175, -0.239009, -0.113378),
    # n 1000, p_a .96, p_b .962, phi (26600-500)/sqrt(40*960*38*962)
    (950, 10, 12, 28): (-0.002, -0.012106, 0.007938),
    # Newcombe (1998)'s example (a), published there as 0.0569 to 0.3404
    (36, 12, 2, 0): (0.2, 0.05693, 0.340428),
}


@pytest.mark.parametrize("table", list(HAND_INTERVALS))
def test_newcombe_paired_interval_equals_the_hand_computation(table):
    assert analysis.newcombe_paired_interval(*table) == pytest.approx(
        HAND_INTERVALS[table], abs=1e-6
    )


def test_claim_verdict_rule_and_its_boundaries():
    # superiority: boundary 0
    assert analysis.claim_verdict(0.001, 0.3, None) == "supported"
    assert analysis.claim_verdict(0.0, 0.3, None) == "inconclusive"  # low must exceed 0
    assert analysis.claim_verdict(-0.2, 0.0, None) == "not supported"  # high <= 0
    assert analysis.claim_verdict(-0.2, 0.001, None) == "inconclusive"
    # non-inferiority at 2 points: boundary -0.02
    assert analysis.claim_verdict(-0.019, 0.1, 0.02) == "supported"
    assert analysis.claim_verdict(-0.02, 0.1, 0.02) == "inconclusive"
    assert analysis.claim_verdict(-0.3, -0.02, 0.02) == "not supported"
    assert analysis.claim_verdict(-0.3, -0.019, 0.02) == "inconclusive"
    # a mean difference >= 0 alone is no longer "supported" (the old rule)
    assert analysis.claim_verdict(-0.177, 0.269, 0.02) == "inconclusive"
    assert analysis.claim_verdict(float("nan"), float("nan"), 0.02) == "not measured"
    with pytest.raises(ValueError, match="margin must be > 0"):
        analysis.claim_verdict(0.1, 0.2, 0.0)


SETTINGS = {"confidence": 0.95, "noninferiority_margin_points": 2}


@pytest.mark.parametrize(
    ("table", "noninferiority", "verdict"),
    [
        ((5, 9, 1, 0), False, "supported"),  # [+14.7, +75.9] > 0
        ((5, 1, 9, 0), False, "not supported"),  # [-75.9, -14.7] <= 0
        ((10, 3, 2, 5), False, "inconclusive"),  # [-17.7, +26.9] contains 0
        ((950, 10, 12, 28), True, "supported"),  # [-1.2, +0.8] > -2
        ((150, 5, 40, 5), True, "not supported"),  # [-23.9, -11.3] <= -2
        ((190, 2, 3, 5), True, "inconclusive"),  # [-3.5, +2.4] contains -2
        ((10, 3, 2, 5), True, "inconclusive"),  # mean +5 points, but the interval reaches -17.7
    ],
)
def test_method_claim_verdicts_on_hand_computed_intervals(tmp_path, table, noninferiority, verdict):
    a, b = paired_predictions(*table)
    write_run(tmp_path, "a", "rte", a)
    write_run(tmp_path, "b", "rte", b)
    runs = analysis.load_runs(tmp_path)
    claim = analysis.method_claim(runs, "m", "a", "b", SETTINGS, noninferiority)
    assert claim["verdict"] == verdict
    diff, low, high = HAND_INTERVALS[table]
    assert (claim["diff"], claim["low"], claim["high"]) == pytest.approx(
        (diff, low, high), abs=1e-6
    )
    assert claim["claim"] == (
        "a not worse than b (margin 2 points, m, val-split protocol)"
        if noninferiority
        else "a beats b (m, val-split protocol)"
    )
    assert f"CI [{100 * low:+.1f}, {100 * high:+.1f}]" in claim["evidence"]
    assert f"per task: rte {100 * diff:+.1f}; from one task: rte" in claim["evidence"]
    assert "McNemar" not in claim["evidence"]  # a pooled test of overlapping seeds: dropped


def accuracy_claim_interval(root: Path) -> dict:
    runs = analysis.load_runs(root)
    pairs = analysis.paired_examples(runs, "m", "a", "b", analysis.correctness)
    return analysis.pool_tasks(analysis.task_accuracy_differences(pairs))


def test_pooled_difference_over_tasks(tmp_path):
    # Hand combination of the (5, 9, 1, 0) and (10, 3, 2, 5) intervals above:
    # d = (.533333 + .05) / 2 = .291667; distances below .386224 and .226624, above .225713
    # and .218708. Two tasks (independent examples, root sum of squares over 2):
    # [.291667 - .447788 / 2, .291667 + .314296 / 2] = [.067765, .448812].
    for task, table in (("rte", (5, 9, 1, 0)), ("copa", (10, 3, 2, 5))):
        a, b = paired_predictions(*table)
        write_run(tmp_path, "a", task, a)
        write_run(tmp_path, "b", task, b)
    runs = analysis.load_runs(tmp_path)
    pairs = analysis.paired_examples(runs, "m", "a", "b", analysis.correctness)
    tasks = analysis.task_accuracy_differences(pairs).set_index("task")
    assert tasks.loc["rte", ["both", "a_only", "b_only", "neither"]].tolist() == [5, 9, 1, 0]
    assert tasks.loc["copa", ["both", "a_only", "b_only", "neither"]].tolist() == [10, 3, 2, 5]
    pooled = analysis.pool_tasks(tasks.reset_index())
    assert pooled["tasks"] == ["copa", "rte"]
    assert (pooled["diff"], pooled["low"], pooled["high"]) == pytest.approx(
        (0.291667, 0.067765, 0.448812), abs=1e-6
    )
    none = analysis.method_claim(runs, "m", "a", "c", SETTINGS, noninferiority=True)
    assert none["verdict"] == "not measured"


# Seeds of one task pool their (seed, example) pairs into one 2x2 table; Newcombe's interval
# of that table is widened by sqrt(design effect) of clustering the pairs by example id.
# Newcombe by hand (Wilson limits, phi as above):
# - (15, 12, 3, 5), n 35: p_a .771429 [.609827, .879341], p_b .514286 [.355688, .670058],
#   phi (75 - 36 - 17.5) / sqrt(27 * 8 * 18 * 17) = .083628: d .257143, [.042272, .441360]
# - (10, 18, 2, 0), n 30: p_a .933333 [.786765, .981523], p_b .4 [.245906, .576796],
#   phi -36 / sqrt(28 * 2 * 12 * 18) = -.327327: d .533333, [.269320, .709198]
# Design effect of a seed repeated on the same G = 15 examples: each example's cluster holds
# its difference twice, so the cluster-robust variance is G/(G-1) * sum (2u)^2 / (2G)^2
# = sum u^2 / (G (G-1)), against sum (2 u^2) / (2G (2G-1)) for 2G independent pairs:
# ratio (2G-1)/(G-1) = 29/14; widened: .533333 - 1.439246 * .264013 = .153353,
# .533333 + 1.439246 * .175865 = .786446.
def test_seeds_on_disjoint_examples_pool_as_one_table(tmp_path):
    for seed, table, first_id in ((1, (5, 9, 1, 0), 0), (2, (10, 3, 2, 5), 100)):
        a, b = paired_predictions(*table)
        write_run(tmp_path, "a", "rte", a, seed=seed, first_id=first_id)
        write_run(tmp_path, "b", "rte", b, seed=seed, first_id=first_id)
    pooled = accuracy_claim_interval(tmp_path)
    assert (pooled["diff"], pooled["low"], pooled["high"]) == pytest.approx(
        (0.257143, 0.042272, 0.441360), abs=1e-6
    )


def test_a_seed_repeated_on_the_same_examples_adds_no_evidence(tmp_path):
    a, b = paired_predictions(5, 9, 1, 0)
    for seed in (1, 2):
        write_run(tmp_path, "a", "rte", a, seed=seed)
        write_run(tmp_path, "b", "rte", b, seed=seed)
    pooled = accuracy_claim_interval(tmp_path)
    assert (pooled["diff"], pooled["low"], pooled["high"]) == pytest.approx(
        (0.533333, 0.153353, 0.786446), abs=1e-6
    )
    # (treated as 30 independent pairs it would be Newcombe's [.269320, .709198])
    claim = analysis.method_claim(analysis.load_runs(tmp_path), "m", "a", "b", SETTINGS, False)
    opening = "1 task(s) (rte), 2 seed(s), 30 (seed, example) pairs on 15 unique examples"
    assert claim["evidence"].startswith(opening)


def test_clustered_variance_and_design_effect_by_hand():
    # values 1, 2, 3, 6 (mean 3, deviations -2 -1 0 3) in clusters x x y y: cluster sums -3, 3;
    # G/(G-1) * (9 + 9) / 4^2 = 2.25. Independent: s^2 / n = (4 + 1 + 0 + 9) / 3 / 4 = 7/6.
    values, clusters = np.array([1.0, 2.0, 3.0, 6.0]), np.array(["x", "x", "y", "y"])
    assert analysis.clustered_variance_of_mean(values, clusters) == pytest.approx(2.25)
    assert analysis.clustered_variance_of_mean(values, np.arange(4)) == pytest.approx(7 / 6)
    assert analysis.design_effect(values, clusters) == pytest.approx(2.25 / (7 / 6))
    assert analysis.design_effect(np.ones(4), clusters) == 1.0  # nothing varies
    assert analysis.design_effect(np.array([1.0]), np.array(["x"])) == 1.0  # one pair


@pytest.mark.parametrize(
    ("diffs", "boundary", "deciding"),
    [
        # the laptop profile's LOMO - zero-shot per task (points): +6.4 pooled, -0.4 without WSC
        ({"copa": -0.6, "rte": 3.1, "wic": -3.7, "wsc": 26.8}, 0.0, ["wsc"]),
        ({"copa": 2.0, "rte": 3.0, "wic": 4.0}, 0.0, []),  # any two tasks keep it above 0
        ({"rte": 5.0}, 0.0, ["rte"]),  # one task: the estimate is that task's
        # non-inferiority at -2: mean 0; without any one task +0.5, -0.5 or 0, all above -2
        ({"copa": -1.0, "rte": 1.0, "wic": 0.0}, -2.0, []),
        # mean -2, at the boundary; only without copa (+1) is it above
        ({"copa": -8.0, "rte": 1.0, "wic": 1.0}, -2.0, ["copa"]),
    ],
)
def test_deciding_tasks_by_hand(diffs, boundary, deciding):
    tasks = pd.DataFrame({"task": list(diffs), "diff": list(diffs.values())})
    assert analysis.deciding_tasks(tasks, boundary) == deciding


def test_claim_evidence_names_the_deciding_task_and_one_class_runs(tmp_path):
    # wsc: a answers the majority option throughout (8 of 10 right), b the minority (2 of 10),
    # both flagged one class; copa: a and b alike. Pooled (60 + 0) / 2 = 30 points; without
    # wsc 0, so the estimate's sign rests on wsc.
    majority = [(1, 1)] * 8 + [(1, 0)] * 2
    minority = [(0, 1)] * 8 + [(0, 0)] * 2
    one_class = ["one class: 10 of 10 predictions are option 1"]
    write_run(tmp_path, "a", "wsc", majority, flags=one_class)
    write_run(tmp_path, "b", "wsc", minority, flags=[one_class[0].replace("option 1", "option 0")])
    same = [(1, 1)] * 5 + [(0, 1)] * 5
    write_run(tmp_path, "a", "copa", same)
    write_run(tmp_path, "b", "copa", same)
    runs = analysis.load_runs(tmp_path)
    assert runs.set_index(["method", "task"]).loc[("a", "wsc"), "flags"] == one_class[0]
    claim = analysis.method_claim(runs, "m", "a", "b", SETTINGS, noninferiority=False)
    assert claim["diff"] == pytest.approx(0.3)
    assert "per task: copa +0.0 wsc +60.0; from one task: wsc" in claim["evidence"]
    assert (
        "runs flagged one class (>= 90% one option): a wsc seed(s) 1, b wsc seed(s) 1"
        in (claim["evidence"])
    )
    copa_only = analysis.method_claim(runs[runs.task == "copa"], "m", "a", "b", SETTINGS, False)
    assert "flagged" not in copa_only["evidence"]


# Paired NLL reductions (baseline - method, nats per answer token) worked by hand: mean, sample
# sd, t(0.975, n - 1) * sd / sqrt(n) with t(0.975, 3) = 3.182446.
NLL_CASES = [
    # gains 1, .5, .5, 1: mean .75, sd .288675, half .459346
    ([1.0, 1.5, 2.0, 0.5], [2.0, 2.0, 2.5, 1.5], (0.75, 0.290654, 1.209346), "supported"),
    # gains .5, -.5, .2, -.4: mean -.05, sd .479583, half .763124
    ([1.0, 1.5, 2.0, 0.5], [1.5, 1.0, 2.2, 0.1], (-0.05, -0.813124, 0.713124), "inconclusive"),
    # gains -1, -.5, -.5, -1
    ([2.0, 2.0, 2.5, 1.5], [1.0, 1.5, 2.0, 0.5], (-0.75, -1.209346, -0.290654), "not supported"),
]


@pytest.mark.parametrize(("method_nll", "baseline_nll", "interval", "verdict"), NLL_CASES)
def test_nll_claim_on_hand_computed_paired_intervals(
    tmp_path, method_nll, baseline_nll, interval, verdict
):
    predictions = [(1, 1)] * 4
    write_run(tmp_path, "lomo", "rte", predictions, gold_nlls=method_nll)
    write_run(tmp_path, "zero-shot", "rte", predictions, gold_nlls=baseline_nll)
    runs = analysis.load_runs(tmp_path)
    claim = analysis.nll_claim(runs, "m", "lomo", "zero-shot", SETTINGS)
    assert (claim["diff"], claim["low"], claim["high"]) == pytest.approx(interval, abs=1e-6)
    assert claim["verdict"] == verdict
    assert claim["claim"] == (
        "lomo lowers the held-out gold answer's raw NLL per answer token below zero-shot, "
        "learning the answer strings included (m, val-split protocol)"
    )
    assert (
        f"{sum(baseline_nll) / 4:.3f} (zero-shot) -> {sum(method_nll) / 4:.3f} (lomo)"
        in (claim["evidence"])
    )


def test_nll_claim_pools_tasks_by_root_sum_of_squares(tmp_path):
    # rte: case 1 above (.75, half .459346); copa: case 2 (-.05, half .763124). Pooled:
    # d = .35, half = sqrt(.459346^2 + .763124^2) / 2 = .445353 -> [-.095353, .795353].
    for task, (method_nll, baseline_nll, _, _) in zip(("rte", "copa"), NLL_CASES, strict=False):
        write_run(tmp_path, "lomo", task, [(1, 1)] * 4, gold_nlls=method_nll)
        write_run(tmp_path, "zero-shot", task, [(1, 1)] * 4, gold_nlls=baseline_nll)
    claim = analysis.nll_claim(analysis.load_runs(tmp_path), "m", "lomo", "zero-shot", SETTINGS)
    assert (claim["diff"], claim["low"], claim["high"]) == pytest.approx(
        (0.35, -0.095353, 0.795353), abs=1e-6
    )
    assert claim["verdict"] == "inconclusive"
    missing = analysis.nll_claim(analysis.load_runs(tmp_path), "m", "lora", "zero-shot", SETTINGS)
    assert missing["verdict"] == "not measured"


def test_nll_claim_clusters_seeds_by_example(tmp_path):
    # NLL case 1 twice, seeds 1 and 2 on the same 4 examples: 8 pairs, 4 clusters with sums
    # 2, 1, 1, 2 (deviations .5 -.5 -.5 .5): variance 4/3 * 1 / 8^2 = 1/48, t(0.975, 3) *
    # sqrt(1/48) = .459346, the one seed's interval. As 8 independent pairs: s^2 = .5 / 7,
    # t(0.975, 7) = 2.364624 * sqrt(.5 / 7 / 8) = .223432, half as wide.
    method_nll, baseline_nll, interval, _ = NLL_CASES[0]
    for seed in (1, 2):
        write_run(tmp_path, "lomo", "rte", [(1, 1)] * 4, seed=seed, gold_nlls=method_nll)
        write_run(tmp_path, "zero-shot", "rte", [(1, 1)] * 4, seed=seed, gold_nlls=baseline_nll)
    claim = analysis.nll_claim(analysis.load_runs(tmp_path), "m", "lomo", "zero-shot", SETTINGS)
    assert (claim["diff"], claim["low"], claim["high"]) == pytest.approx(interval, abs=1e-6)
    assert "8 (seed, example) pairs on 4 unique examples" in claim["evidence"]


def test_gold_nll_among_options_by_hand(tmp_path):
    # -log P(gold | options) = log(1 + sum over other options of exp(their total - gold's)):
    # totals -2, -3 -> log(1 + e^-1) = .313262 for gold 0, log(1 + e) = 1.313262 for gold 1.
    # "mean" scores are per token: -1 and -1.5 over 2 tokens each are the same totals; over
    # 2 and 4 tokens they are -2 and -6: log(1 + e^-4) = .018150.
    rows = [
        {"idx": 0, "gold": 0, "pred": 0, "scores": [-2.0, -3.0], "n_tokens": [2, 2]},
        {"idx": 1, "gold": 1, "pred": 0, "scores": [-2.0, -3.0], "n_tokens": [2, 2]},
    ]
    for name, reduction, scores, n_tokens, expected in (
        ("sum", "sum", [-2.0, -3.0], [2, 2], [0.313262, 1.313262]),
        ("mean", "mean", [-1.0, -1.5], [2, 2], [0.313262, 1.313262]),
        ("mean_lengths", "mean", [-1.0, -1.5], [2, 4], [0.018150, 4.018150]),
    ):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"reduction: {reduction}\n")
        lines = [json.dumps(r | {"scores": scores, "n_tokens": n_tokens}) for r in rows]
        (run / "predictions.jsonl").write_text("\n".join(lines) + "\n")
        nll = analysis.gold_nll_among_options_by_example(run)
        assert [nll["0"], nll["1"]] == pytest.approx(expected, abs=1e-6), name


def test_learning_the_answer_strings_lowers_only_the_raw_nll(tmp_path):
    # LOMO adds 1, 2, 3, 2 nats to both options of each example: the raw NLL per token falls
    # by .5, 1, 1.5, 1 (mean 1), while P(gold | options) is unchanged.
    zero_shot = [[-6.0, -7.0], [-8.0, -6.0], [-5.0, -9.0], [-7.0, -7.5]]
    lomo = [[a + gain, b + gain] for (a, b), gain in zip(zero_shot, (1, 2, 3, 2), strict=True)]
    predictions = [(0, 0), (1, 1), (0, 0), (0, 0)]
    write_run(tmp_path, "zero-shot", "rte", predictions, option_scores=zero_shot)
    write_run(tmp_path, "lomo", "rte", predictions, option_scores=lomo)
    runs = analysis.load_runs(tmp_path)
    raw = analysis.nll_claim(runs, "m", "lomo", "zero-shot", SETTINGS)
    options = analysis.nll_claim(runs, "m", "lomo", "zero-shot", SETTINGS, among_options=True)
    assert raw["diff"] == pytest.approx(1.0) and raw["verdict"] == "supported"
    assert options["diff"] == pytest.approx(0.0, abs=1e-9) and options["verdict"] != "supported"
    assert options["claim"] == (
        "lomo lowers the held-out gold answer's NLL among the options, -log P(gold | options), "
        "below zero-shot (m, val-split protocol)"
    )
    assert "-log P(gold | options)" in options["evidence"]


def test_load_runs_selects_the_grid_point_the_protocol_reports(tmp_path):
    # Two lr grid points of one LOMO cell (the paper protocol selects the best on eval), and
    # LoRA at two ranks (not a grid: two cells).
    write_run(tmp_path, "lomo", "rte", [(1, 1)] * 6 + [(0, 1)] * 4, lr=0.05)
    write_run(tmp_path, "lomo", "rte", [(1, 1)] * 7 + [(0, 1)] * 3, lr=0.03)
    for r in (1, 2):
        write_run(tmp_path, "lora", "rte", [(1, 1)] * 5 + [(0, 1)] * 5, lora_r=r)
    runs = analysis.load_runs(tmp_path)
    lomo = runs[runs.method == "lomo"].iloc[0]
    assert (lomo.accuracy, lomo.grid_points, lomo.chosen) == (0.7, 2, "lr=0.03")
    assert lomo.run.endswith("lomo_lr0.03/rte/seed1")
    lora = runs[runs.method == "lora"]
    assert sorted(lora.lora_r) == [1, 2] and set(lora.grid_points) == {1}


def test_a_claim_is_per_protocol(tmp_path):
    a, b = paired_predictions(5, 9, 1, 0)
    for protocol in ("paper", "heldout"):
        write_run(tmp_path / protocol, "a", "rte", a, protocol=protocol)
        write_run(tmp_path / protocol, "b", "rte", b, protocol=protocol)
    runs = pd.concat([analysis.load_runs(tmp_path / d) for d in ("paper", "heldout")])
    with pytest.raises(ValueError, match="one claim per protocol"):
        analysis.method_claim(runs, "m", "a", "b", SETTINGS, noninferiority=False)
    paper = analysis.method_claim(runs[runs.protocol == "paper"], "m", "a", "b", SETTINGS, False)
    assert paper["claim"] == "a beats b (m, paper protocol)" and paper["examples"] == 15


def test_claim_settings_from_the_profile_config(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "profile: laptop\nclaims: {confidence: 0.95, noninferiority_margin_points: 2}\n"
    )
    (tmp_path / "paper.yaml").write_text(
        "profile: paper\nclaims: {noninferiority_margin_points: 1}\n"
    )
    (tmp_path / "ci.yaml").write_text("profile: ci\n")
    assert analysis.claim_settings("laptop", tmp_path) == SETTINGS
    assert analysis.claim_settings("ci", tmp_path) == SETTINGS  # inherits config.yaml's
    assert analysis.claim_settings("paper", tmp_path)["noninferiority_margin_points"] == 1
    (tmp_path / "config.yaml").write_text("profile: laptop\n")
    with pytest.raises(ValueError, match="lacks"):
        analysis.claim_settings("laptop", tmp_path)
    declared = analysis.claim_settings("laptop", ROOT / "config")  # the repository's block
    assert {k: declared[k] for k in SETTINGS} == SETTINGS


def test_paper_gap_only_for_the_papers_model_protocol_and_template(tmp_path):
    # RTE: 3 of 4 right. LLaMA-7B under the paper's protocol and template is like for like;
    # SmolLM2 (another model), LLaMA-7B under val-split and under lm-eval prompts are not.
    right = [(1, 1), (1, 1), (1, 1), (0, 1)]
    write_run(tmp_path, "lomo", "rte", right, model="huggyllama/llama-7b", protocol="paper")
    write_run(tmp_path, "lomo", "rte", right, model="smollm2-135m", protocol="val-split")
    write_run(tmp_path / "b", "lomo", "rte", right, model="huggyllama/llama-7b")
    write_run(
        tmp_path / "c",
        "lomo",
        "rte",
        right,
        model="huggyllama/llama-7b",
        protocol="paper",
        template="lm-eval",
    )
    runs = pd.concat([analysis.load_runs(tmp_path / d) for d in (".", "b", "c")])
    reference = pd.read_csv(ROOT / "paper" / "reference" / "table3_superglue.csv")
    table = analysis.superglue_comparison(runs, reference)
    rte = table[table.task == "rte"].set_index(["model", "protocol", "template"])
    like = rte.loc[("huggyllama/llama-7b", "paper", "lomo")]
    assert like.ours_minus_paper == pytest.approx(0.75 - 0.866)  # LLaMA-7B LOMO RTE 86.6
    assert (like.unlike_paper, like.paper_model, like.paper_protocol) == ("", "LLaMA-7B", "paper")
    expected = {
        ("smollm2-135m", "val-split", "lomo"): "model smollm2-135m, protocol val-split",
        ("huggyllama/llama-7b", "val-split", "lomo"): "protocol val-split",
        ("huggyllama/llama-7b", "paper", "lm-eval"): "template lm-eval",
    }
    for key, differs in expected.items():
        row = rte.loc[key]
        assert row.unlike_paper == differs and pd.isna(row.ours_minus_paper), key
        assert row.paper == pytest.approx(0.866) and row.paper_model == "LLaMA-7B"

    # The README shows the gap for the like-for-like row only; the others say what differs.
    tables = tmp_path / "tables"
    analysis.save_table(table, tmp_path, "compare_superglue")
    lines = readme_results.superglue_lines(
        readme_results.read_csv(tables / "compare_superglue.csv")
    )
    like_line = next(
        x for x in lines if x.startswith("| huggyllama/llama-7b | paper (lomo) | lomo | rte |")
    )
    smol_line = next(
        x for x in lines if x.startswith("| smollm2-135m | val-split (lomo) | lomo | rte |")
    )
    assert like_line.endswith("| 75.0 [30.1, 95.4] | 86.6 (LLaMA-7B, paper) | -11.6 |")
    assert smol_line.endswith(
        "| 86.6 (LLaMA-7B, paper) | not like for like: model smollm2-135m, protocol val-split |"
    )
    gaps = [x.split(" | ")[3] for x in lines if x.endswith("| -11.6 |")]
    assert gaps == ["avg", "rte"]  # the like-for-like rows only (avg: over its one task)
    assert_numbers_trace_to_tables(
        "\n".join([readme_results.START, *lines, readme_results.END]), tables
    )


def test_figure3_comparison_from_lora_rank_runs(tmp_path):
    reference = pd.read_csv(ROOT / "paper" / "reference" / "figure3_lora_lomo.csv")
    assert len(reference) == 18 and set(reference.lora_r.dropna()) == {1, 2, 4, 8}
    empty = analysis.figure3_comparison(analysis.load_runs(tmp_path), reference)
    assert empty.empty
    # LLaMA-13B LoRA+LOMO r=4 on BoolQ, 9 of 10 right, two seeds (paper 88.0); LoRA r=1 on
    # MultiRC, 4 of 5 (paper 85.5) on SmolLM2 (not like for like); LOMO alone; an RTE LoRA run
    # (not in Figure 3); a LoRA run of another rank on BoolQ that the paper has no bar for.
    llama = "huggyllama/llama-13b"
    nine = [(1, 1)] * 9 + [(0, 1)]
    for seed in (1, 2):
        write_run(tmp_path, "lora+lomo", "boolq", nine, seed, llama, "paper", lora_r=4)
    write_run(tmp_path, "lora", "multirc", [(1, 1)] * 4 + [(0, 1)], model="smollm2-135m", lora_r=1)
    write_run(tmp_path, "lomo", "boolq", nine, model=llama, protocol="paper")
    write_run(tmp_path, "lora", "rte", nine, model=llama, protocol="paper", lora_r=2)
    write_run(tmp_path, "lora", "boolq", nine, model=llama, protocol="paper", lora_r=16)
    table = analysis.figure3_comparison(analysis.load_runs(tmp_path), reference)
    rows = table.set_index(["method", "task", "lora_r"])
    assert sorted(rows.index) == [
        ("lomo", "boolq", 0),
        ("lora", "boolq", 16),
        ("lora", "multirc", 1),
        ("lora+lomo", "boolq", 4),
    ]
    both = rows.loc[("lora+lomo", "boolq", 4)]
    assert (both.seeds, both.n, both.accuracy, both.paper) == (2, 20, 0.9, pytest.approx(0.88))
    assert both.unlike_paper == "" and both.ours_minus_paper == pytest.approx(0.9 - 0.88)
    assert rows.loc[("lomo", "boolq", 0)].paper == pytest.approx(0.873)
    smol = rows.loc[("lora", "multirc", 1)]
    assert smol.paper == pytest.approx(0.855) and pd.isna(smol.ours_minus_paper)
    assert smol.unlike_paper == "model smollm2-135m, protocol val-split"
    assert pd.isna(rows.loc[("lora", "boolq", 16)].paper)


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
    columns = "model,protocol,template,method,task,seeds,n,accuracy,ci_low,ci_high,paper_model,"
    columns += "paper_protocol,paper,unlike_paper,ours_minus_paper\n"
    (tables / "compare_superglue.csv").write_text(
        columns + "m,paper,lomo,lomo,rte,1,100,0.62,0.52,0.71,LLaMA-7B,paper,0.866,,-0.246\n"
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
        "| m | paper (lomo) | lomo | rte | 100 | 62.0 [52.0, 71.0] "
        "| 86.6 (LLaMA-7B, paper) | -24.6 |" in text
    )
    assert_numbers_trace_to_tables(text, tables)
    assert (
        "Each verdict is per claim: no family-wise correction is made across this table's " in text
    )
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


def test_superglue_comparison_gives_the_spread_over_seeds(tmp_path):
    # RTE at 6/10, 7/10, 8/10 right over seeds 1-3 (sd 10 points by hand), COPA at 5/10 each
    # (sd 0); per seed the average over the two is .55, .60, .65: sd 5 points.
    for seed, right in zip((1, 2, 3), (6, 7, 8), strict=True):
        write_run(tmp_path, "lomo", "rte", [(1, 1)] * right + [(0, 1)] * (10 - right), seed=seed)
        write_run(tmp_path, "lomo", "copa", [(1, 1)] * 5 + [(0, 1)] * 5, seed=seed)
    reference = pd.DataFrame(
        [{"size": "7B", "method": "LOMO", "task": t, "accuracy": 80.0} for t in ("rte", "copa")]
    )
    table = analysis.superglue_comparison(analysis.load_runs(tmp_path), reference)
    sd = table.set_index("task").seed_sd
    assert sd["rte"] == pytest.approx(0.10)
    assert sd["copa"] == pytest.approx(0.0)
    assert sd["avg"] == pytest.approx(0.05)
    assert table.set_index("task").loc["rte", "accuracy"] == pytest.approx(0.7)
    lines = readme_results.superglue_lines(
        table.astype(object).where(table.notna(), "").astype(str).to_dict("records")
    )
    assert any("70.0 [" in line and "(sd 10.0, 3 seeds)" in line for line in lines)


def test_load_runs_reads_only_the_given_runs(tmp_path):
    """A workflow passes its own runs: a stale run folder of an earlier config is not read."""
    kept = write_run(tmp_path, "lomo", "rte", [(1, 1)] * 3 + [(0, 1)])
    write_run(tmp_path, "lomo", "cb", [(0, 1)] * 4)  # left over from another config
    assert set(analysis.load_runs(tmp_path).task) == {"rte", "cb"}
    only = analysis.load_runs(tmp_path, [str(kept / "metrics.json")])
    assert list(only.task) == ["rte"] and list(only.accuracy) == [0.75]


@pytest.mark.parametrize(
    ("table", "text", "where"),
    [
        ("claims_compare.csv", "claim,verdict,evidence\nlomo beats zero-shot,supported\n", ":2:"),
        ("claims_compare.csv", "claim,verdict,evidence\na,b,c\nd,e,f,g\n", ":3:"),
        ("claims_compare.csv", "", "empty"),
        ("claims_compare.csv", "claim,verdict\na,b\n", "lacks the columns"),
    ],
)
def test_a_malformed_table_is_refused_and_the_readme_left_alone(tmp_path, table, text, where):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / table).write_text(text)
    readme = tmp_path / "README.md"
    readme.write_text("# project\n")
    with pytest.raises(SystemExit, match=where) as stop:
        lomo_main(["readme-results", "--tables", str(tables), "--readme", str(readme), "--write"])
    assert str(stop.value).count("\n") == 0
    assert readme.read_text() == "# project\n"


def test_claims_table_states_its_intervals_are_per_claim():
    rows = [
        {"claim": "a beats b", "verdict": "supported", "evidence": "+3.0 points, 95% CI [+1, +5]"},
        {"claim": "memory", "verdict": "supported", "evidence": "+1.9%, threshold 10%"},
    ]
    assert readme_results.claim_lines(rows)[-1] == (
        "Each 95% CI above is per claim: no family-wise correction is made across this table's "
        "claims (2), so with several claims some verdict can be reached by chance."
    )
