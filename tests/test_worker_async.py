"""Asynchronous checkpoints through the worker, on real files and a real writer process: the training
thread copies the state and goes on, the writer commits it, one checkpoint at a time, and the writer's
errors reach the training thread. Also the Paddle side: live views of the tensors, RNG snapshots that
are exact, and the real job's capture saved while training goes on.

The writer is held with SIGSTOP where a test needs a checkpoint in flight. Every wait here is bounded;
nothing is timed."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from safetensors.numpy import load as st_load

from checkpoint.state import StateArrays, TrainState, params_digest
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name
from checkpoint.writer import WriterError
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
from tests.helpers import REPO, job_env, stopped, wait_for

WAIT = 60.0  # seconds: a bound for things that should take milliseconds on an idle machine
BRIEF = 0.3  # seconds: how long a test gives something that must not happen to happen anyway
STATE_FILE = "state.safetensors"
RNG_FILE = "rng.safetensors"


def read_events(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / EVENTS
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if kind is None or r.get("event") == kind]


def manifest(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / checkpoint_name(step) / MANIFEST


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
    writer = worker._writer
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
        assert read_events(run_dir, "checkpoint-saved") == []
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
    assert [e["step"] for e in read_events(run_dir, "checkpoint-saved")] == [4, 8]


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
    assert read_events(worker.run_dir, "checkpoint-saved") == []
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
    assert read_events(worker.run_dir, "checkpoint-saved") == []


def test_a_writer_error_keeps_the_job_from_completing_and_the_worker_still_closes(worker: Worker) -> None:
    (worker.run_dir / "checkpoints").write_bytes(b"")
    worker.checkpoint(5, Capture(5))
    assert worker._writer is not None
    writer_pid = worker._writer.pid
    with pytest.raises(WriterError, match="checkpoint after step 5") as raised:
        worker.complete(steps=5)
    assert not (worker.run_dir / FINAL).exists()
    assert read_events(worker.run_dir, "job-completed") == []
    worker.close()  # with the error (and its traceback) still held, as while it propagates out of `with`
    assert raised.value is not None
    assert not alive(writer_pid)


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
    kinds = [e["event"] for e in read_events(worker.run_dir)]
    assert kinds.index("checkpoint-saved") < kinds.index("job-completed")


def test_wait_true_persists_in_this_process(worker: Worker) -> None:
    with writer_stopped(worker):  # the writer could not do it
        cap = Capture(7)
        worker.checkpoint(7, cap, wait=True)
        assert cap.thread is threading.current_thread()
        assert manifest(worker.run_dir, 7).exists()  # durable when checkpoint() returns
        assert_holds(worker, 7)
    (ev,) = read_events(worker.run_dir, "checkpoint-saved")
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
    assert [(e["step"], e["asynchronous"]) for e in read_events(worker.run_dir, "checkpoint-saved")] == [
        (3, True), (4, False)]


def test_close_lets_the_writer_commit_what_it_has_and_stops_it(worker: Worker) -> None:
    assert worker._writer is not None
    writer = psutil.Process(worker._writer.pid)
    worker.checkpoint(5, Capture(5))
    worker.close()
    assert manifest(worker.run_dir, 5).exists()
    assert_holds(worker, 5)
    assert not writer.is_running()


# -- what the events say ---------------------------------------------------------------------------------


def test_checkpoint_saved_events_carry_stall_persist_asynchronous_and_writer_pid(worker: Worker) -> None:
    assert worker._writer is not None
    writer_pid = worker._writer.pid
    worker.checkpoint(2, Capture(2))
    worker.flush_checkpoints()
    assert worker.cadence.persist_s > 0  # the writer's answer reaches the cadence
    worker.checkpoint(4, Capture(4), wait=True)
    worker.save_checkpoint(6, {"state.bin": b"six"}, {"step": 6})

    evs = read_events(worker.run_dir, "checkpoint-saved")
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
    evs = read_events(worker.run_dir, "checkpoint-saved")
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
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_JOB, str(run_dir)], cwd=REPO, text=True,
                            env=job_env(arm={"kind": "checkpoint-write", "step": 4}),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hb = wait_for(lambda: (h := read_heartbeat(run_dir)) and h.get("phase") == PAUSED_PHASE and h,
                      proc=proc, what="the paused checkpoint")
        assert hb["step"] == 4 and hb["pid"] == proc.pid
        (writer,) = psutil.Process(proc.pid).children()
        torn = run_dir / "checkpoints" / checkpoint_name(4)
        # The worker says it is paused only once the writer has stopped between the files.
        assert (torn / "a.safetensors").is_file() and not (torn / "b.safetensors").exists()
        (paused,) = read_events(run_dir, PAUSED_EVENT)
        assert (paused["step"], paused["pid"], paused["after_file"]) == (4, proc.pid, "a.safetensors")
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    assert "checkpoint() returned" not in out
    wait_for(lambda: not alive(writer.pid), timeout=WAIT, what="the writer to die with the worker")
    assert not (torn / MANIFEST).exists()
    store = CheckpointStore(LocalStorage(run_dir))
    assert store.committed() == [checkpoint_name(2)]
    latest = store.load_latest()
    assert latest is not None and latest.step == 2


# -- the Paddle side ------------------------------------------------------------------------------------


def test_the_heartbeat_is_rewritten_at_phase_changes_and_now_and_then_while_training(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While training, each step's journal line shows the worker alive: the heartbeat file is
    rewritten when the phase changes, else only once ``HEARTBEAT_EVERY_S`` has passed."""
    import runner.worker as rw

    def beat() -> tuple[str, int | None]:
        hb = read_heartbeat(worker.run_dir)
        assert hb is not None and hb["pid"] == os.getpid()
        return hb["phase"], hb["step"]

    assert beat() == ("restoring", None)
    monkeypatch.setattr(rw, "HEARTBEAT_EVERY_S", 3600.0)
    worker.report_step(0, loss=1.0)
    assert beat() == ("train", 0)  # a new phase: at once
    worker.report_step(1, loss=1.0)
    assert beat() == ("train", 0)  # the same phase, too soon
    worker.heartbeat("evaluating", step=2)
    assert beat() == ("evaluating", 2)
    worker.report_step(2, loss=1.0)
    assert beat() == ("train", 2)  # back from another phase: at once
    worker.report_step(3, loss=1.0)
    assert beat() == ("train", 2)
    monkeypatch.setattr(rw, "HEARTBEAT_EVERY_S", 0.0)
    worker.report_step(4, loss=1.0)
    assert beat() == ("train", 4)  # due again


