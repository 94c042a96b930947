"""The `lomo` command line: one subcommand per module, each module adds its own parser."""

import argparse

from lomo import (
    bench,
    demo,
    evaluate,
    finetune,
    memory,
    models,
    notebook,
    readme_results,
    report,
    sgd_claims,
    throughput,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lomo", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    modules = (demo, bench, finetune, evaluate, models, report, memory, throughput)
    for module in (*modules, sgd_claims, notebook, readme_results):
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
