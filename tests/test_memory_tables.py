"""`lomo memory` and `lomo throughput`: extrapolation, paper comparison, outputs, bad input."""

import csv
import json

import pytest

from lomo import cli
from lomo.measure import memory, throughput

GIB = 2**30


def test_reference_table1_as_in_the_paper():
    reference = memory.load_reference(memory.REFERENCE)
    assert reference[("lomo", True)] == dict(
        parameters=12.55, gradients=0.24, optimizer_states=0.0, activations=1.79, total=14.58
    )
    assert reference[("adamw", False)]["total"] == 147.02
    for (optimizer, ac), row in reference.items():
        parts = row["parameters"] + row["gradients"] + row["optimizer_states"] + row["activations"]
        # the paper's AC rows add up; its no-AC rows are 1.00 GB above their parts
        assert row["total"] == pytest.approx(parts + (0.0 if ac else 1.0), abs=0.011), optimizer


def test_extrapolation_is_linear_in_depth():
    values = {1: {"a": 10.0, "b": 5.0}, 2: {"a": 13.0, "b": 5.0}}
    assert memory.extrapolate(values, 32) == {"a": 10.0 + 31 * 3.0, "b": 5.0}
    assert memory.extrapolate({2: {"a": 4.0}, 4: {"a": 8.0}}, 32) == {"a": 64.0}
    with pytest.raises(ValueError, match="two depths"):
        memory.extrapolate({1: {"a": 1.0}}, 32)


def fake_raw(layers: int, optimizer: str = "lomo", ac: bool = True) -> dict:
    """A measured configuration whose bytes grow by one unit per layer."""
    per_layer = {
        "parameters": 1,
        "gradients": 0,
        "optimizer_states": 0,
        "activations": 2,
        "other": 0,
    }
    base = {"parameters": 3, "gradients": 1, "optimizer_states": 0, "activations": 1, "other": 0}
    peak = {k: (base[k] + layers * per_layer[k]) * GIB for k in base}
    return dict(
        model="llama-7b",
        layers=layers,
        dtype="bf16",
        attn="eager",
        ac=ac,
        optimizer=optimizer,
        seq=512,
        batch=8,
        clip=False,
        chunked_loss=True,
        device="cpu",
        num_params=0,
        param_bytes=peak["parameters"],
        largest_grad_bytes=GIB,
        category_peak=peak,
        at_peak=peak,
        census_peak=sum(peak.values()),
        process_peak=sum(peak.values()) + GIB // 2,
    )


def test_summary_extrapolates_to_32_layers_and_compares_with_the_paper():
    rows = memory.summarise([fake_raw(1), fake_raw(2)])
    lines = memory.table_rows(rows, memory.load_reference(memory.REFERENCE))
    (line,) = lines
    assert line["layers"] == 32 and line["measured_layers"] == "1 2"
    assert line["parameters_gb"] == 3 + 32  # 35 GiB
    assert line["activations_gb"] == 1 + 2 * 32
    assert line["census_peak_gb"] == 35 + 1 + 65
    assert line["paper_parameters_gb"] == 12.55
    assert line["ratio_parameters"] == round(35 / 12.55, 3)
    assert line["ratio_total"] == round(101 / 14.58, 3)
    assert line["process_minus_census_gb"] == 0.5


def test_chunked_and_plain_loss_are_separate_rows():
    plain = [{**fake_raw(n), "chunked_loss": False} for n in (1, 2)]
    rows = memory.summarise([fake_raw(1), fake_raw(2), *plain])
    lines = memory.table_rows(rows, memory.load_reference(memory.REFERENCE))
    assert [line["loss"] for line in lines] == ["chunked", "hf"]
    assert "lomo (hf)" in memory.format_text(lines)
    assert "(HF loss)" in memory.format_latex(lines, "caption")


def test_cli_renders_csv_and_tex_from_raw(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps([fake_raw(n, opt) for opt in ("lomo", "adamw") for n in (1, 2)]))
    out = {ext: tmp_path / f"sub/table.{ext}" for ext in ("csv", "tex")}
    cli.main(
        [
            "memory",
            "--from-raw",
            str(raw),
            "--csv",
            str(out["csv"]),
            "--tex",
            str(out["tex"]),
        ]
    )
    printed = capsys.readouterr().out
    assert "extrapolated linearly in depth to 32 layers" in printed
    assert "LOMO/adamw 1.000" in printed
    with open(out["csv"]) as f:
        assert [r["optimizer"] for r in csv.DictReader(f)] == ["lomo", "adamw"]
    assert r"35.00 / 12.55 (2.79)" in out["tex"].read_text()
    # written atomically: no temporary file (write_atomic's ".table.csv-XXXX") is left behind
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["table.csv", "table.tex"]