@pytest.fixture(scope="module")
def paddle():
    return pytest.importorskip("paddle")


def tiny(paddle):
    paddle.seed(1)
    model = paddle.nn.Sequential(paddle.nn.Linear(6, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 3))
    sched = paddle.optimizer.lr.PolynomialDecay(learning_rate=0.05, decay_steps=20, end_lr=0.001)
    opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
    return model, opt, sched


def train_steps(paddle, model, opt, sched, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = paddle.to_tensor(rng.standard_normal((5, 6)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 3, size=(5,)).astype("int64"))
        loss = paddle.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()


def tensors(model, opt) -> dict[str, Any]:
    """Every tensor a checkpoint reads, by the names the arrays get."""
    out = dict(model.state_dict())
    out.update({k: v for k, v in opt.state_dict().items() if k != "LR_Scheduler"})
    return out


def live_arrays(live) -> dict[str, np.ndarray]:
    m = live.model_arrays()
    o, _ = live.optimizer_arrays()
    return {**m, **o}


def address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_model_and_optimizer_arrays_do_not_change_as_training_goes_on(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 2)
    m = ps.model_arrays(model)
    o, s = ps.optimizer_arrays(opt)
    m0, o0, s0 = copy.deepcopy(m), copy.deepcopy(o), copy.deepcopy(s)
    assert m and o and "last_epoch" in s

    train_steps(paddle, model, opt, sched, 3, seed=1)

    for k in m0:
        assert np.array_equal(m[k], m0[k]), f"model array {k} changed after more training"
    for k in o0:
        assert np.array_equal(o[k], o0[k]), f"optimizer array {k} changed after more training"
    assert s == s0
    # ... while the live state did move on, so the comparison above means something.
    m_now = ps.model_arrays(model)
    o_now, s_now = ps.optimizer_arrays(opt)
    assert all(not np.array_equal(m_now[k], m0[k]) for k in m0)
    assert any(not np.array_equal(o_now[k], o0[k]) for k in o0)
    assert s_now["last_epoch"] == s0["last_epoch"] + 3
    # And writing into a captured array does not write into the model.
    k = next(iter(m))
    m[k][...] = 0
    assert not np.array_equal(ps.model_arrays(model)[k], m[k])


def test_live_arrays_are_views_that_equal_the_tensors_after_every_step(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    live = ps.LiveArrays(model, opt)
    assert live.optimizer_arrays()[0] == {}  # Adam makes its state in the first step
    first: dict[str, np.ndarray] | None = None
    for i in range(4):
        train_steps(paddle, model, opt, sched, 1, seed=i)
        views = live_arrays(live)
        now = tensors(model, opt)
        assert sorted(views) == sorted(now) and len(views) == 4 + 16
        for k, t in now.items():
            assert np.array_equal(views[k], t.numpy()), f"{k} after step {i}"
            assert address(views[k]) == t.data_ptr(), f"{k} is a copy, not a view"
        _, sched_state = live.optimizer_arrays()
        assert sched_state["last_epoch"] == i + 1
        if first is None:
            first = views
        else:  # nothing was replaced: the same views, not new ones
            assert all(views[k] is first[k] for k in views)


def walk_models(paddle) -> dict[str, Any]:
    """Models whose state dicts hold parameters, persistable and non-persistable buffers, nested
    layers, a layer without parameters and a parameter slot set to None."""
    from model.net import MnistCNN

    class Odd(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.inner = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4), paddle.nn.ReLU())
            self.register_buffer("seen", paddle.zeros([2]))
            self.register_buffer("scratch", paddle.zeros([2]), persistable=False)
            self.add_parameter("gone", None)
            self.head = paddle.nn.Linear(4, 2, bias_attr=False)

        def forward(self, x):
            return self.head(self.inner(x))

    paddle.seed(0)
    return {"tiny": tiny(paddle)[0], "mnist-8": MnistCNN(8), "mnist-28": MnistCNN(28), "odd": Odd()}


def test_the_lean_walks_find_what_state_dict_finds(paddle) -> None:
    from checkpoint import paddle_state as ps

    for label, model in walk_models(paddle).items():
        mine, theirs = ps._model_tensors(model), model.state_dict()
        assert mine is not None and list(mine) == list(theirs), label
        assert all(mine[k] is theirs[k] for k in theirs), label
        opt = paddle.optimizer.Adam(learning_rate=0.1, parameters=model.parameters())
        assert ps._optimizer_tensors(opt) is None  # no accumulators before the first step
        model.train()
        x = paddle.randn([4, 1, 8, 8] if label == "mnist-8" else [4, 1, 28, 28] if label == "mnist-28"
                         else [4, 6] if label == "tiny" else [4, 3])
        model(x).sum().backward()
        opt.step()
        mine_o = ps._optimizer_tensors(opt)
        theirs_o = {k: v for k, v in opt.state_dict().items() if k != "LR_Scheduler"}
        assert mine_o is not None and sorted(mine_o) == sorted(theirs_o) and len(mine_o) >= 4, label
        assert all(mine_o[k] is theirs_o[k] for k in theirs_o), label
    assert "scratch" not in walk_models(paddle)["odd"].state_dict()  # so the comparison covers the skip


def test_live_arrays_fall_back_to_paddles_walk_where_theirs_differs_or_hooks_change_it(
    paddle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 1)
    # A walk that misses a tensor is found out at first use and not used again.
    real = ps._model_tensors
    monkeypatch.setattr(ps, "_model_tensors", lambda m: dict(list(real(m).items())[1:]))
    live = ps.LiveArrays(model, opt)
    assert sorted(live.model_arrays()) == sorted(model.state_dict())
    assert live._lean == {"model": False, "optimizer": None}
    assert sorted(live.model_arrays()) == sorted(model.state_dict())
    monkeypatch.setattr(ps, "_model_tensors", real)
    live.optimizer_tensor_arrays()
    assert live._lean["optimizer"] is True

    # A state-dict hook: only Paddle's walk applies it.
    def hook(destination):
        destination["extra"] = paddle.ones([1])
        return destination

    model.register_state_dict_hook(hook)
    assert ps._model_tensors(model) is None
    fresh = ps.LiveArrays(model, opt)
    assert "extra" in fresh.model_arrays() and "extra" in fresh.model_arrays()


def test_live_arrays_give_the_same_dict_while_nothing_is_replaced(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 1)
    live = ps.LiveArrays(model, opt)
    m, o = live.model_arrays(), live.optimizer_tensor_arrays()
    train_steps(paddle, model, opt, sched, 2, seed=3)
    assert live.model_arrays() is m and live.optimizer_tensor_arrays() is o
    assert all(np.array_equal(m[k], t.numpy()) for k, t in model.state_dict().items())
    other = paddle.to_tensor(np.full(model[0].bias.shape, 3.0, dtype="float32"))
    other._share_buffer_to(model[0].bias)  # the same tensor on another buffer
    m2 = live.model_arrays()
    assert m2 is not m and np.array_equal(m2["0.bias"], np.full(model[0].bias.shape, 3.0, dtype="float32"))


def test_a_live_view_follows_a_tensor_whose_value_buffer_or_object_is_replaced(paddle) -> None:
    from checkpoint import paddle_state as ps

    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 1)
    live = ps.LiveArrays(model, opt)
    before = live_arrays(live)

    # set_value writes into the tensor's own buffer.
    w0 = model[0].weight
    w0.set_value(np.full(w0.shape, 0.5, dtype="float32"))
    assert np.array_equal(live.model_arrays()["0.weight"], np.full(w0.shape, 0.5, dtype="float32"))

    # A new optimizer state put in: Adam copies it into its tensors.
    state = {k: paddle.to_tensor(v.numpy() + ("moment" in k)) for k, v in opt.state_dict().items()
             if k != "LR_Scheduler"}
    opt.set_state_dict({**state, "LR_Scheduler": sched.state_dict()})
    o, _ = live.optimizer_arrays()
    for k, v in state.items():
        assert np.array_equal(o[k], v.numpy()), k

    # The same tensor object on another buffer.
    b0 = model[0].bias
    other = paddle.to_tensor(np.full(b0.shape, 3.0, dtype="float32"))
    old_address = b0.data_ptr()
    other._share_buffer_to(b0)
    assert b0.data_ptr() != old_address
    b_view = live.model_arrays()["0.bias"]
    assert address(b_view) == b0.data_ptr() and np.array_equal(b_view, np.full(b0.shape, 3.0, dtype="float32"))

    # Another tensor object in the model.
    w2 = model[2].weight
    init = paddle.nn.initializer.Assign(np.full(w2.shape, -2.0, "float32"))
    new_w2 = paddle.create_parameter(w2.shape, "float32", default_initializer=init)
    model[2].weight = new_w2
    w2_view = live.model_arrays()["2.weight"]
    assert address(w2_view) == new_w2.data_ptr() and np.array_equal(w2_view, new_w2.numpy())

    # Training goes on with the new tensors, and the views still read them.
    train_steps(paddle, model, opt, sched, 1, seed=5)
    views = live_arrays(live)
    for k, t in tensors(model, opt).items():
        assert np.array_equal(views[k], t.numpy()), k
    assert views["2.weight"] is not before["2.weight"]


