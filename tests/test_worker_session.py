"""The checkpoint session (runner/worker/session.py). Through the worker, on real files and a real
writer process: the training thread copies the state and goes on, the writer commits it, one
checkpoint at a time, and the writer's errors reach the training thread; chaos stops one in the
middle; the real job's capture is saved while training goes on. Then the session's own bookkeeping -
stall, cost, durability, held copies - with a fake writer and a fake clock.

The writer is held with SIGSTOP where a test needs a checkpoint in flight. Every wait here is bounded;
nothing is timed."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from safetensors.numpy import load as st_load

from checkpoint.objects import StoreError
from checkpoint.state import StateArrays, TrainState, params_digest
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name
from checkpoint.writer import Saved, WriterError
from rundir.contract import ARM_CHECKPOINT_WRITE, Arm
from runner.worker import (
    ENV_ATTEMPT,
    ENV_CHAOS_ARM,
    ENV_STANDBY,
    EVENTS,
    FINAL,
    PAUSED_EVENT,
    PAUSED_PHASE,
    Worker,
    read_heartbeat,
)
from runner.worker.faults import FaultPoints
from runner.worker.files import EventLog
from runner.worker.session import CheckpointSession
from tests.helpers.paddle_model import address, tiny, train_steps
from tests.helpers.processes import gone, start, stopped, wait_for
from tests.helpers.readers import events

WAIT = 60.0  # seconds: a bound for things that should take milliseconds on an idle machine
BRIEF = 0.3  # seconds: how long a test gives something that must not happen to happen anyway
STATE_FILE = "state.safetensors"
RNG_FILE = "rng.safetensors"


def manifest(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / checkpoint_name(step) / MANIFEST


class Snap:
    """The state after ``step`` steps: one small array, its digest, and a late part like the RNG states."""

    def __init__(self, step: int) -> None:
        self.step = step

    def arrays(self) -> StateArrays:
        step = self.step

        def late() -> StateArrays:
            return StateArrays({RNG_FILE: {"keys": np.arange(step, step + 5, dtype=np.uint32)}}, {"rng": step})

        return StateArrays({STATE_FILE: {"x": np.full(4, step, dtype=np.float32)}}, {"step": step},
                           {"x_sha256": STATE_FILE}, late=late)


class Capture:
    """A ``capture`` callable that records that, on which thread, and with which checkpoints committed it ran."""

    def __init__(self, step: int, run_dir: Path | None = None) -> None:
        self.step = step
        self.run_dir = run_dir
        self.called = threading.Event()
        self.thread: threading.Thread | None = None
        self.committed_then: list[str] | None = None

    def __call__(self) -> Snap:
        self.thread = threading.current_thread()
        if self.run_dir is not None:
            self.committed_then = CheckpointStore(LocalStorage(self.run_dir)).committed()
        self.called.set()
        return Snap(self.step)


def assert_holds(worker: Worker, step: int) -> None:
    """The checkpoint of ``step`` verifies and holds what ``Snap(step)`` gave, the late part included."""
    ckpt = worker.store.verify(checkpoint_name(step))
    x = st_load(ckpt.files[STATE_FILE])["x"]
    assert np.array_equal(x, np.full(4, step, dtype=np.float32))
    assert np.array_equal(st_load(ckpt.files[RNG_FILE])["keys"], np.arange(step, step + 5, dtype=np.uint32))
    assert dict(ckpt.meta) == {"step": step, "rng": step, "x_sha256": params_digest({"x": x})}


def writer_stopped(worker: Worker) -> AbstractContextManager[Callable[[], None]]:
    """The worker's writer process held with SIGSTOP until ``release()``, or the block ends."""
    writer = worker._session.writer
    assert writer is not None, "an active worker has started its writer"
    return stopped(writer.pid)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    done, errors = threading.Event(), []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done, errors


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    """A worker that has restored (nothing to restore): its writer process is running."""
    clean_env(monkeypatch)
    w = Worker(tmp_path / "run", handle_signals=False)
    assert w.restore() is None
    yield w
    w.close()


# -- the writer process ------------------------------------------------------------------------------


