"""What a job of one's own (:class:`runner.Job`) takes from its command line and environment before
any framework is imported: its run directory, its identity and the checkpoint cadence the front
door asks for. Plain decisions over plain values; standard library only, so that the front door
(:mod:`runner.command`) reads the same names without importing Paddle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_RUN_DIR

__all__ = ["ENV_CHECKPOINT_EVERY", "RUN_DIR_FLAG", "split_run_dir", "choose_run_dir", "argv_identity",
           "parse_every", "AUTO"]

#: The checkpoint cadence the front door asks of a job of one's own: ``K`` (every K steps, besides
#: epoch ends), ``0`` (epoch ends only) or ``auto``. It wins over the job's own setting: cadence never
#: changes the loss trace, and the chaos schedule puts its checkpoint faults where it says.
ENV_CHECKPOINT_EVERY = "RUNNER_CHECKPOINT_EVERY"
RUN_DIR_FLAG = "--run-dir"
AUTO = "auto"


def split_run_dir(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The value of ``--run-dir DIR`` (or ``--run-dir=DIR``; the last one wins) in ``argv``, and
    ``argv`` without it, so that the job's own argument parser never sees it. A ``--run-dir`` with
    no value is a usage error."""
    found: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":  # what follows belongs to the job
            rest.extend(argv[i:])
            break
        if a == RUN_DIR_FLAG:
            if i + 1 >= len(argv) or not argv[i + 1]:
                raise UserError(f"{RUN_DIR_FLAG} needs a directory", ExitCode.USAGE)
            found, i = argv[i + 1], i + 2
            continue
        if a.startswith(RUN_DIR_FLAG + "="):
            found = a.split("=", 1)[1]
            if not found:
                raise UserError(f"{RUN_DIR_FLAG} needs a directory", ExitCode.USAGE)
        else:
            rest.append(a)
        i += 1
    return found, rest


def choose_run_dir(given: str | None, env: Mapping[str, str], flag: str | None) -> str:
    """The run directory: ``run_dir=`` in the code, else the supervisor's ``RUNNER_RUN_DIR``, else
    ``--run-dir``. Two that name different directories are refused: under a supervisor the job must
    write where the supervisor watches."""
    supervised = env.get(ENV_RUN_DIR) or None
    chosen = given or supervised or flag
    if chosen is None:
        raise UserError(f"no run directory: give {RUN_DIR_FLAG} DIR, or run the job under 'python -m runner'",
                        ExitCode.USAGE)
    for what, other in ((f"{RUN_DIR_FLAG}", flag), (ENV_RUN_DIR, supervised)):
        if other is not None and os.path.abspath(other) != os.path.abspath(chosen):
            raise UserError(f"the run directory is {chosen}, but {what} names {other}", ExitCode.BAD_CONFIG)
    return chosen


def argv_identity(argv0: str, args: Sequence[str]) -> dict[str, Any]:
    """A job's identity when it gives none: the script's name and its arguments (``--run-dir``
    already taken out), as ``job.json`` records them."""
    return {"job": os.path.basename(argv0) or "python", "args": list(args)}


def parse_every(text: str | None) -> int | str | None:
    """``RUNNER_CHECKPOINT_EVERY``'s value: an int of 0 or more, ``auto``, or None when unset."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text == AUTO:
        return AUTO
    try:
        every = int(text)
    except ValueError:
        every = -1
    if every < 0:
        raise UserError(f"{ENV_CHECKPOINT_EVERY}={text!r}: expected a whole number of steps or 'auto'",
                        ExitCode.BAD_CONFIG)
    return every
