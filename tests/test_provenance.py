"""Provenance: a run folder records the code, packages, Python and hardware that made it, and
`lomo table` says when the runs of one table come from different code or packages."""

import json
import subprocess

import torch
from test_report import write_run

from lomo import provenance as prov
from lomo.report import tables as report


def test_a_record_names_commit_packages_python_and_hardware():
    record = prov.provenance(torch.device("cpu"))
    head = subprocess.run(
        ["git", "-C", str(prov.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert record["commit"] == head and isinstance(record["dirty"], bool)
    assert record["packages"]["torch"] == torch.__version__.split("+")[0] or record["packages"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    assert record["python"].count(".") == 2 and record["hardware"]


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert prov.git_state(tmp_path) == {"commit": None, "dirty": None}


def record(commit: str, dirty: bool = False, torch_version: str = "2.13.0") -> dict:
    packages = {"torch": torch_version, "transformers": "5.0"}
    return {"commit": commit, "dirty": dirty, "packages": packages, "python": "3.11.9"}


def test_the_table_says_when_runs_come_from_different_code(tmp_path):
    runs = []
    for name, lr, rec in [("a", 0.05, record("a" * 40)), ("b", 0.03, record("b" * 40, True))]:
        path = write_run(tmp_path, name, [0.6], lr=lr, task="rte" if name == "a" else "copa")
        resources = {"threads": 2, "provenance": rec}
        (tmp_path / name / "resources.json").write_text(json.dumps(resources))
        runs.append(path)
    rows = report.collect(runs, {}, ["lr"])
    assert {r["code"][:10] for r in rows} == {"a" * 10, "b" * 10}
    text = report.to_markdown(rows)
    assert "come from different code or packages" in text and "(+uncommitted)" in text
    same = report.to_markdown(report.collect(runs[:1], {}, ["lr"]))
    assert "different code" not in same


def test_a_run_folder_records_its_provenance(tmp_path):
    from test_finetune import tiny_config

    from lomo.train import finetune as ft

    ft.finetune(tiny_config(method="zero-shot"), tmp_path)
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert resources["provenance"] == prov.provenance(torch.device("cpu"))
    assert resources["threads"] == torch.get_num_threads()
