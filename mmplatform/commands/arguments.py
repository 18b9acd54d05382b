"""Argument types shared by the command modules: argparse reports a bad value in one line."""

from __future__ import annotations

import argparse


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        # Else argparse would say "invalid positive_int value", naming this function.
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "between 0 and 1")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a non-negative number")
    if not value >= 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {value}")
    return value


SEED_LIMIT = 2**32
"""Seeds go to ``np.random.seed`` too, which takes 0 .. 2**32 - 1."""


def seed(text: str) -> int:
    value = _number(text, int, "an integer from 0 to 2**32 - 1")
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1, got {value}")
    return value
