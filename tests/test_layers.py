"""The package's layers (lomo/__init__.py): no module imports from a layer above its own, the
light entry points (`lomo --help`, `lomo readme-results`, a Snakemake parse) import neither
torch nor scikit-learn, and `lomo finetune` imports DeepSpeed and peft only when it uses them."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from paths import DATA_DIR, ROOT

# Lowest first: a module may import its own layer and those before it.
LAYERS = [
    ("io", ["lomo.io"]),
    ("tasks", ["tasks"]),
    ("core", ["lomo.optim", "lomo.loss_scaler", "lomo.sync", "lomo.loss", "lomo"]),
    ("train", ["lomo.train"]),
    ("measure", ["lomo.measure"]),
    ("report", ["lomo.report"]),
    ("entry", ["lomo.cli", "lomo.workflow", "lomo.budget", "lomo.demo"]),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names `module` or a package above it."""
    best, length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    if best is None:
        raise KeyError(module)
    return best


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a lomo or tasks module in the file, lazy ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lomo.report import tables` imports lomo.report.tables
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("lomo", "tasks")]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upward_edges(files: list[Path]) -> list[str]:
    edges = []
    for path in files:
        source = module_name(path)
        for line, target in project_imports(path):
            if layer_of(target) > layer_of(source):
                edges.append(
                    f"{path.relative_to(ROOT)}:{line}: {source} ({LAYERS[layer_of(source)][0]}) "
                    f"imports {target} ({LAYERS[layer_of(target)][0]})"
                )
    return edges


def test_no_module_imports_from_a_layer_above_its_own():
    files = sorted((ROOT / "lomo").rglob("*.py")) + sorted((ROOT / "tasks").rglob("*.py"))
    assert len(files) > 20
    assert upward_edges(files) == []


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """A planted edge from the optimizer core up to the runner is reported."""
    planted = tmp_path / "lomo" / "optim.py"
    planted.parent.mkdir()
    planted.write_text("import torch\nfrom lomo.train.finetune import finetune\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (edge,) = upward_edges([planted])
    assert "lomo/optim.py:2: lomo.optim (core) imports lomo.train.finetune.finetune (train)" in edge


LIGHT = {
    "lomo --help": (
        "import lomo.cli\ntry:\n    lomo.cli.main(['--help'])\nexcept SystemExit:\n    pass"
    ),
    "lomo readme-results": "import lomo.cli\nlomo.cli.build_parser(['readme-results'])",
    "lomo table": "import lomo.cli\nlomo.cli.build_parser(['table'])",
    "a Snakemake parse (lomo.workflow, tasks.superglue.source)": (
        "import lomo.workflow, tasks.superglue.source"
    ),
}


@pytest.mark.parametrize("name", list(LIGHT))
def test_light_entry_points_import_neither_torch_nor_sklearn(name):
    code = LIGHT[name] + "\nimport sys\nprint(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", name


# A laptop-profile job starts 48 times: DeepSpeed's import alone takes seconds there.
RUN_FLAGS = ["finetune", "--model", "tiny-llama", "--task", "rte", "--data-dir", str(DATA_DIR)]
RUN_FLAGS += ["--protocol", "val-split", "--train-size", "4", "--test-size", "2"]
RUN_FLAGS += ["--max-length", "64", "--epochs", "1", "--global-batch", "4", "--micro-batch", "4"]


def test_a_run_imports_deepspeed_and_peft_only_when_it_uses_them(tmp_path):
    """In one fresh interpreter: a LOMO run without --deepspeed imports neither DeepSpeed nor
    peft; a LoRA run after it imports peft (so the check sees an import when there is one)."""
    runs = {
        m: [*RUN_FLAGS, "--method", m, "--lr", "1e-3", "--out", str(tmp_path / m)]
        for m in ("lomo", "lora")
    }
    code = "import sys, lomo.cli\n" + "".join(
        f"lomo.cli.main({flags!r})\nprint(sorted({{'deepspeed', 'peft'}} & set(sys.modules)))\n"
        for flags in runs.values()
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / method / "metrics.json").exists() for method in runs)
    printed = [line for line in done.stdout.splitlines() if line == "[]" or line.startswith("['")]
    assert printed == ["[]", "['peft']"]