def np_draws(n: int = 6) -> list[float]:
    """Gaussians then uniforms: the first Gaussian may come from NumPy's cache."""
    return [float(np.random.standard_normal()) for _ in range(n)] + [float(x) for x in np.random.rand(3)]


def test_rng_snapshots_are_exact_around_a_cached_gaussian(paddle) -> None:
    from checkpoint import paddle_state as ps

    np.random.seed(11)
    snaps = ps.RngSnapshots()
    taken: list[Callable[[], Any]] = [snaps.snapshot()]
    drawn: list[float] = []
    drawn.append(float(np.random.standard_normal()))  # two uniforms drawn, one Gaussian left in the cache
    assert np.random.get_state()[3] == 1
    taken.append(snaps.snapshot())
    drawn.append(float(np.random.standard_normal()))  # the cache used up: the MT19937 state did not move
    assert np.random.get_state()[3] == 0
    taken.append(snaps.snapshot())
    taken.append(snaps.snapshot())  # nothing drawn since the last one
    tail = np_draws()
    # Each snapshot, restored, draws what came after it: the tail, after the draws made since.
    expected = [drawn + tail, drawn[1:] + tail, tail, tail]

    for i, (later, want) in enumerate(zip(taken, expected)):
        state = later()
        json.dumps(state[1])
        ps.set_rng_states(state)
        got = [float(np.random.standard_normal()) for _ in range(len(want) - 3)] + [float(x) for x in np.random.rand(3)]
        assert got == want, f"snapshot {i} restores another NumPy state"