def test_checkpoint_returns_before_the_commit_and_the_next_one_waits_for_it(worker: Worker) -> None:
    run_dir = worker.run_dir
    with writer_stopped(worker) as release:
        cap1 = Capture(4)
        worker.checkpoint(4, cap1)  # returns although the writer cannot commit anything
        assert cap1.called.is_set() and cap1.thread is threading.current_thread()  # the copy: on this thread
        assert not manifest(run_dir, 4).exists()
        assert worker.store.committed() == []
        assert events(run_dir, "checkpoint-saved", strict=True) == []
        assert worker.cadence.last == 4  # the cadence counts it from the moment of the copy

        # A second checkpoint waits for the first before it even captures the state.
        cap2 = Capture(8, run_dir)
        t, done, errors = in_thread(lambda: worker.checkpoint(8, cap2))
        assert not cap2.called.wait(BRIEF), "the second checkpoint captured while the first was in flight"
        assert not done.is_set()
        release()
        t.join(WAIT)
    assert done.is_set(), "the second checkpoint() did not return after the first was committed"
    assert not errors, errors
    assert cap2.committed_then == [checkpoint_name(4)]  # the first was committed before the second began

    worker.flush_checkpoints()
    assert worker.store.committed() == [checkpoint_name(4), checkpoint_name(8)]
    assert_holds(worker, 4)
    assert_holds(worker, 8)
    latest = worker.store.load_latest()
    assert latest is not None and latest.step == 8
    assert [e["step"] for e in events(run_dir, "checkpoint-saved", strict=True)] == [4, 8]


def test_flush_waits_for_the_commit(worker: Worker) -> None:
    with writer_stopped(worker) as release:
        worker.checkpoint(3, Capture(3))
        t, done, errors = in_thread(worker.flush_checkpoints)
        assert not done.wait(BRIEF), "flush_checkpoints() returned while the writer was stopped"
        assert not manifest(worker.run_dir, 3).exists()
        release()
        t.join(WAIT)
    assert done.is_set() and not errors, errors
    assert manifest(worker.run_dir, 3).exists()
    assert worker.store.committed() == [checkpoint_name(3)]
    assert_holds(worker, 3)


def test_flush_with_nothing_pending_returns_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    with Worker(tmp_path / "run", handle_signals=False) as w:
        w.flush_checkpoints()  # no writer yet
        w.restore()
        w.flush_checkpoints()  # a writer with nothing in flight
        w.flush_checkpoints()
        assert w.store.committed() == []


def test_a_writer_error_surfaces_from_the_next_flush_once(worker: Worker) -> None:
    blocker = worker.run_dir / "checkpoints"
    blocker.write_bytes(b"")  # a file: the writer cannot make the checkpoints directory
    worker.checkpoint(5, Capture(5))  # the error happens later, in the writer
    with pytest.raises(WriterError, match="checkpoint after step 5"):
        worker.flush_checkpoints()
    assert events(worker.run_dir, "checkpoint-saved", strict=True) == []
    # Raised once: the writer goes on, and the next checkpoint works.
    worker.flush_checkpoints()
    blocker.unlink()
    worker.checkpoint(6, Capture(6))
    worker.flush_checkpoints()
    assert worker.store.committed() == [checkpoint_name(6)]
    assert_holds(worker, 6)


def test_a_writer_error_surfaces_from_the_next_checkpoint_before_it_captures(worker: Worker) -> None:
    (worker.run_dir / "checkpoints").write_bytes(b"")
    worker.checkpoint(5, Capture(5))
    cap = Capture(10)
    with pytest.raises(WriterError, match="checkpoint after step 5"):
        worker.checkpoint(10, cap)
    assert not cap.called.is_set()  # it failed before taking another copy
    assert events(worker.run_dir, "checkpoint-saved", strict=True) == []


def test_a_writer_error_keeps_the_job_from_completing_and_the_worker_still_closes(worker: Worker) -> None:
    (worker.run_dir / "checkpoints").write_bytes(b"")
    worker.checkpoint(5, Capture(5))
    assert worker._session.writer is not None
    writer_pid = worker._session.writer.pid
    with pytest.raises(WriterError, match="checkpoint after step 5") as raised:
        worker.complete(steps=5)
    assert not (worker.run_dir / FINAL).exists()
    assert events(worker.run_dir, "job-completed", strict=True) == []
    worker.close()  # with the error (and its traceback) still held, as while it propagates out of `with`
    assert raised.value is not None
    assert gone(writer_pid)


def test_complete_waits_for_the_last_checkpoint(worker: Worker) -> None:
    with writer_stopped(worker) as release:
        worker.checkpoint(9, Capture(9))
        t, done, errors = in_thread(lambda: worker.complete(steps=9))
        assert not done.wait(BRIEF)
        assert not (worker.run_dir / FINAL).exists()
        release()
        t.join(WAIT)
    assert done.is_set() and not errors, errors
    assert worker.store.committed() == [checkpoint_name(9)]
    kinds = [e["event"] for e in events(worker.run_dir, strict=True)]
    assert kinds.index("checkpoint-saved") < kinds.index("job-completed")


