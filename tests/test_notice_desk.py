"""The supervisor's notice desk: ``auto`` detects in the background (start-up pays nothing; the figure
is measured here), what it found is said once, a watcher's notice and a signal reach the main loop,
the deadline check speaks once the cost of saving is known, and after the save Azure's event is
approved. Real HTTP to the fake clouds on 127.0.0.1; no worker process."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.cloudfake import FakeAws, FakeAzure, Mode
from rundir.classify import ExitClass
from rundir.events import EventKind
from rundir.exitcodes import ExitCode
from runner.notice import Detection, NoticeChoice, NoticeKind, NoticeSource, detect
from runner.notice_desk import NoticeDesk
from runner.policy import AttemptResult, RetryPolicy
from runner.preempt import NoticeSettings, Reaction
from runner.supervisor import Supervisor, WorkerSpec
from runner.view import PlainView
from tests.supervisor_fakes import Clock, FakeLauncher, training


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self.notes: list[str] = []

    def record(self, kind: EventKind, /, **fields: Any) -> None:
        self.events.append((kind, fields))

    def of(self, kind: EventKind) -> list[dict[str, Any]]:
        return [f for k, f in self.events if k is kind]


def desk_for(tmp_path: Path, settings: NoticeSettings, log: Log, **kw: Any) -> NoticeDesk:
    return NoticeDesk(settings, tmp_path, grace=30.0, record=log.record, note=log.notes.append, environ={}, **kw)


def wait_until(done: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        time.sleep(0.005)
    return bool(done())


@pytest.fixture
def wake() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_NONBLOCK)
    yield r, w
    os.close(r)
    os.close(w)


def test_auto_detects_in_the_background_and_says_so_once(tmp_path: Path, wake: tuple[int, int]) -> None:
    log = Log()

    def slow_detect(url: str | None, env: Any) -> Detection:
        time.sleep(0.3)  # as long as probing takes, at most
        return Detection(NoticeChoice.NONE, None, "no metadata server answered", 0.3)

    desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AUTO), log, detect_fn=slow_detect)
    t = time.perf_counter()
    desk.start(wake[1])
    took = time.perf_counter() - t
    assert took < 0.05, f"start() took {took:.3f} s: detection is not in the background"
    assert desk.take(0.0) is None and log.events == []
    assert wait_until(lambda: desk.waiting)
    assert os.read(wake[0], 16) == b"n"  # the main loop was woken
    desk.take(0.0)
    desk.take(0.0)
    desk.close()
    (found,) = log.of(EventKind.NOTICE_SOURCE_DETECTED)
    assert (found["choice"], found["endpoint"], found["signals"]) == ("none", None, [])
    assert log.notes == ["notice source: none (no metadata server answered, 300 ms)"]


def test_a_failing_detection_watches_nothing(tmp_path: Path) -> None:
    log = Log()

    def broken(url: str | None, env: Any) -> Detection:
        raise RuntimeError("bug")

    desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AUTO), log, detect_fn=broken)
    desk.start()
    assert wait_until(lambda: desk.waiting)
    desk.take(0.0)
    assert log.of(EventKind.NOTICE_SOURCE_DETECTED)[0]["reason"] == "detection failed: RuntimeError: bug"
    assert desk.watcher is None


def test_a_detection_that_ends_after_close_starts_no_watcher(tmp_path: Path, wake: tuple[int, int]) -> None:
    with FakeAws() as fake:
        def late(url: str | None, env: Any) -> Detection:
            time.sleep(0.2)
            return detect(fake.url, environ={})

        desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AUTO, metadata_url=fake.url), Log(), detect_fn=late)
        desk.start(wake[1])
        desk.close()
        time.sleep(0.4)
        assert desk.watcher is None
        with pytest.raises(BlockingIOError):
            os.read(wake[0], 16)  # and nothing was written to a pipe the supervisor may have closed


def first_spawn_s(tmp_path: Path, settings: NoticeSettings) -> float:
    """Real seconds from Supervisor.run() to its first worker's start (a fake, started at once)."""
    clock = Clock()
    launcher = FakeLauncher(tmp_path, clock, [training(0, 1)])
    spawned: list[float] = []
    start = launcher.start

    def timed(*a: Any, **k: Any) -> Any:
        spawned.append(time.perf_counter())
        return start(*a, **k)

    launcher.start = timed  # type: ignore[method-assign]
    spec = WorkerSpec(cmd=("fake",), run_dir=tmp_path, standby=False, notice=settings,
                      policy=RetryPolicy(jitter=0.0))
    sup = Supervisor(spec, view=PlainView(out=io.StringIO()), sleep=clock.sleep, launcher=launcher, clock=clock)
    t = time.perf_counter()
    assert sup.run().code is ExitCode.OK
    return spawned[0] - t


