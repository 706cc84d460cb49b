"""The standby handshake. A spare warms up (imports, data, model) touching nothing shared, says it is
ready in ``events.jsonl`` and waits on stdin for the supervisor's go line, ``{"attempt": N, "env":
{...}}``, once the worker it replaces is gone; an empty line or EOF means it is not needed.

While it waits it may do work of its own between looks at stdin (``idle``: holding the newest
checkpoint in memory, :mod:`checkpoint.held`); a go line that comes meanwhile waits in the pipe."""

from __future__ import annotations

import json
import select
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from checkpoint.held import Holder, MemoryMode, RestoredFrom, parse_mode
from checkpoint.store import Checkpoint, CheckpointStore
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_ATTEMPT, ENV_STANDBY_MEMORY

from .files import EventLog

__all__ = ["go_env", "wait_for_go", "IDLE_EVERY_S", "Restored", "holder_for", "restore_from"]

#: How often a waiting spare with work of its own looks at the run (it answers a go line at once).
IDLE_EVERY_S = 0.05


def go_env(line: bytes, base: Mapping[str, str]) -> dict[str, str] | None:
    """The environment of the attempt a go line hands over: ``base`` with the line's variables and
    attempt number on top; None for an empty line (the supervisor no longer needs this spare)."""
    if not line.strip():
        return None
    go = json.loads(line)
    env = dict(base)
    env.update({k: str(v) for k, v in go.get("env", {}).items()})
    env[ENV_ATTEMPT] = str(go["attempt"])
    return env


def _readline(stdin: BinaryIO, idle: Callable[[], None] | None, every: float) -> bytes:
    """A line from ``stdin``, calling ``idle`` first and whenever ``every`` seconds pass without one
    (once only, for a stdin that is no file, such as a test's)."""
    if idle is not None:
        idle()
        try:
            stdin.fileno()
        except (OSError, ValueError):
            return stdin.readline()
        while not select.select([stdin], [], [], every)[0]:
            idle()
    return stdin.readline()


def wait_for_go(events: EventLog, base: Mapping[str, str], stdin: BinaryIO | None = None, *,
                idle: Callable[[], None] | None = None, every: float = IDLE_EVERY_S) -> dict[str, str]:
    """Say the spare is ready, then block until the go line (calling ``idle`` meanwhile, if given);
    exit 0 if none comes."""
    events.standby_ready()
    line = _readline(stdin or sys.stdin.buffer, idle, every)
    env = go_env(line, base)
    if env is None:
        raise SystemExit(0)
    return env


@dataclass(frozen=True)
class Restored:
    """What a restore found: the checkpoint (None: start afresh), where it came from, and whether the
    job's objects hold it already (a spare's ``preload``; then its files are not kept)."""

    checkpoint: Checkpoint | None
    source: RestoredFrom | None = None
    preapplied: bool = False


def holder_for(store: CheckpointStore, env: Mapping[str, str], *, check: Callable[[Checkpoint], None] | None = None,
               preload: Callable[[Checkpoint], None] | None = None,
               release: Callable[[], None] | None = None) -> Holder | None:
    """A waiting spare's holder of the newest checkpoint, as ``RUNNER_STANDBY_MEMORY`` says (None: off)."""
    try:
        mode = parse_mode(env.get(ENV_STANDBY_MEMORY))
    except ValueError as exc:
        raise UserError(f"{ENV_STANDBY_MEMORY}: {exc}", ExitCode.USAGE) from None
    return None if mode is MemoryMode.OFF else Holder(store, mode, check=check, preload=preload, release=release)


def restore_from(holder: Holder | None, load: Callable[[], Checkpoint | None]) -> Restored:
    """Take over from the spare's held copy if it is still the newest (:meth:`Holder.take`), else
    ``load`` from disk. A spare whose job's objects were changed by a preload cannot start afresh:
    if no checkpoint verifies any more, it stops (a crash: a cold worker takes over)."""
    held = holder.take() if holder is not None else None
    if held is not None:
        return Restored(held.checkpoint, RestoredFrom.MEMORY, held.applied)
    ckpt = load()
    if ckpt is None and holder is not None and holder.preloaded:
        raise RuntimeError("no checkpoint verifies any more, and this spare's job holds one it loaded while "
                           "waiting: it cannot start afresh")
    return Restored(ckpt, None if ckpt is None else RestoredFrom.DISK)