def test_paddle_generator_states_read_as_text_equal_their_pickle_states(paddle) -> None:
    """Snapshots read Paddle's generator states through ``str()``; this Paddle prints exactly the
    engine text its pickle state lists. (Where a Paddle does not, snapshots use the list.)"""
    from checkpoint import paddle_state as ps

    paddle.seed(3)
    paddle.randn([7])
    for state in paddle.get_rng_state():
        printed, listed = ps._paddle_printed(state), ps._paddle_listed(state)
        assert printed is not None, str(state)[:80]
        assert printed[0] == listed[0] and printed[1] == listed[1].tobytes()


def test_paddle_engine_memory_reads_as_the_printed_state(paddle) -> None:
    """Snapshots tell whether a Paddle generator moved from its engine's memory; that memory holds
    exactly the printed state, across draws and reseeds. A wrong address reads as nothing."""
    from checkpoint import paddle_state as ps

    for move in (lambda: paddle.seed(5), lambda: paddle.randn([3]), lambda: paddle.seed(2**64 - 5),
                 lambda: paddle.rand([1000])):
        move()
        for state in paddle.get_rng_state():
            assert ps._paddle_raw_ok(state), str(state)[:80]
            parts = str(state).split(" ")
            raw = ps._paddle_raw(state)
            assert np.frombuffer(raw[:24], dtype="<u8").tolist() == [int(p) % 2**64 for p in parts[:3]]
            assert np.frombuffer(raw[24:], dtype="<u8").tolist() == [int(p) for p in parts[4:]]
    assert ps._read_memory(0, 8) is None
    assert not ps._paddle_raw_ok(object())


