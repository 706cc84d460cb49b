"""Command-line parsing shared by every entry point: bad flags give one line and exit 2."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from .exitcodes import ExitCode

__all__ = ["OneLineParser", "positive", "non_negative", "seconds", "seconds_or_zero", "non_negative_float", "fraction",
           "add_store_arguments", "DEFAULT_UPLOAD_EVERY_S"]

#: How often a durable checkpoint goes to the remote store while training. A spot VM's notice comes
#: at least 30 s before the reclaim, and every notice (SIGTERM) uploads at once anyway; this bounds
#: the work lost to a reclaim *without* a notice. A 1 GB state uploads in about 10 s at the ~100 MB/s
#: measured on loopback (docs/remote-store.md), so 60 s keeps the uploader idle most of the time.
DEFAULT_UPLOAD_EVERY_S = 60.0


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
def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """``--store`` and ``--upload-every``: the durable remote tier (docs/remote-store.md)."""
    g = p.add_argument_group("remote store")
    g.add_argument("--store", default=None, metavar="URL",
                   help="also keep checkpoints and journals in this fsspec URL (s3://bucket/prefix, gs://..., "
                        "file:///dir), configured by the standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                        "...); a run directory that is empty is restored from it, so the job survives losing the "
                        "machine")
    g.add_argument("--upload-every", type=seconds_or_zero, default=DEFAULT_UPLOAD_EVERY_S, metavar="S",
                   dest="upload_every",
                   help="upload a durable checkpoint at most every S seconds while training (default %(default)g; "
                        "a spot notice gives >= 30 s, a 1 GB state uploads in ~10 s); on SIGTERM and at the end of "
                        "the job the newest checkpoint is always uploaded. 0: every checkpoint")