def test_auto_adds_nothing_to_the_first_workers_start(tmp_path: Path, blackhole: str) -> None:
    """The figure behind 'auto adds under 0.5 s': the probes of an unreachable metadata server run
    beside the first worker's start, not before it."""
    none = sorted(first_spawn_s(tmp_path / f"none-{i}", NoticeSettings()) for i in range(5))
    auto = sorted(first_spawn_s(tmp_path / f"auto-{i}", NoticeSettings(NoticeChoice.AUTO, metadata_url=blackhole))
                  for i in range(5))
    added = auto[2] - none[2]
    print(f"time to the first worker: none {none[2] * 1000:.1f} ms, auto {auto[2] * 1000:.1f} ms "
          f"(median of 5; auto adds {added * 1000:.1f} ms)")
    assert added < 0.05


def test_a_watched_notice_reaches_the_main_loop(tmp_path: Path, wake: tuple[int, int]) -> None:
    log = Log()
    acted: list[Any] = []

    def drained(desk: NoticeDesk) -> bool:
        p = desk.take(1.0, 3, 40)
        if p is not None:
            acted.append(p)
        return bool(acted)

    with FakeAws() as fake:
        desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AWS, metadata_url=fake.url, poll_s=0.02), log)
        desk.start(wake[1])
        fake.preempt(0.0, window_s=30.0)
        assert wait_until(lambda: drained(desk))
        time.sleep(0.1)  # polled again: the same notice is not delivered twice
        drained(desk)
        desk.close()
    assert os.read(wake[0], 64).startswith(b"n")
    (e,) = log.of(EventKind.PREEMPTION_NOTICE)
    assert (e["notice"], e["notice_kind"], e["reaction"], e["attempt"], e["last_step"]) == (
        "aws", "terminate", "act", 3, 40)
    assert e["seconds_left"] == pytest.approx(30.0, abs=1.5) and e["deadline_ok"] is None  # no cost known yet
    assert acted[0].deadline_at == pytest.approx(1.0 + e["seconds_left"], abs=0.1)
    assert "aws notice (terminate at " in log.notes[-1]
    assert log.notes[-1].endswith("stopping the worker to save its state")


def test_a_scheduler_signal_is_a_notice_of_that_scheduler(tmp_path: Path) -> None:
    log = Log()
    desk = NoticeDesk(NoticeSettings(NoticeChoice.SLURM, signal=signal.SIGUSR1), tmp_path, grace=30.0,
                      record=log.record, note=log.notes.append, environ={"SLURM_JOB_ID": "42"})
    assert desk.signals == {signal.SIGUSR1, signal.SIGTERM}
    desk.start()
    desk.on_signal(signal.SIGUSR1)
    desk.on_signal(signal.SIGTERM)
    p = desk.take(5.0, 1, 9)
    assert p is not None and p.notice.source is NoticeSource.SLURM and p.notice.kind is NoticeKind.SIGNAL
    assert p.notice.detail == {"signal": "SIGUSR1", "SLURM_JOB_ID": "42"} and p.deadline_at is None
    assert [e["reaction"] for e in log.of(EventKind.PREEMPTION_NOTICE)] == [Reaction.ACT, Reaction.RECORD]
    assert log.of(EventKind.NOTICE_SOURCE_DETECTED)[0]["signals"] == ["SIGTERM", "SIGUSR1"]