@pytest.mark.parametrize("mode", ["raw", "text", "list"])
def test_paddle_rng_arrays_are_reused_only_while_the_engine_is_unchanged(paddle, mode: str) -> None:
    """The encoded engine state is one read-only array while no number is drawn (so the writer copies
    it once), a new one after a draw, and the same whichever way it is read; each restores its draws."""
    from checkpoint import paddle_state as ps

    def snapshots(mode: str) -> ps.RngSnapshots:
        snaps = ps.RngSnapshots()
        snaps._paddle_by_raw = {0: mode == "raw"}
        snaps._paddle_by_text = mode != "list"
        return snaps

    paddle.seed(4)
    snaps = snapshots(mode)
    first = snaps.snapshot()()
    same = snaps.snapshot()()
    assert same[0]["paddle/0"] is first[0]["paddle/0"] and not first[0]["paddle/0"].flags.writeable
    want_first = paddle.randn([5]).numpy()
    moved = snaps.snapshot()()
    assert moved[0]["paddle/0"] is not first[0]["paddle/0"]
    assert not np.array_equal(moved[0]["paddle/0"], first[0]["paddle/0"]) or moved[1]["paddle"] != first[1]["paddle"]
    paddle.seed(4)  # back to the first state: read again, not taken from the last snapshot
    again = snaps.snapshot()()
    assert again[0]["paddle/0"].tobytes() == first[0]["paddle/0"].tobytes() and again[1] == first[1]
    paddle.randn([5])
    want_moved = paddle.randn([5]).numpy()
    paddle.seed(4)
    paddle.randn([5])
    here = snaps.snapshot()()[0]["paddle/0"].tobytes()
    for other_mode in ("raw", "text", "list"):
        assert snapshots(other_mode).snapshot()()[0]["paddle/0"].tobytes() == here
    for state, want in ((first, want_first), (moved, want_moved)):
        ps.set_rng_states(state)
        assert np.array_equal(paddle.randn([5]).numpy(), want)


