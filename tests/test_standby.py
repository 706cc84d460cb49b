"""runner/standby.py: the warm spare's bookkeeping with a fake launcher: what a spare is started with,
how the run is handed to it (the go line, its log renamed to the attempt's), and when it is lost and
the attempt starts cold instead. The spare itself, end to end: tests/e2e/test_standby.py."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rundir.contract import ENV_CHAOS_ARM
from rundir.events import EventKind
from rundir.names import ENV_ATTEMPT, ENV_STANDBY
from runner.standby import Standby, go_line


class Spare:
    """A started spare that records what it is told and done to."""

    def __init__(self, pid: int, *, alive: bool = True, listening: bool = True) -> None:
        self.pid, self.forked, self.alive, self.listening = pid, False, alive, listening
        self.returncode: int | None = None if alive else -9
        self.told: list[bytes] = []
        self.killed = False

    def poll(self) -> bool:
        return not self.alive

    def tell(self, data: bytes) -> bool:
        self.told.append(data)
        return self.listening

    def kill(self) -> None:
        self.killed, self.alive, self.returncode = True, False, -9


class Launcher:
    def __init__(self, *spares: Spare) -> None:
        self.spares = list(spares)
        self.started: list[tuple[dict[str, str], Path, bool]] = []

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Spare:
        self.started.append((dict(env), log, stdin_pipe))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("spare's output\n")
        return self.spares.pop(0)


def standby(tmp_path: Path, *spares: Spare) -> tuple[Standby, Launcher, list[tuple[EventKind, dict[str, Any]]]]:
    launcher, records = Launcher(*spares), []
    env = {"PYTHONPATH": "/x", ENV_ATTEMPT: "1", ENV_CHAOS_ARM: "{}"}
    sb = Standby(launcher, tmp_path, env, lambda kind, **f: records.append((kind, f)))  # type: ignore[arg-type]
    return sb, launcher, records


@pytest.mark.parametrize(("attempt", "env"), [(2, {}), (7, {ENV_CHAOS_ARM: '{"kind": "crash", "step": 3}'})])
def test_go_line(attempt: int, env: dict[str, str]) -> None:
    line = go_line(attempt, env)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"attempt": attempt, "env": env}


def test_a_spare_starts_as_a_standby_with_a_pipe_and_no_attempt_of_ours(tmp_path: Path) -> None:
    sb, launcher, records = standby(tmp_path, Spare(41))
    assert not sb.up
    sb.spawn()
    (env, log, pipe), = launcher.started
    assert env[ENV_STANDBY] == "1" and env["PYTHONPATH"] == "/x" and pipe
    assert ENV_ATTEMPT not in env and ENV_CHAOS_ARM not in env  # given with the go line instead
    assert log.parent == tmp_path / "logs" and log.name.startswith("standby-")
    assert sb.up and records == [(EventKind.STANDBY_SPAWNED, {"pid": 41, "forked": False})]


def test_taking_the_spare_tells_it_the_attempt_and_renames_its_log(tmp_path: Path) -> None:
    spare = Spare(41)
    sb, _, records = standby(tmp_path, spare)
    sb.spawn()
    attempt_log = tmp_path / "logs" / "attempt-002.log"
    assert sb.take(2, {ENV_ATTEMPT: "2"}, attempt_log) is spare
    assert spare.told == [go_line(2, {ENV_ATTEMPT: "2"})]
    assert attempt_log.read_text() == "spare's output\n" and not list((tmp_path / "logs").glob("standby-*"))
    assert not sb.up and len(records) == 1  # nothing lost
    assert sb.take(3, {}, tmp_path / "logs" / "attempt-003.log") is None  # taken: none left


@pytest.mark.parametrize(("spare", "killed"), [
    (Spare(41, alive=False), False),  # it died while waiting
    (Spare(41, listening=False), True),  # it cannot be told: killed, not left waiting
])
def test_a_lost_spare_is_recorded_and_the_attempt_starts_cold(tmp_path: Path, spare: Spare, killed: bool) -> None:
    sb, _, records = standby(tmp_path, spare)
    sb.spawn()
    assert sb.take(2, {}, tmp_path / "logs" / "attempt-002.log") is None
    assert records[-1] == (EventKind.STANDBY_LOST, {"pid": 41, "returncode": -9})
    assert spare.killed is killed and not sb.up


def test_discard_kills_the_spare(tmp_path: Path) -> None:
    spare = Spare(41)
    sb, _, _ = standby(tmp_path, spare)
    sb.discard()  # none yet: nothing to do
    sb.spawn()
    sb.discard()
    assert spare.killed and not sb.up