def test_wait_true_persists_in_this_process(worker: Worker) -> None:
    with writer_stopped(worker):  # the writer could not do it
        cap = Capture(7)
        worker.checkpoint(7, cap, wait=True)
        assert cap.thread is threading.current_thread()
        assert manifest(worker.run_dir, 7).exists()  # durable when checkpoint() returns
        assert_holds(worker, 7)
    (ev,) = events(worker.run_dir, "checkpoint-saved", strict=True)
    assert ev["asynchronous"] is False and ev["pid"] == worker.pid and "writer_pid" not in ev


def test_wait_true_after_an_async_one_writes_both_in_order(worker: Worker) -> None:
    with writer_stopped(worker) as release:
        worker.checkpoint(3, Capture(3))
        cap4 = Capture(4, worker.run_dir)
        t, done, errors = in_thread(lambda: worker.checkpoint(4, cap4, wait=True))
        assert not cap4.called.wait(BRIEF), "the durable checkpoint did not wait for the one in flight"
        release()
        t.join(WAIT)
    assert done.is_set() and not errors, errors
    assert cap4.committed_then == [checkpoint_name(3)]
    assert worker.store.committed() == [checkpoint_name(3), checkpoint_name(4)]
    assert [(e["step"], e["asynchronous"]) for e in events(worker.run_dir, "checkpoint-saved", strict=True)] == [
        (3, True), (4, False)]


def test_close_lets_the_writer_commit_what_it_has_and_stops_it(worker: Worker) -> None:
    assert worker._session.writer is not None
    writer = psutil.Process(worker._session.writer.pid)
    worker.checkpoint(5, Capture(5))
    worker.close()
    assert manifest(worker.run_dir, 5).exists()
    assert_holds(worker, 5)
    assert not writer.is_running()


# -- what the events say ---------------------------------------------------------------------------------


def test_checkpoint_saved_events_carry_stall_persist_asynchronous_and_writer_pid(worker: Worker) -> None:
    assert worker._session.writer is not None
    writer_pid = worker._session.writer.pid
    worker.checkpoint(2, Capture(2))
    worker.flush_checkpoints()
    assert worker.cadence.persist_s > 0  # the writer's answer reaches the cadence
    worker.checkpoint(4, Capture(4), wait=True)
    worker.save_checkpoint(6, {"state.bin": b"six"}, {"step": 6})

    evs = events(worker.run_dir, "checkpoint-saved", strict=True)
    assert [(e["step"], e["name"], e["asynchronous"]) for e in evs] == [
        (2, checkpoint_name(2), True), (4, checkpoint_name(4), False), (6, checkpoint_name(6), False)]
    for e in evs:
        assert e["source"] == "worker" and e["attempt"] == worker.attempt and e["pid"] == worker.pid
        assert isinstance(e["stall_s"], float) and isinstance(e["persist_s"], float)
        assert e["stall_s"] >= 0 and e["persist_s"] > 0
    # Committed by the writer process, which says so.
    assert evs[0]["writer_pid"] == writer_pid != worker.pid
    # Written in this process, a checkpoint's whole time is the stall.
    for e in evs[1:]:
        assert e["stall_s"] == e["persist_s"] and "writer_pid" not in e
    assert worker.store.committed() == [checkpoint_name(s) for s in (2, 4, 6)]


def test_asynchronous_checkpoints_are_durable_once_per_interval_and_synchronous_ones_always(worker: Worker) -> None:
    def durable_of(step: int) -> bool:
        return json.loads((manifest(worker.run_dir, step)).read_text())["durable"]

    worker.durable_every_s = 3600.0
    for step in (1, 2, 3):
        worker.checkpoint(step, Capture(step))
    worker.checkpoint(4, Capture(4), wait=True)
    worker.checkpoint(5, Capture(5))
    worker.durable_every_s = 0.0
    worker.checkpoint(6, Capture(6))
    worker.flush_checkpoints()
    want = {1: True, 2: False, 3: False, 4: True, 5: False, 6: True}
    evs = events(worker.run_dir, "checkpoint-saved", strict=True)
    assert {e["step"]: e["durable"] for e in evs} == want
    kept = {int(n.split("-")[1]) for n in worker.store.committed()}
    assert kept == {4, 5, 6}  # the newest three; the newest durable one is among them
    assert {s: durable_of(s) for s in kept} == {s: want[s] for s in kept}