@pytest.mark.parametrize("framework", ["Paddle's", "none"])
def test_paddle_generator_states_are_those_of_the_expected_place(
    paddle, monkeypatch: pytest.MonkeyPatch, framework: str
) -> None:
    """Snapshots keep the CPU generator while the expected place is the same object; what they read
    is what ``paddle.get_rng_state()`` gives, across reseeds, draws and a new place. Where Paddle's
    framework module is not where it is looked for, they ask ``paddle.get_rng_state()`` each time."""
    from checkpoint import paddle_state as ps

    if framework == "none":
        monkeypatch.setattr(ps, "_framework", None)
    snaps = ps.RngSnapshots()
    for move in (lambda: paddle.seed(8), lambda: None, lambda: paddle.randn([3]), lambda: paddle.set_device("cpu"),
                 lambda: paddle.rand([5]), lambda: paddle.seed(9)):
        move()
        got = [s.__getstate__() for s in snaps._paddle_states()]  # str() shows the copy's address
        assert got == [s.__getstate__() for s in paddle.get_rng_state()]
        if framework == "none":
            assert snaps._paddle_cpu is None
        else:
            assert snaps._paddle_cpu is not None
            assert snaps._paddle_cpu[0] is paddle.base.framework._global_expected_place_


def _py_moves() -> list[Callable[[], Any]]:
    """Ways Python's ``random`` moves on: draws, a Gaussian (which leaves one cached), reseeding, and
    the cached Gaussian used up (the generator's memory does not move)."""
    return [lambda: None, random.random, lambda: random.gauss(0, 1), lambda: random.seed(99),
            lambda: random.gauss(0, 1), lambda: random.gauss(0, 1), lambda: random.getrandbits(4000)]


@pytest.mark.parametrize("raw", [True, False])
def test_python_random_snapshots_read_from_memory_equal_getstate(paddle, raw: bool) -> None:
    """Python's ``random`` state read straight from the generator's memory is what ``getstate()``
    says, one read-only array reused while it does not move, and each snapshot restores its draws."""
    from checkpoint import paddle_state as ps

    random.seed(12)
    snaps = ps.RngSnapshots()
    assert snaps._py is not None  # CPython: the layout checks out
    if not raw:
        snaps._py = None
    taken, wants, prev = [], [], None
    for move in _py_moves():
        move()
        version, internal, gauss = random.getstate()
        state = snaps.snapshot()()
        arr = state[0]["python/internal"]
        assert arr.dtype == np.uint32 and arr.tolist() == list(internal) and not arr.flags.writeable
        assert state[1]["python"] == [version, gauss]
        if prev is not None and prev[0] == internal:
            assert arr is prev[1]
        prev = (internal, arr)
        taken.append(state)
        wants.append([random.random() for _ in range(3)] + [random.gauss(0, 1)])
        random.setstate((version, internal, gauss))  # undo the draws just made for the want
    for state, want in zip(taken, wants):
        ps.set_rng_states(state)
        assert [random.random() for _ in range(3)] + [random.gauss(0, 1)] == want


