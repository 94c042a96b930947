"""`lomo table`: grid selection by the protocol's rule, rows per distinguishing setting, the
paper's value only beside the paper's design (hand-built runs)."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from lomo.report import tables as report


def write_run(root: Path, name: str, eval_accs: list[float], dev_accs=None, **config) -> str:
    """A finished run folder: one reported epoch chosen the way finetune chooses it."""
    config = {
        "model": "m",
        "method": "lomo",
        "task": "rte",
        "seed": 42,
        "protocol": "paper",
        "lr": 0.03,
        "warmup_ratio": 0.1,
        "lora_r": 2,
        "data_dir": f"/data/{name}",
        **config,
    }
    per_epoch = [
        {
            "epoch": i + 1,
            "eval": {"accuracy": acc},
            **({"dev": {"accuracy": dev_accs[i]}} if dev_accs else {}),
        }
        for i, acc in enumerate(eval_accs)
    ]
    key = "dev" if config["protocol"] == "heldout" else "eval"
    reported = max(per_epoch, key=lambda e: e[key]["accuracy"])
    metrics = {k: config[k] for k in ("model", "method", "task", "seed", "protocol")}
    metrics |= {"n_eval": 100, "reported": reported, "per_epoch": per_epoch}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder / "metrics.json")


def test_paper_rule_takes_the_best_eval_point_of_the_grid(tmp_path):
    runs = [
        write_run(tmp_path, "a", [0.60, 0.70], lr=0.05, warmup_ratio=0.05),
        write_run(tmp_path, "b", [0.80, 0.75], lr=0.05, warmup_ratio=0.1),  # best: 0.80
        write_run(tmp_path, "c", [0.65, 0.78], lr=0.03, warmup_ratio=0.1),
    ]
    (row,) = report.collect(runs, {}, ["lr", "warmup_ratio"])
    assert (row["value"], row["epoch"], row["grid_points"]) == (0.80, 1, 3)
    assert row["chosen"] == "lr=0.05, warmup_ratio=0.1"
    # Without the grid declared the three runs are three rows, not one averaged cell.
    assert len(report.collect(runs, {}, [])) == 3


def test_heldout_rule_selects_on_dev_and_reports_that_runs_test_score(tmp_path):
    runs = [
        write_run(tmp_path, "a", [0.90], [0.55], protocol="heldout", lr=0.05),
        write_run(tmp_path, "b", [0.60], [0.70], protocol="heldout", lr=0.03),  # best dev
    ]
    (row,) = report.collect(runs, {}, ["lr"])
    assert (row["value"], row["chosen"], row["variant"]) == (0.60, "lr=0.03", "lomo")


def test_other_settings_are_separate_labelled_rows_and_paper_value_only_for_the_paper_design(
    tmp_path,
):
    reference = {("7B", "LoRA", "rte"): 85.9}
    model = "huggyllama/llama-7b"
    runs = [
        write_run(tmp_path, f"r{r}", [0.5 + r / 100], method="lora", lora_r=r, model=model)
        for r in (1, 2, 4)
    ]
    runs.append(write_run(tmp_path, "other", [0.9], method="lora", model=model, task="wic"))
    runs.append(
        write_run(tmp_path, "held", [0.7], [0.7], method="lora", model=model, protocol="heldout")
    )
    rows = report.collect(runs, reference, ["lr", "warmup_ratio"])
    rte = {r["variant"]: r for r in rows if r["task"] == "rte"}
    assert set(rte) == {
        "lora (lora_r=1, protocol=paper)",
        "lora (lora_r=2, protocol=paper)",
        "lora (lora_r=4, protocol=paper)",
        "lora (lora_r=2, protocol=heldout)",
    }
    assert all(r["paper"] is None for r in rows)  # labelled variants are not the paper's row
    plain = report.collect(runs[:1], reference, [])
    assert plain[0]["variant"] == "lora" and plain[0]["paper"] == pytest.approx(0.859)


def test_table_command_writes_every_format_and_names_a_broken_run(tmp_path):
    runs = [
        write_run(tmp_path, n, [acc], lr=lr) for n, acc, lr in (("a", 0.6, 0.05), ("b", 0.7, 0.03))
    ]
    out = tmp_path / "out"
    args = ["table", "--runs", *runs, "--select-over", "lr", "--csv", str(out / "t.csv")]
    from lomo.cli import main

    main(args + ["--markdown", str(out / "t.md"), "--latex", str(out / "t.tex")])
    (row,) = csv.DictReader((out / "t.csv").open())
    assert (row["value"], row["grid_points"], row["chosen"]) == ("0.7", "2", "lr=0.03")
    assert "| m | lomo | 70.0 ± 8.8 | 70.0 | 2 |" in (out / "t.md").read_text()
    Path(runs[0]).write_text("{trunc")
    with pytest.raises(SystemExit, match=f"cannot read the run {Path(runs[0]).parent}"):
        main(args)


def test_seeds_are_averaged_with_their_spread(tmp_path):
    # three seeds at 0.60, 0.70, 0.80 of n = 100: mean 70.0, sd 10.0 (by hand); Wilson 95%
    # interval of the first seed's 0.60: [0.5020, 0.6906], half-width 9.4
    runs = [
        write_run(tmp_path, f"s{seed}", [acc], protocol="val-split", seed=seed)
        for seed, acc in ((1, 0.60), (2, 0.70), (3, 0.80))
    ]
    header, table = report.pivot(report.collect(runs, {}))
    assert header[0] == "rte"
    assert table == [("m", "lomo", ["70.0 ± 9.4 (sd 10.0)", "70.0", "1"])]  # avg: RTE only
    (one,) = report.pivot(report.collect(runs[:1], {}))[1]
    assert one[2][0] == "60.0 ± 9.4"


def write_fingerprint(metrics_path: str, data: dict) -> str:
    Path(metrics_path).with_name("fingerprint.json").write_text(json.dumps({"data": data}))
    return metrics_path


def test_the_same_settings_on_other_data_are_kept_apart(tmp_path):
    same = {"lr": 0.05, "warmup_ratio": 0.1}
    a = write_fingerprint(write_run(tmp_path, "a", [0.60], **same), {"eval.jsonl": "1"})
    b = write_fingerprint(write_run(tmp_path, "b", [0.80], **same), {"eval.jsonl": "2"})
    rows = report.collect([a, b], {}, ["lr", "warmup_ratio"])
    assert sorted(r["value"] for r in rows) == [0.60, 0.80]  # two rows, not one best-of-two
    assert all(r["grid_points"] == 1 for r in rows)
    assert len({r["variant"] for r in rows}) == 2 and all("data=" in r["variant"] for r in rows)
    # the same examples under another folder are the same experiment: one grid of two points
    c = write_fingerprint(write_run(tmp_path, "c", [0.70], lr=0.03), {"eval.jsonl": "1"})
    rows = report.collect([a, c], {}, ["lr", "warmup_ratio"])
    assert [(r["value"], r["grid_points"], r["variant"]) for r in rows] == [(0.70, 2, "lomo")]


def test_seeds_with_their_own_examples_stay_one_row(tmp_path):
    runs = [
        write_fingerprint(write_run(tmp_path, f"s{seed}", [0.5], seed=seed), {"x": str(seed)})
        for seed in (42, 43)
    ]
    rows = report.collect(runs, {}, ["lr"])
    assert {r["variant"] for r in rows} == {"lomo"} and len(rows) == 2


def test_a_run_listed_twice_counts_once(tmp_path):
    a = write_run(tmp_path, "a", [0.60], lr=0.05)
    b = write_run(tmp_path, "b", [0.80], lr=0.03)
    twice = [a, b, a, str(Path(a).parent / ".." / "a" / "metrics.json")]
    (row,) = report.collect(twice, {}, ["lr"])
    assert row["grid_points"] == 2


def test_runs_told_apart_by_a_setting_need_no_data_label(tmp_path):
    """Two protocols use different examples by design: the protocol labels them, not data."""
    a = write_fingerprint(write_run(tmp_path, "a", [0.6], protocol="paper"), {"e": "1"})
    b = write_run(tmp_path, "b", [0.7], [0.5], protocol="heldout")
    b = write_fingerprint(b, {"e": "2"})
    rows = report.collect([a, b], {}, ["lr"])
    assert {r["variant"] for r in rows} == {"lomo (protocol=paper)", "lomo (protocol=heldout)"}