class MadeSnap(Snap):
    """A snapshot that records when and where its arrays were made."""

    made = threading.Event()

    def arrays(self) -> StateArrays:
        type(self).made.set()
        return super().arrays()


@pytest.mark.parametrize("let_go", ["before_backward", "before_update"])
def test_once_a_job_calls_before_backward_deferred_copies_wait_for_it(worker: Worker, let_go: str) -> None:
    """A job that calls before_backward() gets its deferred copies made then, beside the backward pass,
    not at once beside the forward pass; before_update() lets one go too. One that never calls it gets
    them at once."""
    MadeSnap.made = threading.Event()
    worker.checkpoint(1, lambda: MadeSnap(1), deferred=True)
    assert MadeSnap.made.wait(WAIT)  # never called before_backward(): made at once
    worker.before_update()
    worker.before_backward()  # nothing held: nothing happens
    worker.flush_checkpoints()

    MadeSnap.made = threading.Event()
    worker.checkpoint(2, lambda: MadeSnap(2), deferred=True)
    assert not MadeSnap.made.wait(0.2)  # the forward pass runs meanwhile
    getattr(worker, let_go)()
    assert MadeSnap.made.wait(WAIT)
    worker.before_update()
    worker.flush_checkpoints()
    assert_holds(worker, 1)
    assert_holds(worker, 2)


def test_a_checkpoint_needs_an_active_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv(ENV_STANDBY, "1")
    (tmp_path / "run").mkdir()
    w = Worker(tmp_path / "run", handle_signals=False)  # a spare on standby, not the run's worker yet
    try:
        cap = Capture(1)
        with pytest.raises(RuntimeError, match=r"Worker.restore\(\)"):
            w.checkpoint(1, cap)
        with pytest.raises(RuntimeError, match=r"Worker.restore\(\)"):
            w.save_checkpoint(1, {"a": b"b"}, {})
        with pytest.raises(RuntimeError, match=r"Worker.restore\(\)"):
            w.report_step(0, loss=1.0)
        assert not cap.called.is_set()
        assert list((tmp_path / "run").iterdir()) == []
    finally:
        w.close()


# -- chaos: stopped in the middle of an asynchronous checkpoint -------------------------------------------

PAUSING_JOB = """
import sys
import numpy as np
from checkpoint.state import StateArrays
from runner.worker import Worker

class Snap:
    def __init__(self, step):
        self.step = step
    def arrays(self):
        return StateArrays({"a.safetensors": {"x": np.full(3, self.step)}, "b.safetensors": {"y": np.zeros(2)}},
                           {"step": self.step})

w = Worker(sys.argv[1], handle_signals=False)
w.restore()
w.checkpoint(2, lambda: Snap(2))
w.flush_checkpoints()
w.checkpoint(4, lambda: Snap(4))  # armed: does not return
print("checkpoint() returned", flush=True)
"""


