"""rundir/argparsing.py: the argument types every entry point shares, as a table, and the parser that
turns a bad flag into one line and exit 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from rundir.argparsing import (
    OneLineParser,
    fraction,
    non_negative,
    non_negative_float,
    positive,
    seconds,
    seconds_or_zero,
)
from rundir.exitcodes import ExitCode

TYPES: list[tuple[Callable[[str], object], str, object]] = [
    (positive, "1", 1),
    (positive, "12", 12),
    (positive, "0", "must be 1 or more, got 0"),
    (positive, "-3", "must be 1 or more, got -3"),
    (positive, "1.5", "not an integer: '1.5'"),
    (positive, "x", "not an integer: 'x'"),
    (non_negative, "0", 0),
    (non_negative, "7", 7),
    (non_negative, "-1", "must be 0 or more, got -1"),
    (non_negative, "", "not an integer: ''"),
    (seconds, "2.5", 2.5),
    (seconds, "1e3", 1000.0),
    (seconds, "inf", "must be a finite number, got inf"),
    (seconds, "0", "must be more than 0, got 0"),
    (seconds, "-1", "must be more than 0, got -1"),
    (seconds, "nan", "must be a finite number, got nan"),
    (seconds, "soon", "not a number of seconds: 'soon'"),
    (seconds_or_zero, "0", 0.0),
    (seconds_or_zero, "0.25", 0.25),
    (seconds_or_zero, "-0.5", "must be 0 or more, got -0.5"),
    (seconds_or_zero, "nan", "must be a finite number, got nan"),
    (non_negative_float, "0.05", 0.05),
    (non_negative_float, "-0.1", "must be 0 or more, got -0.1"),
    (fraction, "0.25", 0.25),
    (fraction, "1", "must be less than 1, got 1"),
    (fraction, "x", "not a number: 'x'"),
    (seconds_or_zero, "often", "not a number of seconds: 'often'"),
]


@pytest.mark.parametrize(("parse", "text", "want"), TYPES, ids=[f"{f.__name__}-{t}" for f, t, _ in TYPES])
def test_argument_types(parse: Callable[[str], object], text: str, want: object) -> None:
    if isinstance(want, str):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse(text)
        assert str(exc.value) == want
    else:
        assert parse(text) == want


def test_a_bad_flag_is_one_line_on_stderr_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    p = OneLineParser(prog="python -m thing")
    p.add_argument("--every", type=positive)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--every", "0"])
    assert exc.value.code == ExitCode.USAGE == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: argument --every: must be 1 or more, got 0 (see python -m thing --help)\n"


def test_an_unknown_flag_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        OneLineParser(prog="p").parse_args(["--nope"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: unrecognized arguments: --nope (see p --help)"]
