"""`lomo notebook`: execute one analysis notebook with parameters (papermill).

The kernel talks to papermill over IPC sockets in a private folder instead of TCP ports:
jupyter picks a kernel's TCP ports before the kernel binds them, so notebooks started side
by side (Snakemake runs them in parallel), or any other program on a shared machine, can
take a port in between and the kernel dies with "Address already in use".
"""

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import papermill
from papermill.exceptions import PapermillExecutionError
from traitlets.config import Config

from lomo.io import parse_yaml, write_atomic


def run_notebook(notebook: str, output: str, parameters: dict[str, Any]) -> None:
    """Execute `notebook` with `parameters` injected, saving the executed copy to `output`.

    papermill saves the notebook after every cell, into a private folder: `output` is written
    only when every cell ran, and a failed run leaves no file behind; its error is one line
    naming the cell (the cells' output, the traceback included, is logged as they run).
    """
    with tempfile.TemporaryDirectory(prefix="lomo-kernel-") as runtime:
        # IPC socket paths derive from the connection file's: a short private folder keeps
        # them unique and under the 107-character limit of a socket path.
        kernel = {"transport": "ipc", "connection_file": os.path.join(runtime, "kernel.json")}
        executed = os.path.join(runtime, "executed.ipynb")
        try:
            papermill.execute_notebook(
                notebook,
                executed,
                parameters=parameters,
                kernel_name="python3",
                log_output=True,
                progress_bar=False,
                config=Config({"KernelManager": kernel}),
            )
        except PapermillExecutionError as error:
            raise ValueError(
                f"{notebook}: cell {error.exec_count} raised {error.ename}: {error.evalue}"
            ) from error
        write_atomic(output, Path(executed).read_bytes())


def parse_parameters(pairs: list[list[str]], yaml_text: str | None) -> dict[str, Any]:
    """`-p NAME VALUE` pairs (strings) and `-y YAML` (a mapping, for typed values)."""
    parameters = {name: value for name, value in pairs}
    if yaml_text:
        extra = parse_yaml(yaml_text, "-y")
        if not isinstance(extra, dict):
            raise ValueError(f"-y needs a YAML mapping, got {yaml_text!r}")
        parameters.update(extra)
    return parameters


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the cells' output, live
    run_notebook(args.notebook, args.output, parse_parameters(args.parameter, args.yaml))


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("notebook", help=summary)
    parser.add_argument("notebook", help="the notebook to run (analysis/*.ipynb)")
    parser.add_argument("output", help="where the executed notebook is saved")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a string parameter (repeatable)",
    )
    parser.add_argument("-y", "--yaml", help="more parameters as a YAML mapping")
    parser.set_defaults(func=run)