def test_an_async_checkpoint_armed_to_pause_stays_torn_and_the_writer_dies_with_the_worker(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = start([sys.executable, "-c", PAUSING_JOB, str(run_dir)], arm={"kind": "checkpoint-write", "step": 4})
    try:
        hb = wait_for(lambda: (h := read_heartbeat(run_dir)) and h.get("phase") == PAUSED_PHASE and h,
                      proc=proc, what="the paused checkpoint")
        assert hb["step"] == 4 and hb["pid"] == proc.pid
        (writer,) = psutil.Process(proc.pid).children()
        torn = run_dir / "checkpoints" / checkpoint_name(4)
        # The worker says it is paused only once the writer has stopped between the files.
        assert (torn / "a.safetensors").is_file() and not (torn / "b.safetensors").exists()
        (paused,) = events(run_dir, PAUSED_EVENT, strict=True)
        assert (paused["step"], paused["pid"], paused["after_file"]) == (4, proc.pid, "a.safetensors")
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    assert "checkpoint() returned" not in out
    wait_for(lambda: gone(writer.pid), timeout=WAIT, what="the writer to die with the worker")
    assert not (torn / MANIFEST).exists()
    store = CheckpointStore(LocalStorage(run_dir))
    assert store.committed() == [checkpoint_name(2)]
    latest = store.load_latest()
    assert latest is not None and latest.step == 2


@pytest.fixture(scope="module")
def paddle():
    return pytest.importorskip("paddle")


class Gate:
    """Wraps a snapshot so that its ``arrays()`` waits for ``open()``: a deferred copy held back."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.thread: threading.Thread | None = None

    def wrap(self, snapshot: Any) -> Any:
        gate = self

        class Held:
            def arrays(self) -> StateArrays:
                gate.thread = threading.current_thread()
                gate.entered.set()
                assert gate.opened.wait(WAIT), "the gate was never opened"
                return snapshot.arrays()

        return Held()


@pytest.mark.parametrize("mode", ["copied at once", "deferred", "deferred, no barrier"])
def test_a_captured_train_state_saved_in_the_background_is_the_state_at_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paddle, mode: str
) -> None:
    """The real job's capture - live views of the tensors - handed to the writer process, held there
    while training goes on, restores the model, optimizer, scheduler, sample order and every RNG as they
    were at the capture.

    Deferred, the views are copied on the writer's thread while the next step runs; the job's
    ``before_update()`` holds the optimizer step until the copy is done. Without that call the
    checkpoint is not the state at capture: the barrier is what makes it exact."""
    from checkpoint import paddle_state as ps
    from checkpoint.state import MODEL_FILE
    from model.train import _capture, _epoch_order

    clean_env(monkeypatch)
    model, opt, sched = tiny(paddle)
    live, rngs = ps.LiveArrays(model, opt), ps.RngSnapshots()
    train_steps(paddle, model, opt, sched, 2)
    np.random.seed(7)
    random.seed(7)
    np.random.standard_normal()  # a Gaussian left in NumPy's cache
    data_rng = np.random.default_rng(7)
    order, data_state = _epoch_order(data_rng, 40)

    want_model = copy.deepcopy(ps.model_arrays(model))
    want_opt, want_sched = copy.deepcopy(ps.optimizer_arrays(opt))
    want_data = copy.deepcopy(data_rng.bit_generator.state)
    want_order = order.copy()
    deferred = mode != "copied at once"
    gate = Gate()

    with Worker(tmp_path / "run", handle_signals=False) as w:
        w.restore()
        snapshot = _capture(live, rngs, 2, 0, 2, order, data_state)
        assert address(snapshot.arrays().files[MODEL_FILE]["0.weight"]) == model[0].weight.data_ptr()  # views

        with writer_stopped(w):
            if deferred:
                w.checkpoint(2, lambda: gate.wrap(snapshot), deferred=True)
                assert gate.entered.wait(WAIT) and gate.thread is not threading.current_thread()
            else:
                w.checkpoint(2, lambda: snapshot)
            # The next step's forward pass draws from every RNG; then its update, behind the barrier.
            expected_draws = (paddle.randn([4]).numpy(), np.random.standard_normal(3), random.random(),
                              data_rng.permutation(40))

            def update() -> None:
                if mode != "deferred, no barrier":
                    w.before_update()
                train_steps(paddle, model, opt, sched, 3, seed=2)

            thread, done, errors = in_thread(update)
            if mode == "deferred":
                assert not done.wait(BRIEF), "the update ran while its weights were being copied"
            else:
                assert done.wait(WAIT)
            gate.opened.set()
            assert done.wait(WAIT) and not errors, errors
            if mode == "deferred":
                assert w.cadence.cost_s >= BRIEF  # the wait counts as the checkpoint's cost
            assert not np.array_equal(ps.model_arrays(model)["0.weight"], want_model["0.weight"])
            assert not manifest(w.run_dir, 2).exists()
        w.flush_checkpoints()
        ckpt = w.store.load_latest()

    assert ckpt is not None and ckpt.step == 2
    st = TrainState.from_checkpoint(ckpt)
    if mode == "deferred, no barrier":
        assert not np.array_equal(st.model["0.weight"], want_model["0.weight"])
        return
    assert sorted(st.model) == sorted(want_model) and sorted(st.optimizer) == sorted(want_opt)
    for k in want_model:
        assert np.array_equal(st.model[k], want_model[k]), k
    for k in want_opt:
        assert np.array_equal(st.optimizer[k], want_opt[k]), k
    assert dict(st.lr_scheduler) == want_sched
    assert (st.step, st.epoch, st.batch) == (2, 0, 2)
    assert ckpt.meta["params_sha256"] == params_digest(want_model)

    # Restoring it reproduces the draws made right after the capture, the data generator's included.
    rng = st.rng_state()
    ps.set_rng_states(rng)
    data_rng2 = np.random.default_rng()
    data_rng2.bit_generator.state = rng[1]["data"]
    assert rng[1]["data"] == want_data
    got = (paddle.randn([4]).numpy(), np.random.standard_normal(3), random.random(), data_rng2.permutation(40))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_draws))
    # The epoch's sample order (the job never writes it in place: each epoch gets a new permutation).
    assert np.array_equal(st.order, want_order)


# -- the session's bookkeeping, with a fake writer and a fake clock ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeWriter:
    """Stands in for the writer process: records what it is handed; its stall and its copy take the
    fake clock's time."""

    pid = 0

    def __init__(self, clock: Clock, *, stall: float = 0.0, copy_s: float = 0.0) -> None:
        self.clock, self.stall, self.copy_s = clock, stall, copy_s
        self.submitted: list[dict[str, Any]] = []
        self.in_flight: Saved | None = None
        self.copied = True
        self.released = 0
        self.closed = False
        self.persisting = False  # True: the checkpoint in flight is not committed yet

    def submit(self, step: int, state: Any, *, event: Any, started: float, pause: Any = None, durable: bool = True,
               held: bool = False) -> float:
        self.submitted.append({"step": step, "deferred": callable(state), "event": dict(event), "pause": pause,
                               "durable": durable, "held": held})
        self.in_flight = Saved(step, checkpoint_name(step), 0.5)
        self.copied = not callable(state)
        self.clock.t += self.stall
        return self.clock() - started

    def release(self) -> None:
        self.released += 1

    def committed(self) -> bool:
        return self.in_flight is not None and not self.persisting

    def wait_copied(self, timeout: float | None = None) -> bool:
        if not self.copied and timeout != 0:
            self.clock.t += self.copy_s
            self.copied = True
        return self.copied

    def wait(self, timeout: float | None = None) -> Saved | None:
        saved, self.in_flight = self.in_flight, None
        return saved

    def close(self, timeout: float = 30.0) -> None:
        self.closed = True


class Stop(Exception):
    """Raised by the fake sleep of a paused worker."""


def never(seconds: float) -> None:
    raise Stop


class Setup:
    def __init__(self, root: Path, *, stall: float = 0.0, copy_s: float = 0.0, arm: Arm | None = None) -> None:
        self.clock = Clock()
        self.writer = FakeWriter(self.clock, stall=stall, copy_s=copy_s)
        self.beats: list[tuple[str, int | None]] = []
        self.log = EventLog(root / EVENTS, pid=5, attempt=2)
        faults = FaultPoints(self.log, self.beat, arm=arm, sleep=never)
        self.session = CheckpointSession(LocalStorage(root), keep=3, events=self.log, beat=self.beat, faults=faults,
                                         start_writer=lambda: self.writer, clock=self.clock)

    def beat(self, phase: str, step: int | None = None) -> None:
        self.beats.append((phase, step))


def test_a_checkpoints_stall_is_left_out_of_its_step_and_counted_as_its_cost(tmp_path: Path) -> None:
    s = Setup(tmp_path, stall=0.3)
    s.session.steps_start()
    s.clock.t = 1.0
    assert s.session.step_done() == pytest.approx(1.0)
    s.clock.t = 2.0
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)
    assert s.clock.t == pytest.approx(2.3)
    s.clock.t = 3.0
    assert s.session.step_done() == pytest.approx(1.7)  # 3.0 - 1.0, less the 0.3 s stall
    assert (s.session.cadence.last, s.session.cadence.cost_s) == (1, pytest.approx(0.3))
    assert s.session.cadence.step_s == pytest.approx(0.9 * 1.0 + 0.1 * 1.7)
    (sub,) = s.writer.submitted
    assert sub["event"] == {"source": "worker", "attempt": 2, "pid": 5, "asynchronous": True, "deferred": False,
                            "durable": True}
    s.session.flush()  # the writer's answer: its persist time reaches the cadence
    assert s.session.cadence.persist_s == pytest.approx(0.5)
    s.session.flush()
    assert s.session.cadence.persist_s == pytest.approx(0.5)


