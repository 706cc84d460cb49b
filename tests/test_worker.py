"""The :class:`Worker` facade (runner/worker/api.py) over its parts: what a job sees of the run
directory through it, preemption requests, and the attributes jobs and benchmarks use. The parts have
their own tests: test_worker_files, test_worker_session, test_worker_faults, test_worker_standby."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint.cadence import Cadence
from checkpoint.store import CheckpointStore
from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from runner.worker import (
    ENV_ATTEMPT,
    ENV_CHAOS_ARM,
    ENV_STANDBY,
    EVENTS,
    FINAL,
    LOSSES,
    Worker,
    read_heartbeat,
)
from tests.helpers.readers import jsonl


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)
    return tmp_path / "run"


@pytest.fixture
def own_signals() -> Iterator[None]:
    """The test process's SIGTERM and SIGINT handlers, put back after a worker took them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_the_heartbeat_follows_the_jobs_phases(run_dir: Path) -> None:
    with Worker(run_dir, handle_signals=False) as w:

        def beat() -> tuple[str, int | None]:
            hb = read_heartbeat(run_dir)
            assert hb is not None and (hb["pid"], hb["attempt"]) == (os.getpid(), w.attempt)
            return hb["phase"], hb["step"]

        assert beat() == ("starting", None)
        w.restore()
        assert beat() == ("restoring", None)
        w.report_step(0, loss=1.0)
        assert beat() == ("train", 0)  # a new phase: at once
        w.heartbeat("evaluating", step=1)
        assert beat() == ("evaluating", 1)
        w.report_step(1, loss=1.0)
        assert beat() == ("train", 1)


def test_each_step_is_journalled_as_this_attempt(run_dir: Path) -> None:
    with Worker(run_dir, handle_signals=False) as w:
        assert w.attempt == 1 and w.active and not w.standby and w.pid == os.getpid()
        w.restore(total_steps=2)
        w.report_step(0, loss=0.25, epoch=0, batch=0, acc=0.5, lr=0.1)
    with Worker(run_dir, handle_signals=False) as w:  # run again by hand: the next attempt
        assert w.attempt == 2
        w.restore()
        w.report_step(1, loss=0.125)
    recs = jsonl(run_dir / LOSSES)
    assert [(r["step"], r["attempt"], float.fromhex(r["loss_hex"])) for r in recs] == [(0, 1, 0.25), (1, 2, 0.125)]
    assert all(r["dt"] >= 0 for r in recs)
    started = [e for e in jsonl(run_dir / EVENTS) if e["event"] == "attempt-started"]
    assert [(e["attempt"], e["total_steps"]) for e in started] == [(1, 2), (2, None)]


def test_a_second_worker_in_the_run_directory_is_refused_with_69(run_dir: Path) -> None:
    with Worker(run_dir, handle_signals=False), pytest.raises(UserError) as exc:
        Worker(run_dir, handle_signals=False)
    assert exc.value.code == ExitCode.LOCKED
    assert str(exc.value) == f"run directory {run_dir} is in use by another worker"
    with Worker(run_dir, handle_signals=False):  # the first one closed: free again
        pass


def test_another_configuration_is_refused_with_78_and_a_complete_run_is_finished(run_dir: Path) -> None:
    with Worker(run_dir, handle_signals=False) as w:
        w.bind_config({"lr": 0.1})
        assert w.finished() is None
        w.restore()
        w.complete(steps=3)
        final = w.finished()
        assert final is not None and (final["steps"], final["attempt"]) == (3, 1)
    with Worker(run_dir, handle_signals=False) as w:
        with pytest.raises(UserError) as exc:
            w.bind_config({"lr": 0.2})
        assert exc.value.code == ExitCode.BAD_CONFIG == 78
        assert w.finished() == json.loads((run_dir / FINAL).read_text())
    (done,) = [e for e in jsonl(run_dir / EVENTS) if e["event"] == "job-completed"]
    assert (done["source"], done["steps"]) == ("worker", 3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_become_a_preemption_request(run_dir: Path, own_signals: None, sig: int) -> None:
    with Worker(run_dir) as w:
        w.restore()
        assert not w.preemption_requested
        os.kill(os.getpid(), sig)
        assert w.preemption_requested  # recorded only: the job checkpoints and exits at a safe point


def test_a_preemption_can_be_requested_without_a_signal(run_dir: Path) -> None:
    """The seam for a cloud provider's notice of a coming preemption."""
    with Worker(run_dir, handle_signals=False) as w:
        assert not w.preemption_requested
        w.request_preemption("notice")
        assert w.preemption_requested


def test_event_takes_an_event_kind_or_its_name_and_nothing_else(run_dir: Path) -> None:
    with Worker(run_dir, handle_signals=False) as w:
        w.event(EventKind.PREEMPTED, step=3)
        w.event("preempted", step=4)
        with pytest.raises(ValueError):
            w.event("no-such-event")
    evs = [e for e in jsonl(run_dir / EVENTS) if e["event"] == "preempted"]
    assert [(e["source"], e["attempt"], e["step"]) for e in evs] == [("worker", 1, 3), ("worker", 1, 4)]


def test_the_facade_keeps_what_jobs_and_benchmarks_use(run_dir: Path) -> None:
    with Worker(run_dir, keep_checkpoints=2, handle_signals=False) as w:
        assert w.run_dir == run_dir and isinstance(w.store, CheckpointStore) and w.store.keep == 2
        assert isinstance(w.cadence, Cadence)
        w.durable_every_s = 0.0
        assert w.durable_every_s == 0.0 == w._session.durable_every_s
        w.set_cadence(3)
        assert w.cadence.every == 3 and w.checkpoint_due(6) and not w.checkpoint_due(7)
        w.restore()
        assert w.save_checkpoint(1, {"x.bin": b"one"}, {"step": 1}) == "step-000000001"
        w.flush_checkpoints()
        w.before_backward()
        w.before_update()
    assert not w.active
