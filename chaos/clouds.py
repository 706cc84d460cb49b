"""The fake clouds of a chaos trial's ``notice`` faults, and the trial's loop of supervisors.

Each supervisor the trial starts stands for a machine. One that a notice fault will hit watches a
fresh fake metadata server (:mod:`chaos.cloudfake`) of that fault's cloud on 127.0.0.1, which the
fault turns to preempted. On the notice the supervisor saves the state and exits 75 (preempted,
state saved, run me elsewhere) instead of restarting; the trial then starts a new supervisor on the
same run directory, as an orchestrator would on the next machine, until one exits for another reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from rundir.exitcodes import ExitCode
from runner.launcher import Launcher
from runner.notice import NoticeChoice
from runner.policy import AttemptResult
from runner.preempt import NoticeSettings
from runner.supervisor import Outcome, Supervisor, WorkerSpec
from runner.view import View

from .cloudfake import FakeAws, FakeAzure, FakeGcp, FakeMetadataServer
from .faults import NOTICE_WINDOW_S, Fault, FaultKind
from .inject import Injector

__all__ = ["CloudFakes", "supervise_through_notices", "POLL_S"]

#: How often a supervisor polls a fake cloud (the real clouds ask for seconds; the window here is 5 s).
POLL_S = 0.05

_FAKES: Mapping[str, Callable[[], FakeMetadataServer]] = {"aws": FakeAws, "gcp": FakeGcp, "azure": FakeAzure}


class CloudFakes:
    """The fake metadata server of the machine the current supervisor runs on, if a notice will hit it."""

    def __init__(self, make: Mapping[str, Callable[[], FakeMetadataServer]] = _FAKES) -> None:
        self.make = make
        self.current: tuple[str, FakeMetadataServer] | None = None
        self.started: list[str] = []  # the clouds of the machines so far

    def settings_for(self, pending: Sequence[Fault], otherwise: NoticeSettings) -> NoticeSettings:
        """A new machine: a fresh fake of the cloud of the next notice fault to come, if any is."""
        self.close()
        nxt = next((f for f in pending if f.kind is FaultKind.NOTICE), None)
        if nxt is None:
            return otherwise
        cloud = str(nxt.detail.get("cloud"))
        server = self.make[cloud]()
        self.current = (cloud, server)
        self.started.append(cloud)
        return NoticeSettings(choice=NoticeChoice(cloud), metadata_url=server.url, poll_s=POLL_S)

    def trigger(self, fault: Fault) -> tuple[str, float | None]:
        """The fault's notice: this machine's fake turns to preempted, the reclaim ``window_s`` later."""
        cloud = fault.detail.get("cloud")
        if self.current is None or self.current[0] != cloud:
            return f"not applied: no {cloud} metadata server on this machine", None
        server = self.current[1]
        window = float(fault.detail.get("window_s", NOTICE_WINDOW_S))
        server.preempt(0.0, window)
        return f"{cloud} metadata server: preempted, reclaimed in {window:g} s", server.deadline

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None


class _KeptOpen:
    """A view that outlives the supervisors that use it one after another (each closes its view)."""

    def __init__(self, view: View) -> None:
        self.view = view

    def attempt_started(self, attempt: int, pid: int) -> None:
        self.view.attempt_started(attempt, pid)

    def resumed(self, attempt: int, step: int, total: int | None) -> None:
        self.view.resumed(attempt, step, total)

    def step(self, rec: dict[str, Any], restarts: int) -> None:
        self.view.step(rec, restarts)

    def attempt_ended(self, r: AttemptResult) -> None:
        self.view.attempt_ended(r)

    def note(self, text: str) -> None:
        self.view.note(text)

    def close(self) -> None:
        pass


def supervise_through_notices(spec: WorkerSpec, injector: Injector, fakes: CloudFakes, view: View,
                              otherwise: NoticeSettings, *, launcher: Launcher | None = None) -> list[Outcome]:
    """Supervise the job until a supervisor exits for another reason than a notice (at most one
    supervisor more than there are notice faults); each supervisor's outcome, in order."""
    kept = _KeptOpen(view)
    limit = 1 + sum(f.kind is FaultKind.NOTICE for f in injector.pending)
    outcomes: list[Outcome] = []
    try:
        while len(outcomes) < limit:
            settings = fakes.settings_for(injector.pending, otherwise)
            outcome = Supervisor(replace(spec, notice=settings), view=kept, chaos=injector, launcher=launcher).run()
            outcomes.append(outcome)
            if outcome.code is not ExitCode.PREEMPTED:
                break
            view.note(f"{outcome.message}: a new supervisor takes over the run directory")
    finally:
        fakes.close()
        view.close()
    return outcomes