def test_a_wait_for_a_deferred_copy_is_left_out_of_its_step_and_added_to_the_cost(tmp_path: Path) -> None:
    s = Setup(tmp_path, stall=0.1, copy_s=0.2)
    s.session.steps_start()
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=True)
    assert s.writer.submitted[0]["deferred"] and not s.writer.submitted[0]["held"]  # no before_backward() yet
    s.session.before_update()  # waits 0.2 s for the copy
    assert s.clock.t == pytest.approx(0.3)
    assert s.session.cadence.cost_s == pytest.approx(0.1 + 0.2)
    s.clock.t = 1.0
    assert s.session.step_done() == pytest.approx(0.7)
    s.session.before_update()  # nothing to wait for: at once, no cost
    assert s.session.cadence.cost_s == pytest.approx(0.3) and s.clock.t == 1.0


def test_once_before_backward_is_called_deferred_copies_are_held_for_it(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.session.before_backward()
    assert s.writer.released == 0  # no writer yet: nothing to let go
    s.session.start_writer()
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=True)
    s.session.checkpoint(2, lambda: Snap(2), wait=False, deferred=False)
    s.session.before_backward()
    assert [(x["deferred"], x["held"]) for x in s.writer.submitted] == [(True, True), (False, False)]
    assert s.writer.released == 1


