"""The standby handshake. A spare warms up (imports, data, model) touching nothing shared, says it is
ready in ``events.jsonl`` and waits on stdin for the supervisor's go line, ``{"attempt": N, "env":
{...}}``, once the worker it replaces is gone; an empty line or EOF means it is not needed."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import BinaryIO

from rundir.names import ENV_ATTEMPT

from .files import EventLog

__all__ = ["go_env", "wait_for_go"]


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


def wait_for_go(events: EventLog, base: Mapping[str, str], stdin: BinaryIO | None = None) -> dict[str, str]:
    """Say the spare is ready, then block until the go line; exit 0 if none comes."""
    events.standby_ready()
    line = (stdin or sys.stdin.buffer).readline()
    env = go_env(line, base)
    if env is None:
        raise SystemExit(0)
    return env
