"""Which launcher a run gets, and the fork launcher's events and its one fall-back to exec, with a fake
fork server and a fake exec launcher: no process is started."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rundir.events import EventKind
from runner.forkserver import ForkServerError, ForkTarget
from runner.launcher import ExecLauncher, ForkLauncher, Worker, launcher_for
from tests.supervisor_fakes import SILENT, Clock, FakeLauncher

PY = sys.executable


class FakeServer:
    """A fork server that forks nothing: it fails with ``error``, or answers with our own pid."""

    def __init__(self, error: str | None = None, import_s: float | None = None) -> None:
        self.pid, self.error, self.import_s, self.closed = 7777, error, import_s, False
        self.requests: list[tuple[ForkTarget, dict[str, str]]] = []

    def spawn(self, target: ForkTarget, env: Mapping[str, str], *, stdin: int, log: int, title: str = "",
              timeout: float = 300.0) -> int:
        self.requests.append((target, dict(env)))
        if self.error is not None:
            raise ForkServerError(self.error)
        self.import_s = 1.25  # it finished its imports while we waited
        return os.getpid()

    @property
    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self.notes: list[str] = []

    def __call__(self, kind: EventKind, /, **fields: Any) -> None:
        self.events.append((kind, fields))


def fork_launcher(tmp_path: Path, server: FakeServer, rec: Recorder) -> tuple[ForkLauncher, FakeLauncher]:
    launcher = ForkLauncher((PY, "-m", "job", "--x"), ForkTarget("module", "job", ("--x",)), ("job",),
                            run_dir=tmp_path, env={}, timeout=9.0, record=rec, note=rec.notes.append,
                            server=server)  # type: ignore[arg-type]
    fake_exec = FakeLauncher(tmp_path, Clock(), [SILENT])
    launcher.exec = fake_exec  # type: ignore[assignment]
    return launcher, fake_exec


def attempt_env(n: int) -> dict[str, str]:
    return {"RUNNER_ATTEMPT": str(n)}


@pytest.mark.parametrize(("cmd", "preload", "kind"), [
    ((PY, "-m", "model", "--run-dir", "d"), ("model.train",), ForkLauncher),
    ((PY, "train.py"), ("paddle",), ForkLauncher),
    ((PY, "-m", "model"), (), ExecLauncher),  # nothing to preload
    (("bash", "-c", "python -m model"), ("model.train",), ExecLauncher),  # not this interpreter
    ((PY, "-c", "print(1)"), ("model.train",), ExecLauncher),  # nothing a fork can run
])
def test_launcher_for_picks_fork_or_exec(tmp_path: Path, cmd: tuple[str, ...], preload: tuple[str, ...],
                                         kind: type) -> None:
    launcher = launcher_for(cmd, preload, run_dir=tmp_path, env={}, timeout=1.0, record=Recorder(),
                            note=print)
    assert type(launcher) is kind


def test_a_given_server_is_announced_when_the_run_opens_and_closed_with_it(tmp_path: Path) -> None:
    rec, server = Recorder(), FakeServer(import_s=0.5)
    launcher, _ = fork_launcher(tmp_path, server, rec)
    launcher.open()
    assert rec.events == [(EventKind.FORK_SERVER_STARTED, {"pid": 7777, "preload": ["job"]})]
    launcher.close()
    assert server.closed


def test_forked_workers_and_the_server_ready_event(tmp_path: Path) -> None:
    rec, server = Recorder(), FakeServer()
    launcher, fake_exec = fork_launcher(tmp_path, server, rec)
    workers: list[Worker] = [launcher.start(attempt_env(n), tmp_path / f"a{n}.log") for n in (1, 2)]
    try:
        assert [w.forked for w in workers] == [True, True] and fake_exec.workers == []
        assert [env for _, env in server.requests] == [attempt_env(1), attempt_env(2)]
        # Ready once: the first fork waited for the imports.
        assert rec.events == [(EventKind.FORK_SERVER_READY, {"pid": 7777, "import_s": 1.25})]
    finally:
        for w in workers:  # handles on our own pid: close them, signal nothing
            pidfd = getattr(w, "pidfd", None)
            if pidfd is not None:
                os.close(pidfd)


def test_a_failed_server_falls_back_to_exec_once(tmp_path: Path) -> None:
    rec, server = Recorder(), FakeServer(error="the fork server exited")
    launcher, fake_exec = fork_launcher(tmp_path, server, rec)
    first = launcher.start(attempt_env(1), tmp_path / "a1.log")
    second = launcher.start(attempt_env(2), tmp_path / "a2.log")
    assert (first.forked, second.forked) == (False, False)
    assert [w.env for w in fake_exec.workers] == [attempt_env(1), attempt_env(2)]
    assert len(server.requests) == 1  # not asked again
    assert server.closed
    assert rec.events == [(EventKind.FORK_SERVER_FAILED, {"pid": 7777, "error": "the fork server exited"})]
    assert rec.notes == ["the fork server exited; starting workers with exec"]

