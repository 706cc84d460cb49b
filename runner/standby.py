"""The warm standby: a spare worker started while the current one trains, which takes over the next
attempt without paying the framework's start-up.

A spare is an ordinary worker started with ``RUNNER_STANDBY=1`` and a pipe on its stdin. It prepares
(imports, builds the job), says ``standby-ready``, and waits. To take over it gets one JSON line,
``{"attempt": N, "env": {...}}``, and becomes attempt N with those variables (chaos arms faults
through them); the end of its stdin without that line ends it. A spare that died before it was
needed, or cannot be told, is ``standby-lost`` and the attempt starts cold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from rundir.events import EventKind
from rundir.names import ENV_STANDBY, worker_env

from .launcher import Launcher, Record, Worker

__all__ = ["Standby", "go_line"]


def go_line(attempt: int, env: Mapping[str, str]) -> bytes:
    """The line that hands attempt ``attempt`` to a spare."""
    return (json.dumps({"attempt": attempt, "env": dict(env)}) + "\n").encode()


class Standby:
    """At most one spare at a time, started through the run's launcher."""

    def __init__(self, launcher: Launcher, run_dir: Path, env: Mapping[str, str], record: Record) -> None:
        self.launcher = launcher
        self.logs = Path(run_dir) / "logs"
        self.env = dict(env)  # the spec's: the worker's environment is built from it at each spawn
        self.spare: Worker | None = None
        self.log = self.logs / "standby.log"
        self._record = record
        self._spawned = 0
        self._failed = False  # a spare failed to start since the last attempt began

    @property
    def up(self) -> bool:
        """A spare was started and not yet taken or discarded (it may have died since)."""
        return self.spare is not None

    @property
    def can_spawn(self) -> bool:
        """No spare is up, and none failed to start since the last attempt began."""
        return self.spare is None and not self._failed

    def spawn(self) -> None:
        """Start a spare. One that cannot start (its log on a full disk) is ``standby-lost``, and no
        other is tried until the next attempt takes over."""
        env = worker_env(self.env)
        env[ENV_STANDBY] = "1"
        self._spawned += 1
        log = self.logs / f"standby-{os.getpid()}-{self._spawned:03d}.log"
        try:
            self.spare = self.launcher.start(env, log, stdin_pipe=True)
        except OSError as exc:
            self._failed = True
            self._record(EventKind.STANDBY_LOST, pid=None, returncode=None, error=str(exc))
            return
        self.log = log
        self._record(EventKind.STANDBY_SPAWNED, pid=self.spare.pid, forked=self.spare.forked)

    def take(self, attempt: int, env: Mapping[str, str], log: Path) -> Worker | None:
        """Hand the run to the spare, if a live one is up: it becomes attempt ``attempt`` with ``env``
        on top of its own, logging to ``log``. None if there is none to take."""
        spare, self.spare, self._failed = self.spare, None, False
        if spare is None:
            return None
        if spare.poll():
            self._record(EventKind.STANDBY_LOST, pid=spare.pid, returncode=spare.returncode)
            return None
        os.replace(self.log, log)  # the spare keeps writing to the same file, now the attempt's log
        if not spare.tell(go_line(attempt, env)):
            spare.kill()
            self._record(EventKind.STANDBY_LOST, pid=spare.pid, returncode=spare.returncode)
            return None
        return spare

    def discard(self) -> None:
        """Kill the spare, if any: the run is over."""
        if self.spare is not None:
            self.spare.kill()
            self.spare = None