def saved(step: int, persist_s: float, t: float, durable: bool = True) -> dict[str, Any]:
    return {"event": "checkpoint-saved", "step": step, "name": f"step-{step:09d}", "persist_s": persist_s,
            "durable": durable, "time": t, "source": "worker", "attempt": 1}


@pytest.mark.parametrize(("persist_s", "ok"), [(0.5, True), (150.0, False)])
def test_the_deadline_check_speaks_once_the_cost_is_known(tmp_path: Path, persist_s: float, ok: bool) -> None:
    log = Log()
    desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AWS, metadata_url="http://127.0.0.1:9"), log)
    desk.start()
    desk.take(0.0)
    desk.observe([], [{"step": 0, "dt": 0.25}])
    assert log.of(EventKind.NOTICE_DEADLINE_CHECK) == []
    desk.observe([saved(5, 9.0, 100.0, durable=False)], [])  # not durable: not what a notice's save costs
    assert log.of(EventKind.NOTICE_DEADLINE_CHECK) == []
    desk.observe([saved(10, persist_s, 101.0)], [])
    desk.observe([saved(15, persist_s, 102.0)], [])
    desk.close()
    (check,) = log.of(EventKind.NOTICE_DEADLINE_CHECK)
    assert (check["notice"], check["window_s"], check["ok"], check["step_s"], check["checkpoint_s"]) == (
        "aws", 120.0, ok, 0.25, persist_s)
    warned = [n for n in log.notes if n.startswith("warning:")]
    assert warned == ([] if ok else ["warning: an aws notice gives 120 s; finishing a step (0.25 s) and a durable "
                                     "checkpoint (size unknown, 150.00 s) takes 150.25 s, more than the window "
                                     "less a 2 s margin: the state will not be saved in time (checkpoint less, or "
                                     "on a faster disk)"])


def test_after_the_save_azure_is_approved_and_the_figures_recorded(tmp_path: Path, wake: tuple[int, int]) -> None:
    log = Log()
    with FakeAzure() as fake:
        desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AZURE, metadata_url=fake.url, poll_s=0.02), log)
        desk.start(wake[1])
        fake.preempt(0.0, window_s=20.0)
        assert wait_until(lambda: desk.waiting and desk.watcher is not None and bool(desk.watcher.delivered))
        p = desk.take(1.0, 2, 40)
        assert p is not None
        desk.observe([saved(41, 0.1, p.notice.received + 0.3)], [])
        r = AttemptResult(attempt=2, pid=1, exit_class=ExitClass.PREEMPTED, returncode=75, signal=None,
                          resumed_from=30, last_step=40, made_progress=True, started=0.0, ended=0.0)
        code, msg = desk.conclude(r, 2.0)
        desk.close()
        assert fake.approvals == [p.notice.detail["EventId"]]
    assert code is ExitCode.PREEMPTED
    assert msg.startswith("preempted by azure notice (preempt at ") and msg.endswith(
        "): state saved at step 41; rerun on another machine to continue")
    (h,) = log.of(EventKind.NOTICE_HANDLED)
    assert (h["approved"], h["saved_step"], h["steps_lost"], h["notice_to_commit_s"], h["before_deadline"]) == (
        True, 41, 0, 0.3, True)


@pytest.mark.parametrize("mode", [Mode.HANG, Mode.GARBAGE, Mode.NOT_HTTP])
def test_a_broken_metadata_server_is_counted_never_raised(tmp_path: Path, mode: Mode) -> None:
    log = Log()
    with FakeAws() as fake:
        fake.set_mode(mode)
        desk = desk_for(tmp_path, NoticeSettings(NoticeChoice.AWS, metadata_url=fake.url, poll_s=0.02), log)
        desk.start()
        time.sleep(0.3)
        assert desk.take(0.0, 1, 1) is None
        t = time.perf_counter()
        desk.close()
        assert time.perf_counter() - t < 1.0
    assert log.of(EventKind.PREEMPTION_NOTICE) == []
    assert desk.watcher is not None and (mode is Mode.HANG or desk.watcher.errors >= 1)
