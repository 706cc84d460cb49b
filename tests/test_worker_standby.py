"""A standby spare, in this process: with ``RUNNER_STANDBY=1`` a ``Worker`` touches nothing in the run
directory until ``restore()`` reads the supervisor's go line from stdin; then it takes the worker lock
(refusing to train next to a live worker), the journal and the heartbeat, as that attempt.

The end-to-end behaviour (real processes, the supervisor handing over) is in tests/e2e/test_standby.py."""

from __future__ import annotations

import fcntl
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from checkpoint.cadence import DEFAULT_MTBF_S
from checkpoint.held import Held, RestoredFrom
from checkpoint.storage import LocalStorage
from checkpoint.store import Checkpoint, CheckpointStore
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import append_record
from rundir.names import ENV_STANDBY_MEMORY
from runner.worker import (
    ENV_ATTEMPT,
    ENV_CHAOS_ARM,
    ENV_STANDBY,
    EVENTS,
    HEARTBEAT,
    LOSSES,
    WORKER_LOCK,
    SimulatedDeviceError,
    Worker,
    read_heartbeat,
)
from runner.worker.files import EventLog
from runner.worker.standby import Restored, go_env, holder_for, restore_from, wait_for_go
from tests.helpers.readers import events, jsonl


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(ENV_STANDBY, "1")
    d = tmp_path / "run"
    d.mkdir()
    return d