def test_asynchronous_checkpoints_are_durable_once_per_interval_from_the_last_durable_one(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.session.durable_every_s = 10.0
    for step, t in enumerate((0.0, 5.0, 10.0, 12.0), 1):
        s.clock.t = t
        s.session.checkpoint(step, partial(Snap, step), wait=False, deferred=False)
    s.clock.t = 13.0
    s.session.checkpoint(5, lambda: Snap(5), wait=True, deferred=False)  # synchronous: durable, and counts
    for step, t in ((6, 22.0), (7, 23.0)):
        s.clock.t = t
        s.session.checkpoint(step, partial(Snap, step), wait=False, deferred=False)
    assert [(x["step"], x["durable"]) for x in s.writer.submitted] == [
        (1, True), (2, False), (3, True), (4, False), (6, False), (7, True)]
    assert s.beats == [("checkpoint", 5), ("train", 5)]


def test_a_synchronous_save_is_all_stall_and_says_so(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.session.steps_start()
    name = s.session.save(3, {"x.bin": b"three"}, {"step": 3})
    assert name == checkpoint_name(3) and s.session.store.committed() == [name]
    assert s.beats == [("checkpoint", 3), ("train", 3)]
    (ev,) = events(tmp_path, "checkpoint-saved", strict=True)
    assert (ev["source"], ev["attempt"], ev["pid"], ev["step"], ev["asynchronous"], ev["durable"]) == (
        "worker", 2, 5, 3, False, True)
    assert ev["stall_s"] == ev["persist_s"]
    assert s.session.cadence.last == 3
    assert s.writer.submitted == []


def test_an_asynchronous_checkpoint_armed_to_pause_hands_the_writer_its_pause_then_waits(tmp_path: Path) -> None:
    s = Setup(tmp_path, arm=Arm(ARM_CHECKPOINT_WRITE, 4))
    s.session.checkpoint(3, lambda: Snap(3), wait=False, deferred=False)
    with pytest.raises(Stop):
        s.session.checkpoint(4, lambda: Snap(4), wait=False, deferred=False)
    assert [x["pause"] for x in s.writer.submitted] == [
        None, {"source": "worker", "event": PAUSED_EVENT, "attempt": 2, "pid": 5, "step": 4}]
    assert s.writer.in_flight is None  # it waited for the writer to stop before saying it is paused
    assert s.beats == [(PAUSED_PHASE, 4)]


def test_close_stops_the_writer_once(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.session.close()  # none started
    assert s.session.start_writer() is s.writer is s.session.start_writer()
    s.session.close()
    assert s.writer.closed and s.session.writer is None


# -- with a remote store: which checkpoints go to the uploader, and when -------------------------------------


class FakeUploads:
    """Stands in for the uploader: records what it is told."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.sent: list[str] = []
        self.settled: list[str] = []
        self.fatal: str | None = None
        self.closed = False

    def notify(self, name: str, step: int, committed: float | None = None) -> None:
        self.sent.append(name)

    def check(self) -> None:
        if self.fatal is not None:
            raise StoreError(self.fatal)

    def settle(self, name: str, step: int, timeout: float | None = None) -> None:
        self.settled.append(name)

    def close(self) -> None:
        self.closed = True


def with_uploads(tmp_path: Path, every_s: float) -> tuple[Setup, FakeUploads]:
    s = Setup(tmp_path)
    s.session.uploads = uploads = FakeUploads(every_s)
    s.session.durable_every_s = 1000.0  # durability by the upload interval alone, here
    return s, uploads


def test_checkpoints_due_for_the_store_are_durable_and_go_to_the_uploader_once_committed(tmp_path: Path) -> None:
    s, up = with_uploads(tmp_path, every_s=10.0)
    for step, t in enumerate((0.0, 4.0, 9.0, 10.5, 12.0), 1):
        s.clock.t = t
        s.session.checkpoint(step, partial(Snap, step), wait=False, deferred=False)
    s.session.flush()
    # The first of the attempt is due, then one 10 s after it; the rest are not even durable.
    assert [(x["step"], x["durable"]) for x in s.writer.submitted] == [
        (1, True), (2, False), (3, False), (4, True), (5, False)]
    assert up.sent == [checkpoint_name(1), checkpoint_name(4)]


def test_a_committed_checkpoint_goes_to_the_uploader_between_steps_not_at_the_next_checkpoint(tmp_path: Path
                                                                                               ) -> None:
    s, up = with_uploads(tmp_path, every_s=10.0)
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)
    assert up.sent == []  # still in flight
    s.session.step_done()
    assert up.sent == [checkpoint_name(1)]
    s.session.flush()
    assert up.sent == [checkpoint_name(1)]  # once


def test_a_final_checkpoint_goes_at_once_due_or_not(tmp_path: Path) -> None:
    s, up = with_uploads(tmp_path, every_s=60.0)
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)
    s.clock.t = 1.0
    s.session.checkpoint(2, lambda: Snap(2), wait=False, deferred=False, final=True)
    s.clock.t = 2.0
    s.session.save(3, {"x.bin": b"three"}, {"step": 3}, final=True)  # a preemption's synchronous save
    s.session.flush()
    assert up.sent == [checkpoint_name(1), checkpoint_name(2), checkpoint_name(3)]
    assert [x["durable"] for x in s.writer.submitted] == [True, True]


def test_without_a_store_nothing_is_made_durable_for_it(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.session.durable_every_s = 1000.0
    for step in (1, 2):
        s.clock.t = float(step)
        s.session.checkpoint(step, partial(Snap, step), wait=False, deferred=False, final=step == 2)
    assert [x["durable"] for x in s.writer.submitted] == [True, True]  # the first, and the final one
    s.clock.t = 3.0
    s.session.checkpoint(3, lambda: Snap(3), wait=False, deferred=False)
    assert s.writer.submitted[-1]["durable"] is False


def test_the_end_of_the_job_waits_for_the_newest_durable_checkpoint(tmp_path: Path) -> None:
    s, up = with_uploads(tmp_path, every_s=60.0)
    s.session.durable_every_s = 10.0
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)
    s.clock.t = 11.0
    s.session.checkpoint(2, lambda: Snap(2), wait=False, deferred=False)  # durable, not due for the store
    s.clock.t = 12.0
    s.session.checkpoint(3, lambda: Snap(3), wait=False, deferred=False)  # neither
    s.session.flush()
    assert up.sent == [checkpoint_name(1)]
    s.session.settle_uploads()
    assert up.sent == [checkpoint_name(1), checkpoint_name(2)] and up.settled == [checkpoint_name(2)]
    assert s.beats[-1] == ("uploading", 2)  # a phase of its own while it waits: not a hang


def test_a_fenced_uploader_stops_the_job_at_its_next_step(tmp_path: Path) -> None:
    s, up = with_uploads(tmp_path, every_s=60.0)
    s.session.step_done()
    up.fatal = "fenced: a newer supervisor (generation 8) owns this job's store"
    with pytest.raises(StoreError) as e:
        s.session.step_done()
    assert e.value.code == 77 and str(e.value) == up.fatal
    with pytest.raises(StoreError):
        s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)


def test_close_hands_over_the_checkpoint_in_flight_then_closes_the_uploader(tmp_path: Path) -> None:
    s, up = with_uploads(tmp_path, every_s=60.0)
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)
    s.session.close()
    assert up.sent == [checkpoint_name(1)] and up.closed and s.session.uploads is None
    assert s.beats[-1] == ("uploading", None)


def test_steps_beside_a_persist_are_told_apart_for_the_cadence(tmp_path: Path) -> None:
    """The steps that run while the writer persists are averaged apart from the others, so that what the
    writer costs them counts as the checkpoint's cost; once it has committed, the steps are plain again."""
    s = Setup(tmp_path)
    s.session.steps_start()
    s.clock.t = 1.0
    s.session.step_done()  # nothing in flight
    s.session.checkpoint(1, lambda: Snap(1), wait=False, deferred=False)
    s.writer.persisting = True
    s.clock.t = 3.0
    s.session.step_done()  # 2 s, beside the persist
    s.writer.persisting = False
    s.clock.t = 4.0
    s.session.step_done()  # committed meanwhile: 1 s, plain
    s.session.flush()  # the writer's answer: a persist of 0.5 s
    c = s.session.cadence
    assert (c.idle_step_s, c.busy_step_s) == (pytest.approx(1.0), pytest.approx(2.0))
    assert c.slowdown_s() == pytest.approx(0.5 * 0.5)  # half of each step's time, for 0.5 s
