"""`lomo readme-results`: the README's "Results" section, rendered from the analysis tables.

The section sits between the markers below and is never typed by hand: `--write` renders it
from `compare_superglue.csv` and `claims_*.csv` (written by the analysis notebooks) and
replaces it in the README; `--check` fails when the README differs from what the tables
give. Every number in the section is copied from those files.
"""

import argparse
import csv
import re
from pathlib import Path

from lomo.io import write_atomic

START = "<!-- results:start -->"
END = "<!-- results:end -->"
SUPERGLUE = "compare_superglue.csv"
CLAIMS = "claims_*.csv"
# The columns of compare_superglue.csv that the section shows (seed_sd and seeds: optional)
SUPERGLUE_COLUMNS = {"model", "protocol", "template", "method", "task", "n", "accuracy"}
SUPERGLUE_COLUMNS |= {"ci_low", "ci_high", "paper", "paper_model", "paper_protocol"}
SUPERGLUE_COLUMNS |= {"unlike_paper", "ours_minus_paper"}


def percent(value: str) -> str:
    """A fraction from a CSV cell as a percentage with one decimal ('' stays '-')."""
    return f"{100 * float(value):.1f}" if value not in ("", None) else "-"


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a table, each with exactly the header's cells: a truncated or padded row
    stops with its file:line (it would render as `None` cells in the README)."""
    with open(path, newline="") as f:
        lines = csv.reader(f)
        header = next(lines, None)
        if not header:
            raise ValueError(f"{path}: empty, no header row; rerun the notebook that writes it")
        rows = []
        for cells in lines:
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise ValueError(
                    f"{path}:{lines.line_num}: {len(cells)} cells where the header has "
                    f"{len(header)}: a truncated or malformed table; rerun the notebook that "
                    "writes it"
                )
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def superglue_lines(rows: list[dict[str, str]]) -> list[str]:
    """One line per row of compare_superglue.csv. Our number names the model, protocol and
    template that produced it; "ours - paper" is shown only for a like-for-like row (an empty
    `unlike_paper`), every other row says what differs instead."""
    columns = set(rows[0]) if rows else set()
    missing = SUPERGLUE_COLUMNS - columns
    if missing:
        raise ValueError(
            f"{SUPERGLUE} lacks the columns {sorted(missing)}: "
            "rerun analysis/compare_to_paper.ipynb"
        )
    lines = [
        "| model | protocol (template) | method | task | n | ours % [95% CI] "
        "| paper % (model, protocol) | ours - paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = percent(r["accuracy"])
        if r["ci_low"]:  # averages over tasks have no interval
            ours += f" [{percent(r['ci_low'])}, {percent(r['ci_high'])}]"
        if r.get("seed_sd"):  # several seeds: their spread
            ours += f" (sd {percent(r['seed_sd'])}, {r['seeds']} seeds)"
        paper = "-"
        if r["paper"]:
            paper = f"{percent(r['paper'])} ({r['paper_model']}, {r['paper_protocol']})"
        if r["ours_minus_paper"]:
            gap = percent(r["ours_minus_paper"])
        elif r["paper"]:
            gap = f"not like for like: {r['unlike_paper']}"
        else:
            gap = "-"
        lines.append(
            f"| {r['model']} | {r['protocol']} ({r['template']}) | {r['method']} | {r['task']} "
            f"| {r['n']} | {ours} | {paper} | {gap} |"
        )
    return lines


def claim_lines(rows: list[dict[str, str]]) -> list[str]:
    """The claims table, and beneath it what its intervals are: per claim, with no correction
    for the table's several claims."""
    missing = {"claim", "verdict", "evidence"} - set(rows[0] if rows else ())
    if rows and missing:
        raise ValueError(f"a claims table lacks the columns {sorted(missing)}")
    lines = ["| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['verdict']} | {r['evidence']} |" for r in rows]
    # the confidence levels the rows' evidence states (the config's claims.confidence)
    levels = sorted(
        {level for r in rows for level in re.findall(r"(\d+(?:\.\d+)?)% CI", r["evidence"])}
    )
    intervals = f"Each {' / '.join(f'{x}%' for x in levels)} CI above" if levels else "Each verdict"
    lines += [
        "",
        f"{intervals} is per claim: no family-wise correction is made across this table's "
        f"claims ({len(rows)}), so with several claims some verdict can be reached by chance.",
    ]
    return lines


def render(tables_dir: Path) -> str:
    """The section, markers included, from the tables in `tables_dir`."""
    if not tables_dir.is_dir():
        raise FileNotFoundError(f"tables folder {tables_dir} does not exist (--tables)")
    lines = [
        START,
        "## Results",
        "",
        f"Generated by `lomo readme-results --write --tables {tables_dir}` from the files named",
        "below (written by the notebooks in `analysis/`); do not edit by hand.",
        "",
    ]
    superglue, claim_files = tables_dir / SUPERGLUE, sorted(tables_dir.glob(CLAIMS))
    if not superglue.exists() and not claim_files:
        lines.append(f"No results yet: `{tables_dir}` has neither {SUPERGLUE} nor {CLAIMS}.")
    if superglue.exists():
        lines += [
            f"SuperGLUE accuracy (source: `{superglue}`). Each of our numbers names the model, "
            "data protocol and prompt template that produced it; the paper's column is Table 3 "
            "for the LLaMA of that size (LLaMA-7B for other models), under the paper's protocol. "
            "`ours - paper` is given only where model, protocol and template all match the "
            "paper's; other rows say what differs.",
            "",
            *superglue_lines(read_csv(superglue)),
            "",
        ]
    for claims in claim_files:
        lines += [
            f"The paper's claims, at the scale that was run (source: `{claims}`).",
            "",
            *claim_lines(read_csv(claims)),
            "",
        ]
    return "\n".join([*lines, END]) + "\n"


def splice(readme: str, section: str) -> str:
    """`readme` with the marked section replaced by `section` (appended when absent)."""
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        tail = rest.split(END, 1)[1].removeprefix("\n")
        return head + section + tail
    return readme.rstrip("\n") + "\n\n" + section


def run(args: argparse.Namespace) -> None:
    section = render(Path(args.tables))
    readme = Path(args.readme)
    current = readme.read_text()  # before anything is written: a missing README writes nothing
    updated = splice(current, section)
    if args.out:
        write_atomic(args.out, section)
    if args.write:
        write_atomic(readme, updated)
    elif args.check and updated != current:
        raise ValueError(
            f"the Results section of {readme} differs from {args.tables}; "
            f"run `lomo readme-results --write --tables {args.tables}`"
        )


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "readme-results",
        help=summary,
        description=__doc__,
    )
    parser.add_argument("--tables", default="paper/tables", help="folder with the CSV tables")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--out", help="also write the section alone to this file")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the section in the README")
    mode.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    parser.set_defaults(func=run)
