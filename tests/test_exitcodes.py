"""rundir/exitcodes.py: the exit codes are a contract with scripts and CI, so they are pinned here, and
each one is in the README's table."""

from __future__ import annotations

import re

import pytest

from rundir.exitcodes import ExitCode, UserError
from tests.helpers import REPO

CODES = {
    "OK": 0, "CRASHED": 1, "USAGE": 2, "VERIFY_FAILED": 3, "INCOMPLETE": 4, "REGRESSED": 5, "BAD_DATA": 65,
    "LOCKED": 69, "GAVE_UP": 70, "UNWRITABLE": 73, "IO_ERROR": 74, "PREEMPTED": 75,
    "NON_FINITE": 76, "STORE": 77, "BAD_CONFIG": 78, "INTERRUPTED": 130,
}


def test_the_codes_are_pinned() -> None:
    assert {c.name: int(c) for c in ExitCode} == CODES


def test_every_code_is_in_the_readmes_table() -> None:
    rows = re.findall(r"^\| (\d+) \| ", (REPO / "README.md").read_text(), flags=re.M)
    assert sorted(int(r) for r in rows) == sorted(CODES.values())


@pytest.mark.parametrize("code", [ExitCode.BAD_DATA, ExitCode.LOCKED, ExitCode.BAD_CONFIG])
def test_a_user_error_carries_its_message_and_code(code: ExitCode) -> None:
    exc = UserError("run directory x is in use", code)
    assert (str(exc), exc.code) == ("run directory x is in use", code)
