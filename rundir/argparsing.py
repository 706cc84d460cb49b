"""Command-line parsing shared by every entry point: bad flags give one line and exit 2."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from .exitcodes import ExitCode

__all__ = ["OneLineParser", "positive", "non_negative", "seconds", "seconds_or_zero", "non_negative_float", "fraction"]


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(ExitCode.USAGE)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {v}")
    return v


def non_negative(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if math.isnan(v) or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def seconds(text: str) -> float:
    v = _number(text, "a number of seconds")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return v


def seconds_or_zero(text: str) -> float:
    v = _number(text, "a number of seconds")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def non_negative_float(text: str) -> float:
    v = _number(text, "a number")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    v = non_negative_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be less than 1, got {text}")
    return v
