"""The `lomo` command line: one subcommand per module, each module adds its own parser.

Only the module of the command being run is imported, so `lomo --help` and the light commands
(`lomo readme-results`, `lomo table`) start without torch.
"""

import argparse
import importlib
import sys

# command: (module that implements it, one-line summary), grouped by layer
COMMANDS = {
    "demo": ("lomo.demo", "a few seconds of LOMO on a tiny model"),
    "finetune": ("lomo.train.finetune", "fine-tune and evaluate one (model, method, task, seed)"),
    "evaluate": ("lomo.train.evaluate", "zero-shot / checkpoint evaluation on a SuperGLUE task"),
    "prepare-model": (
        "lomo.train.models",
        "download or convert a model once, before parallel jobs use it",
    ),
    "prepare-data": (
        "tasks.superglue.source",
        "copy the SuperGLUE hub dataset (pinned revision) to a folder, for offline jobs",
    ),
    "memory": ("lomo.measure.memory", "Table 1: memory by category, measured"),
    "throughput": ("lomo.measure.throughput", "Table 2: tokens per device per second"),
    "plan": (
        "lomo.measure.plan",
        "will it fit? the per-GPU peak of a LLaMA fine-tuning run, by component",
    ),
    "budget": (
        "lomo.budget",
        "GPUs, memory, wall time and disk of a profile's jobs, and its GPU-hours",
    ),
    "sgd-claims": (
        "lomo.measure.sgd_claims",
        "measure the paper's SGD arguments (implicit batch, smoothness, distance)",
    ),
    "table": ("lomo.report.tables", "tabulate SuperGLUE runs (metrics.json files)"),
    "notebook": ("lomo.report.notebook", "execute an analysis notebook (papermill)"),
    "readme-results": (
        "lomo.report.readme_results",
        "render (or check) the README's Results section from the analysis tables",
    ),
}


# What a user can cause (a config value, a missing file, a model that is not there, a run that
# diverges, processes that cannot meet): one line `lomo <command>: ...` and exit 1, the
# traceback with --debug. Other exceptions are bugs and keep their traceback.
ANTICIPATED = (ValueError, OSError, FloatingPointError)


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the full parsers of `commands` (default: all, importing every module)
    and a one-line entry for each other command."""
    parser = argparse.ArgumentParser(prog="lomo", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        if commands is None or name in commands:
            importlib.import_module(module).add_parser(subparsers, summary)
            subparsers.choices[name].add_argument(
                "--debug", action="store_true", help="a traceback for anticipated errors too"
            )
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the named command's module: `lomo --help` imports none.
    parser = build_parser([argv[0]] if argv and argv[0] in COMMANDS else [])
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.error(f"{args.command}: unknown command")
    try:
        args.func(args)
    except ANTICIPATED as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        sys.exit(f"lomo {args.command}: {message}")


if __name__ == "__main__":
    main()