def stdin_with(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def go(attempt: int, **env: str) -> bytes:
    return (json.dumps({"attempt": attempt, "env": env}) + "\n").encode()


@pytest.fixture
def held_lock(run_dir: Path) -> Iterator[int]:
    fd = os.open(run_dir / WORKER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(("line", "want"), [
    (b"", None),  # EOF: the supervisor no longer needs this spare
    (b"\n", None),
    (b"  \n", None),
    (go(3), {"BASE": "b", ENV_ATTEMPT: "3"}),
    (go(4, EXTRA="x", BASE="over"), {"BASE": "over", "EXTRA": "x", ENV_ATTEMPT: "4"}),  # the line's win
    (b'{"attempt": 5, "env": {"N": 1}}\n', {"BASE": "b", "N": "1", ENV_ATTEMPT: "5"}),  # values as strings
    (b'{"attempt": 6}\n', {"BASE": "b", ENV_ATTEMPT: "6"}),  # no variables
    (go(7, **{ENV_ATTEMPT: "99"}), {"BASE": "b", ENV_ATTEMPT: "7"}),  # the attempt is the line's own
])
def test_the_go_line_gives_the_attempts_environment(line: bytes, want: dict[str, str] | None) -> None:
    assert go_env(line, {"BASE": "b"}) == want


def test_a_spare_touches_nothing_until_restore(run_dir: Path) -> None:
    w = Worker(run_dir, handle_signals=False)
    assert w.standby and not w.active and w.attempt == 0
    w.heartbeat("loading-data")  # the job beats while it warms up: a no-op on standby
    w.close()
    assert list(run_dir.iterdir()) == []


def test_a_spare_needs_an_existing_run_directory(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(UserError) as exc:
        Worker(tmp_path / "missing", handle_signals=False)
    assert exc.value.code == ExitCode.BAD_CONFIG
    assert not (tmp_path / "missing").exists()


def test_the_go_line_makes_the_spare_that_attempt(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_with(monkeypatch, go(4, EXTRA="x"))
    with Worker(run_dir, handle_signals=False) as w:
        assert w.restore(total_steps=10) is None
        assert w.active and w.attempt == 4
        assert os.environ.get(ENV_ATTEMPT) is None  # the go line's env is the worker's, not the process's
        w.report_step(0, loss=0.5)
        # It holds the worker lock now.
        fd = os.open(run_dir / WORKER_LOCK, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        hb = read_heartbeat(run_dir)
        assert hb is not None and (hb["attempt"], hb["step"], hb["pid"]) == (4, 0, os.getpid())
    evs = events(run_dir, strict=True)
    assert [(e["source"], e["event"]) for e in evs] == [("standby", "standby-ready"), ("worker", "attempt-started")]
    assert evs[0]["pid"] == os.getpid()
    assert (evs[1]["attempt"], evs[1]["resumed_from_step"], evs[1]["total_steps"]) == (4, 0, 10)
    (rec,) = jsonl(run_dir / LOSSES)
    assert (rec["step"], rec["attempt"]) == (0, 4)


def test_the_go_line_carries_the_chaos_arm(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_with(monkeypatch, go(2, **{ENV_CHAOS_ARM: json.dumps({"kind": "crash", "step": 1})}))
    with Worker(run_dir, handle_signals=False) as w:
        w.restore()
        w.report_step(0, loss=1.0)
        with pytest.raises(SimulatedDeviceError, match="step 1"):
            w.report_step(1, loss=1.0)


def test_eof_on_stdin_exits_0_having_written_only_the_ready_event(run_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_with(monkeypatch, b"")
    w = Worker(run_dir, handle_signals=False)
    with pytest.raises(SystemExit) as exc:
        w.restore()
    assert exc.value.code == 0
    assert not w.active
    assert sorted(p.name for p in run_dir.iterdir()) == [EVENTS]
    assert [e["event"] for e in events(run_dir, strict=True)] == ["standby-ready"]


def test_the_spare_refuses_to_train_next_to_a_live_worker(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          held_lock: int) -> None:
    stdin_with(monkeypatch, go(3))
    w = Worker(run_dir, handle_signals=False)
    with pytest.raises(UserError) as exc:
        w.restore()
    assert exc.value.code == ExitCode.LOCKED == 69
    assert "in use by another worker" in str(exc.value)
    assert not w.active
    assert not (run_dir / HEARTBEAT).exists() and not (run_dir / LOSSES).exists()
    assert [e["event"] for e in events(run_dir, strict=True)] == ["standby-ready"]
    with pytest.raises(RuntimeError):
        w.report_step(0, loss=1.0)


def test_without_standby_the_worker_is_active_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)
    stdin_with(monkeypatch, b"this is never read\n")
    with Worker(tmp_path / "run", handle_signals=False) as w:
        assert w.active and not w.standby and w.attempt == 1
        w.restore()
        w.report_step(0, loss=1.0)
    assert "standby-ready" not in [e["event"] for e in events(tmp_path / "run", strict=True)]


def test_a_spare_plans_its_cadence_with_the_failure_it_replaces(run_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The job sets its cadence while the spare warms up, before the failure that the spare will
    replace has happened; ``--checkpoint-every auto`` without ``--mtbf`` must still count that failure."""
    t0 = time.time() - 100
    append_record(run_dir / EVENTS, {"time": t0, "source": "supervisor", "event": "attempt-spawned", "attempt": 1})
    w = Worker(run_dir, handle_signals=False)
    w.set_cadence("auto")  # warming up: no failure yet
    assert w.cadence.mtbf_s == DEFAULT_MTBF_S
    # Attempt 1 dies; the supervisor records it, then hands the run to this spare.
    append_record(run_dir / EVENTS, {"time": time.time(), "source": "supervisor", "event": "attempt-exited",
                                     "attempt": 1, "exit_class": "killed"})
    stdin_with(monkeypatch, go(2))
    with w:
        w.restore()
        assert w.cadence.every == "auto"
        assert w.cadence.mtbf_s == pytest.approx(time.time() - t0, abs=30)  # one failure in ~100 s


# -- the newest checkpoint in the spare's memory ----------------------------------------------------------


def commit(run_dir: Path, step: int, fill: bytes = b"p") -> str:
    return CheckpointStore(LocalStorage(run_dir)).save(step, {"model.safetensors": fill * 64}, {"step": step})


def test_wait_for_go_does_the_spares_own_work_until_the_line_comes(tmp_path: Path) -> None:
    r, w = os.pipe()
    calls: list[int] = []

    def idle() -> None:
        calls.append(1)
        if len(calls) == 3:
            os.write(w, go(5))

    with os.fdopen(r, "rb") as stdin:
        env = wait_for_go(EventLog(tmp_path / EVENTS, pid=1), {"B": "b"}, stdin, idle=idle, every=0.001)
    os.close(w)
    assert env == {"B": "b", ENV_ATTEMPT: "5"} and len(calls) == 3


@pytest.mark.parametrize(("mode", "holds"), [(None, True), ("auto", True), ("on", True), ("off", False)])
def test_the_holder_follows_the_variable(tmp_path: Path, mode: str | None, holds: bool) -> None:
    store = CheckpointStore(LocalStorage(tmp_path))
    holder = holder_for(store, {} if mode is None else {ENV_STANDBY_MEMORY: mode})
    assert (holder is not None) is holds


def test_a_bad_variable_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        holder_for(CheckpointStore(LocalStorage(tmp_path)), {ENV_STANDBY_MEMORY: "sometimes"})
    assert exc.value.code == ExitCode.USAGE


class FakeHolder:
    def __init__(self, held: Held | None, preloaded: bool = False) -> None:
        self.held, self.preloaded = held, preloaded

    def take(self) -> Held | None:
        return self.held


HELD = Held(Checkpoint(5, "step-000000005", {"f": b"x"}, {}), b"m")
DISK = Checkpoint(9, "step-000000009", {"f": b"y"}, {})


@pytest.mark.parametrize(("holder", "on_disk", "want"), [
    (None, DISK, Restored(DISK, RestoredFrom.DISK)),
    (None, None, Restored(None)),
    (FakeHolder(None), DISK, Restored(DISK, RestoredFrom.DISK)),  # nothing held, or no longer the newest
    (FakeHolder(HELD), DISK, Restored(HELD.checkpoint, RestoredFrom.MEMORY)),
    (FakeHolder(replace(HELD, applied=True), True), DISK, Restored(HELD.checkpoint, RestoredFrom.MEMORY, True)),
    (FakeHolder(None, preloaded=True), DISK, Restored(DISK, RestoredFrom.DISK)),  # the restore overwrites it all
])
def test_restore_from(holder: FakeHolder | None, on_disk: Checkpoint | None, want: Restored) -> None:
    assert restore_from(holder, lambda: on_disk) == want  # type: ignore[arg-type]


def test_a_preloaded_spare_with_no_checkpoint_left_cannot_start_afresh() -> None:
    with pytest.raises(RuntimeError, match="cannot start afresh"):
        restore_from(FakeHolder(None, preloaded=True), lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "source"), [("auto", "memory"), ("off", "disk")])
def test_the_spare_restores_from_its_memory_and_says_so(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         mode: str, source: str) -> None:
    commit(run_dir, 5)
    monkeypatch.setenv(ENV_STANDBY_MEMORY, mode)
    stdin_with(monkeypatch, go(2))
    reads: list[str] = []
    verify = CheckpointStore.verify_with_manifest

    def counted(self: CheckpointStore, name: str) -> tuple[bytes, Checkpoint]:
        reads.append(name)
        return verify(self, name)

    monkeypatch.setattr(CheckpointStore, "verify_with_manifest", counted)
    with Worker(run_dir, handle_signals=False) as w:
        ckpt = w.restore()
        assert ckpt is not None and ckpt.step == 5 and ckpt.files["model.safetensors"] == b"p" * 64
        assert not w.preapplied
    assert reads == ["step-000000005"]  # once: while it waited, or at takeover
    (started,) = events(run_dir, "attempt-started")
    assert (started["restored_from"], started["preapplied"], started["checkpoint"]) == (source, False, "step-000000005")


def test_a_preloading_spare_hands_over_a_checkpoint_already_in_the_job(run_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    commit(run_dir, 5)
    stdin_with(monkeypatch, go(2))
    applied: list[int] = []
    with Worker(run_dir, handle_signals=False) as w:
        ckpt = w.restore(preload=lambda c: applied.append(c.step))
        assert ckpt is not None and ckpt.step == 5 and ckpt.files == {} and w.preapplied
    assert applied == [5]
    (started,) = events(run_dir, "attempt-started")
    assert (started["restored_from"], started["preapplied"]) == ("memory", True)


def test_a_worker_that_is_no_spare_restores_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_STANDBY, raising=False)
    monkeypatch.delenv(ENV_ATTEMPT, raising=False)
    monkeypatch.delenv(ENV_CHAOS_ARM, raising=False)
    commit(tmp_path, 3)
    with Worker(tmp_path, handle_signals=False) as w:
        ckpt = w.restore(preload=lambda c: pytest.fail("no spare preloads"))
        assert ckpt is not None and ckpt.step == 3 and not w.preapplied
    (started,) = events(tmp_path, "attempt-started")
    assert started["restored_from"] == "disk"
