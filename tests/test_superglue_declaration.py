"""A task is one declaration: a `Task` added to `TASKS` and nothing else (here RTE's data under
another name, folder, metrics function and primary metric) loads, is sampled, renders, is
scored, passes the workflow's config check, selects epochs and fills the tables."""

import ast
import dataclasses
import shutil

import pytest
import yaml
from paths import DATA_DIR, ROOT

from lomo.report.tables import primary_value
from lomo.workflow import check_config
from tasks.superglue import TASKS, get_task, get_template, load_split, prepare
from tasks.superglue.data import DataNotFoundError
from tasks.superglue.prompts import lomo_rte
from tasks.superglue.source import resolve_source

SCHEMA = ROOT / "config/schemas/config.schema.yaml"


def recall_of_ones(examples: list[dict], preds: list[int]) -> dict[str, float]:
    """A metric no declared task reports: the share of label-1 examples predicted 1."""
    ones = [pred for ex, pred in zip(examples, preds, strict=True) if ex["label"] == 1]
    return {"accuracy": 0.0, "recall_1": sum(ones) / len(ones)}


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """`toy` declared as a copy of RTE with its own folder (Toy/), metrics and primary metric
    and only the lomo template; its data is RTE's files copied into Toy/."""
    task = dataclasses.replace(
        TASKS["rte"],
        name="toy",
        folder="Toy",
        metrics_fn=recall_of_ones,
        primary_metric="recall_1",
        templates={"lomo": lomo_rte},
    )
    monkeypatch.setitem(TASKS, "toy", task)
    shutil.copytree(DATA_DIR / "RTE", tmp_path / "data" / "Toy")
    return tmp_path / "data"


def test_a_declared_task_loads_and_is_sampled_from_its_folder(toy):
    rte = load_split("rte", "val", "local", DATA_DIR)
    assert load_split("toy", "val", "local", toy) == rte
    with pytest.raises(DataNotFoundError, match="no Toy/ folder for toy"):
        load_split("toy", "val", "local", DATA_DIR)
    toy_split = prepare("toy", "val-split", "local", toy, seed=3).manifest
    rte_split = prepare("rte", "val-split", "local", DATA_DIR, seed=3).manifest
    assert toy_split["task"] == "toy"
    assert toy_split["splits"] == rte_split["splits"]
    assert resolve_source(str(toy), ["toy"]) == ("local", str(toy.resolve()), ["toy"])


def test_a_declared_task_renders_its_templates(toy):
    example = load_split("toy", "val", "local", toy)[0]
    prompt = get_task("toy").render(example, get_template("lomo"))
    assert prompt.text == (
        f'{example["premise"]}\nDoes this mean that "{example["hypothesis"]}" is true? '
        "Yes or No?\nAnswer: "
    )
    assert prompt.candidates == ["Yes", "No"]
    assert prompt.gold == example["label"]
    # mezo is a template of the other tasks, not of this one
    with pytest.raises(ValueError, match="toy has no 'mezo' template: expected one of lomo"):
        get_task("toy").render(example, get_template("mezo"))


def test_a_declared_task_is_scored_by_its_metrics_and_primary_metric(toy):
    task = get_task("toy")
    examples = [{"label": label} for label in (1, 1, 1, 1, 0)]
    metrics = task.metrics(examples, [1, 0, 1, 1, 1])
    assert metrics == {"accuracy": 0.0, "recall_1": 0.75}  # 3 of the 4 label-1 examples
    run = {"metrics": {"task": "toy", "reported": {"eval": metrics}}}
    assert primary_value(run, "eval") == 0.75


def test_a_declared_task_selects_epochs_by_its_primary_metric(toy):
    from lomo.train.config import FinetuneConfig
    from lomo.train.finetune import select_epoch

    per_epoch = [
        {"epoch": 1, "eval": {"accuracy": 0.9, "recall_1": 0.2}},
        {"epoch": 2, "eval": {"accuracy": 0.1, "recall_1": 0.8}},
    ]
    _, best = select_epoch(FinetuneConfig(task="toy", protocol="val-split"), per_epoch)
    assert best["epoch"] == 2  # rte (primary metric accuracy) would pick epoch 1
    _, best = select_epoch(FinetuneConfig(task="rte", protocol="val-split"), per_epoch)
    assert best["epoch"] == 1


def test_the_workflow_config_takes_its_task_names_from_the_declarations(toy):
    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    config.update(optional_tasks=[], tasks=["toy", "rte"], task_settings={"toy": {}})
    check_config(config, SCHEMA)
    config["tasks"] = ["toy", "mnli"]
    with pytest.raises(ValueError, match=r"config: tasks.1: 'mnli' is not one of \[.*'toy'\]"):
        check_config(config, SCHEMA)


def test_a_declaration_that_cannot_work_is_refused():
    rte = TASKS["rte"]
    with pytest.raises(TypeError, match=r"task odd: field types \{'score': <class 'float'>\}"):
        dataclasses.replace(rte, name="odd", fields={"premise": str, "score": float})
    with pytest.raises(TypeError, match="task odd has no labels: declare its `gold` option"):
        dataclasses.replace(rte, name="odd", labels=None)


PACKAGE = ROOT / "tasks/superglue"


def imported_modules(path) -> set[str]:
    """The modules of tasks/superglue that `path` imports anywhere: at the top, in a function or
    under TYPE_CHECKING (a cycle of types is still a cycle for a reader)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("tasks.superglue.") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "tasks.superglue":
            # `from tasks.superglue import data` names a module; any other name, the package
            found |= {a.name if (PACKAGE / f"{a.name}.py").exists() else "" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.removeprefix("tasks.superglue."))
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {name or "__init__" for name in found if name in modules or name == ""}


def test_task_data_and_registry_do_not_import_each_other():
    graph = {p.stem: imported_modules(p) for p in PACKAGE.glob("*.py")}
    assert {"data", "tasks"}.isdisjoint(graph["task"])  # Task: the declaration's type only
    assert "tasks" not in graph["data"]  # data reads a Task, whatever declares it

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        for imported in sorted(graph[module]):
            found = cycle_from(imported, path + [module])
            if found:
                return found
        return None

    for module in sorted(graph):
        cycle = cycle_from(module, [])
        assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
