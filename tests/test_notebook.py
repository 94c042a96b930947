"""`lomo notebook`: parameters reach the notebook, and the kernel runs over IPC, not TCP."""

import subprocess
import sys

import nbformat
import pytest

from lomo.report.notebook import parse_parameters


def write_notebook(path, code: str) -> None:
    parameters = nbformat.v4.new_code_cell("name = 'default'\ncount = 0")
    parameters.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python"}
    nbformat.write(notebook, path)


def lomo_notebook(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lomo.cli", "notebook", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runs_a_notebook_with_parameters_over_ipc(tmp_path):
    write_notebook(
        tmp_path / "in.ipynb",
        "from ipykernel.kernelapp import IPKernelApp\n"
        "print('transport', IPKernelApp.instance().transport, name, count + 1)",
    )
    out = tmp_path / "out.ipynb"
    done = lomo_notebook(
        str(tmp_path / "in.ipynb"), str(out), "-p", "name", "hello", "-y", "{count: 41}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "transport ipc hello 42" in done.stderr  # the cells' output is logged as it runs
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "transport ipc hello 42\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ipynb", "out.ipynb"]


def test_a_failing_cell_is_one_line_and_leaves_no_file(tmp_path):
    write_notebook(tmp_path / "in.ipynb", "raise ValueError('bad results_dir: ' + name)")
    out = tmp_path / "out.ipynb"
    done = lomo_notebook(str(tmp_path / "in.ipynb"), str(out), "-p", "name", "nowhere")
    assert done.returncode == 1  # cell 3: run third, after the parameters and papermill's
    assert done.stderr.splitlines()[-1] == (
        f"lomo notebook: {tmp_path / 'in.ipynb'}: cell 3 raised ValueError: bad results_dir: "
        "nowhere"
    )
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ipynb"]


def test_parameters():
    assert parse_parameters([["profile", "42"]], "{lrs: [0.1, 1]}") == {
        "profile": "42",
        "lrs": [0.1, 1],
    }
    with pytest.raises(ValueError, match="YAML mapping"):
        parse_parameters([], "[1, 2]")
    with pytest.raises(
        ValueError, match=r"^-y:1:7: invalid YAML: expected ',' or '\]', but got '}'$"
    ):
        parse_parameters([], "{a: [1}")