def test_memory_bad_input_is_refused():
    with pytest.raises(SystemExit, match="two depths"):
        cli.main(["memory", "--model", "llama-7b", "--layers", "1"])
    with pytest.raises(SystemExit, match="only for LLaMA shapes"):
        cli.main(["memory", "--model", "random-100m", "--layers", "1", "2"])


def test_throughput_table_by_hand():
    def result(optimizer: str, times: list[float], peak: int) -> dict:
        return dict(
            model="llama-7b",
            layers=1,
            dtype="bf16",
            attn="sdpa",
            ac=True,
            clip=True,
            chunked_loss=True,
            optimizer=optimizer,
            seq=32,
            batch=2,
            warmup=1,
            steps=len(times),
            device="cpu",
            step_seconds=times,
            tgs_median=64 / sorted(times)[1],
            tgs_min=64 / max(times),
            tgs_max=64 / min(times),
            peak_bytes=peak,
        )

    results = [
        result("lomo", [1.0, 2.0, 4.0], GIB),
        result("lomo-optim", [4.0, 4.0, 4.0], 2 * GIB),
        result("sgd", [1.0, 1.0, 1.0], 3 * GIB),
    ]
    lines = throughput.table_rows(results, throughput.load_reference(throughput.REFERENCE))
    lomo = lines[0]
    assert (lomo["tgs_median"], lomo["tgs_min"], lomo["tgs_max"]) == (32.0, 16.0, 64.0)
    assert lomo["tgs_vs_sgd"] == 0.5
    assert lomo["loss"] == "chunked"
    assert lomo["step_time_vs_lomo_optim"] == 0.5
    assert lomo["peak_vs_lomo_optim"] == 0.5
    assert lomo["paper_tgs"] == "769.92" and lomo["paper_gpus"] == "1"
    assert "769.92" in throughput.format_text(lines)


@pytest.mark.slow
def test_throughput_runs_end_to_end(tmp_path):
    out = tmp_path / "tp.csv"
    cli.main(
        [
            "throughput",
            "--model",
            "random-100m",
            "--seq",
            "16",
            "--batch",
            "1",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--optimizers",
            "lomo",
            "lomo-optim",
            "--csv",
            str(out),
        ]
    )
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == ["lomo", "lomo-optim"]
    assert all(float(r["tgs_median"]) > 0 for r in rows)


@pytest.mark.slow
def test_memory_worker_on_a_llama_shape_matches_hand_counts():
    # One LLaMA-7B-shaped layer: 4*4096^2 + 3*4096*11008 + 2*4096 = 202,383,360 parameters;
    # embedding and head 2 * 32000*4096; final norm 4096.
    spec = dict(
        model="llama-7b",
        layers=1,
        dtype="bf16",
        attn="sdpa",
        ac=False,
        optimizer="lomo",
        seq=8,
        batch=1,
        clip=False,
        chunked_loss=True,
        device="cpu",
    )
    raw = memory.run_worker(spec)
    n_params = 202_383_360 + 2 * 32000 * 4096 + 4096
    assert raw["category_peak"]["parameters"] == 2 * n_params
    assert raw["category_peak"]["gradients"] == 2 * 32000 * 4096


# slow (-m slow); in the default suite: the other memory-worker tests
@pytest.mark.slow
def test_memory_workers_measure_with_a_fixed_mmap_threshold(tmp_path):
    # glibc's dynamic mmap threshold keeps freed blocks resident and inflated the CPU process
    # peak by 0.2-0.5 GB at SmolLM2 size; every worker must run with the threshold fixed.
    raw = tmp_path / "raw.json"
    cli.main(
        [
            "memory",
            "--model",
            "tiny-llama",
            "--dtype",
            "fp32",
            "--attn",
            "sdpa",
            "--seq",
            "16",
            "--batch",
            "2",
            "--optimizers",
            "lomo",
            "adalomo",
            "--ac",
            "off",
            "--raw",
            str(raw),
        ]
    )
    rows = json.loads(raw.read_text())
    assert [r["optimizer"] for r in rows] == ["lomo", "adalomo"]
    assert all(
        r["malloc_mmap_threshold"] == memory.WORKER_ENV["MALLOC_MMAP_THRESHOLD_"] for r in rows
    )
    assert memory.WORKER_ENV["MALLOC_MMAP_THRESHOLD_"] == str(64 * 1024)
    assert all(r["process_peak"] > 0 and r["census_peak"] > 0 for r in rows)
