"""The types of every numeric flag of every `lomo` command, each naming its range: argparse's own
error then reads `lomo memory: error: argument --seq: expected a positive integer, got '0'`,
before the command runs (nothing written). lomo.train.config checks the same ranges on settings
from YAML. tests/test_cli_errors.py fails on a numeric flag typed plain `int` or `float`.
"""

import argparse
import math

# numpy's RandomState (the heldout protocol's split) takes no larger seed; torch's generators
# take seed * 1000 + epoch (lomo.train.finetune.epoch_order), well within their 64 bits.
SEED_MAX = 2**32 - 1


def _whole(text: str | int, expected: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _finite(text: str | float, expected: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str | int) -> int:
    value = _whole(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str | int) -> int:
    value = _whole(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def seed(text: str | int) -> int:
    expected = f"a seed in 0..{SEED_MAX}"
    value = _whole(text, expected)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str | float) -> float:
    value = _finite(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_float(text: str | float) -> float:
    value = _finite(text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def fraction(text: str | float) -> float:
    """A warmup ratio: in [0, 1)."""
    value = _finite(text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def probability(text: str | float) -> float:
    value = _finite(text, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def fraction_or_count(text: str | float) -> float:
    """A split size: a fraction in (0, 1) or a whole count of examples."""
    expected = "a fraction in (0, 1) or a whole count"
    value = _finite(text, expected)
    if value <= 0 or value >= 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value