def test_train_state_arrays_with_the_rng_now_equal_them_late(paddle) -> None:
    from checkpoint import paddle_state as ps
    from checkpoint.state import pack

    rng = np.random.default_rng(0)
    snap = ps.rng_snapshot()
    st = TrainState(step=3, epoch=0, batch=3, model={"w": rng.standard_normal(4).astype(np.float32)},
                    optimizer={"m": np.zeros(4, np.float32)}, lr_scheduler={"last_epoch": 3}, rng=snap,
                    order=rng.permutation(10))
    late, now = st.arrays(), st.arrays(rng_late=False)
    assert late.late is not None and now.late is None
    assert pack(now) == pack(late)


SAME_SEED = 5


def _nothing(ps: Any, ctx: Any = None) -> None:
    return None


def _other_rngs(ps: Any, ctx: Any) -> None:
    import paddle

    random.random()
    paddle.randn([2])


def _pending_then_used(ps: Any) -> Any:
    np.random.standard_normal()
    pending = ps.rng_snapshot()  # a Gaussian in NumPy's cache
    np.random.standard_normal()  # used up; the MT19937 state is where it was
    return pending


def _restore(ps: Any, pending: Any) -> None:
    ps.set_rng_states(pending())


def _another_bit_generator(ps: Any, ctx: Any) -> None:
    np.random.set_bit_generator(np.random.MT19937(9))  # the test still holds the old one: it stays, unmoved
    np.random.rand(2)


def _gaussian(ps: Any, ctx: Any = None) -> None:
    np.random.standard_normal()


REUSE_CASES: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], None], bool]] = {
    # name: (before the first snapshot, between the two, whether the second may reuse the first's reading)
    "nothing drawn": (_nothing, _nothing, True),
    "only Python's and Paddle's RNGs drawn": (_nothing, _other_rngs, True),
    "a uniform drawn": (_nothing, lambda ps, ctx: np.random.rand(), False),
    "a Gaussian drawn, one left cached": (_nothing, _gaussian, False),
    "the cached Gaussian used up": (_gaussian, _gaussian, False),
    "a Gaussian pending at the first, nothing drawn": (_gaussian, _nothing, False),
    "reseeded with the same seed": (_nothing, lambda ps, ctx: np.random.seed(SAME_SEED), True),
    "a cached Gaussian restored by set_rng_states at the same position": (_pending_then_used, _restore, False),
    "another bit generator set": (_nothing, _another_bit_generator, False),
}


@pytest.mark.parametrize("case", list(REUSE_CASES))
def test_rng_snapshots_reuse_the_last_reading_only_when_it_is_safe(paddle, case: str) -> None:
    """Reuse shows as the very same keys array in both encodings; either way, the second restores exactly."""
    from checkpoint import paddle_state as ps

    before, between, reuse = REUSE_CASES[case]
    bit_generator = np.random.mtrand.get_bit_generator()
    try:
        np.random.seed(SAME_SEED)
        ctx = before(ps)
        snaps = ps.RngSnapshots()
        first = snaps.snapshot()
        between(ps, ctx)
        second = snaps.snapshot()
        want = np_draws()
        state = second()
        assert (state[0]["numpy/keys"] is first()[0]["numpy/keys"]) == reuse
        ps.set_rng_states(state)
        assert np_draws() == want, "the second snapshot restores another NumPy state"
    finally:
        np.random.set_bit_generator(bit_generator)


def test_rng_snapshot_encodes_the_states_of_the_moment_it_was_taken(paddle) -> None:
    from checkpoint import paddle_state as ps

    paddle.seed(123)
    np.random.seed(123)
    random.seed(123)
    paddle.randn([3])
    np.random.rand(2)
    random.random()
    later = ps.rng_snapshot()

    def draw() -> tuple[np.ndarray, np.ndarray, float]:
        return paddle.randn([4]).numpy(), np.random.rand(4), random.random()

    expected = draw()
    for _ in range(3):
        draw()  # the states move on before the snapshot is encoded
    state = later()
    json.dumps(state[1])  # the small part is plain JSON
    assert state[0]["paddle/0"].dtype in (np.uint8, np.int64)
    ps.set_rng_states(state)
    got = draw()
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


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

