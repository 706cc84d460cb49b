"""A job's top level: the worker's failures as one line and an exit code, never a traceback.

A job's ``main`` runs inside :func:`run_guarded`: a :class:`~rundir.exitcodes.UserError` - bad input
(65, 69, 73, 78), a full disk (:class:`~rundir.errors.ResourceError`, 74), a non-finite value
(:class:`~rundir.errors.NonFiniteError`, 76) - and any error whose errno says the disk is full, over
quota or failing (an ``OSError``, or the checkpoint writer's error) print ``error: ...`` and exit
with their code. The line is dropped if standard error is itself on the full disk; the exit code is
kept all the same, which is what the supervisor reads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from rundir.errors import as_resource_error, print_error, quiet_streams
from rundir.exitcodes import UserError

__all__ = ["run_guarded", "exit_code"]


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the one line for ``exc``, or None for an error that is a bug (a crash)."""
    if isinstance(exc, UserError):
        return int(exc.code), str(exc)
    full = as_resource_error(exc)
    if full is not None:
        return int(full.code), str(full)
    return None


def run_guarded(main: Callable[[], int]) -> int:
    """``main()``'s exit code; for a user error or a resource fault, its code after one line on
    standard error. Anything else propagates: a crash keeps its traceback (exit 1)."""
    try:
        code = int(main())
    except Exception as exc:
        known = exit_code(exc)
        if known is None:
            raise
        code, line = known
        print_error(line)
    try:
        sys.stdout.flush()  # now, not at exit, where a failure would turn the code into 120
    except OSError:
        quiet_streams()
    return code
