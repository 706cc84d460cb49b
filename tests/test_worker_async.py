"""Asynchronous checkpoints, in this process on real files: the training thread copies the state, a
background writer persists it, one checkpoint at a time, and the writer's errors reach the training
thread. Also that the copies really are copies: Paddle's ``Tensor.numpy()`` on the CPU, the RNG states
taken now and encoded later, and a whole captured ``TrainState`` saved while training goes on.

Every wait here is bounded; nothing is timed."""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from checkpoint.state import TrainState
from checkpoint.store import MANIFEST, checkpoint_name
from runner.worker import ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY, EVENTS, FINAL, Worker

WAIT = 60.0  # seconds: a bound for things that should take milliseconds on an idle machine


def read_events(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / EVENTS
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if kind is None or r.get("event") == kind]


def manifest(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / checkpoint_name(step) / MANIFEST


class Gated:
    """A snapshot whose ``to_files`` (on the writer thread) waits for ``gate``; ``started`` says it began."""

    def __init__(self, step: int, *, gate: threading.Event | None = None, error: BaseException | None = None) -> None:
        self.step = step
        self.gate = gate
        self.error = error
        self.started = threading.Event()
        self.thread: threading.Thread | None = None

    def to_files(self) -> tuple[Mapping[str, bytes], Mapping[str, Any]]:
        self.thread = threading.current_thread()
        self.started.set()
        if self.gate is not None and not self.gate.wait(WAIT):
            raise TimeoutError("the test never opened the gate")
        if self.error is not None:
            raise self.error
        return {"state.bin": b"state after %d steps" % self.step}, {"step": self.step}


class Capture:
    """A ``capture`` callable that records that (and on which thread) it ran."""

    def __init__(self, snap: Gated) -> None:
        self.snap = snap
        self.called = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self) -> Gated:
        self.thread = threading.current_thread()
        self.called.set()
        return self.snap


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Gates a test creates; all opened at teardown so no writer thread is left waiting."""
    made: list[threading.Event] = []
    yield made
    for g in made:
        g.set()


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)
    w = Worker(tmp_path / "run", handle_signals=False)
    yield w
    w.close()


def new_gate(gates: list[threading.Event]) -> threading.Event:
    g = threading.Event()
    gates.append(g)
    return g


# -- the writer thread -------------------------------------------------------------------------------


def test_checkpoint_returns_before_the_persist_and_the_next_one_waits_for_it(
    worker: Worker, gates: list[threading.Event]
) -> None:
    run_dir = worker.run_dir
    gate1 = new_gate(gates)
    first = Gated(4, gate=gate1)
    cap1 = Capture(first)
    worker.checkpoint(4, cap1)  # returns although the write cannot finish until gate1 opens
    assert cap1.called.is_set() and cap1.thread is threading.current_thread()  # the copy: on this thread
    assert first.started.wait(WAIT), "the writer thread never started the persist"
    assert first.thread is not threading.current_thread() and first.thread.daemon
    assert not manifest(run_dir, 4).exists()  # not committed yet
    assert worker.store.committed() == []
    assert read_events(run_dir, "checkpoint-saved") == []
    assert worker.cadence.last == 4  # the cadence counts it from the moment of the copy

    # A second checkpoint waits for the first before it even copies the state.
    second = Gated(8)
    cap2 = Capture(second)
    errors: list[BaseException] = []

    def second_checkpoint() -> None:
        try:
            worker.checkpoint(8, cap2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=second_checkpoint, daemon=True)
    t.start()
    assert not cap2.called.wait(0.5), "the second checkpoint copied the state while the first was being written"
    assert t.is_alive()
    assert not manifest(run_dir, 4).exists()

    gate1.set()
    t.join(WAIT)
    assert not t.is_alive(), "the second checkpoint() did not return after the first finished"
    assert not errors, errors
    assert cap2.called.is_set()
    assert manifest(run_dir, 4).exists()  # the first was committed before the second started

    worker.flush_checkpoints()
    assert worker.store.committed() == [checkpoint_name(4), checkpoint_name(8)]
    latest = worker.store.load_latest()
    assert latest is not None and latest.step == 8
    assert dict(latest.files) == {"state.bin": b"state after 8 steps"} and dict(latest.meta) == {"step": 8}
    assert [e["step"] for e in read_events(run_dir, "checkpoint-saved")] == [4, 8]


def test_flush_waits_for_the_persist_and_makes_it_committed(worker: Worker, gates: list[threading.Event]) -> None:
    gate = new_gate(gates)
    snap = Gated(3, gate=gate)
    worker.checkpoint(3, Capture(snap))
    assert snap.started.wait(WAIT)

    flushed = threading.Event()

    def flush() -> None:
        worker.flush_checkpoints()
        flushed.set()

    t = threading.Thread(target=flush, daemon=True)
    t.start()
    assert not flushed.wait(0.5), "flush_checkpoints() returned while the checkpoint was still being written"
    gate.set()
    t.join(WAIT)
    assert flushed.is_set()
    assert manifest(worker.run_dir, 3).exists()
    assert worker.store.committed() == [checkpoint_name(3)]


def test_flush_with_nothing_pending_returns_at_once(worker: Worker) -> None:
    worker.flush_checkpoints()
    worker.flush_checkpoints()
    assert worker.store.committed() == []


def test_a_writer_error_surfaces_from_the_next_flush(worker: Worker) -> None:
    snap = Gated(5, error=OSError(28, "No space left on device"))
    worker.checkpoint(5, Capture(snap))  # the error happens later, on the writer thread
    with pytest.raises(OSError, match="No space left on device"):
        worker.flush_checkpoints()
    assert worker.store.committed() == []
    assert read_events(worker.run_dir, "checkpoint-saved") == []
    # Raised once: the writer goes on, and the next checkpoint works.
    worker.flush_checkpoints()
    worker.checkpoint(6, Capture(Gated(6)))
    worker.flush_checkpoints()
    assert worker.store.committed() == [checkpoint_name(6)]


def test_a_writer_error_surfaces_from_the_next_checkpoint_before_it_copies(worker: Worker) -> None:
    worker.checkpoint(5, Capture(Gated(5, error=RuntimeError("serialiser broke"))))
    cap = Capture(Gated(10))
    with pytest.raises(RuntimeError, match="serialiser broke"):
        worker.checkpoint(10, cap)
    assert not cap.called.is_set()  # it failed before taking another copy
    assert worker.store.committed() == []


def test_a_writer_error_keeps_the_job_from_completing(worker: Worker) -> None:
    worker.checkpoint(5, Capture(Gated(5, error=RuntimeError("serialiser broke"))))
    with pytest.raises(RuntimeError, match="serialiser broke"):
        worker.complete(steps=5)
    assert not (worker.run_dir / FINAL).exists()
    assert read_events(worker.run_dir, "job-completed") == []


def test_complete_waits_for_the_last_checkpoint(worker: Worker, gates: list[threading.Event]) -> None:
    gate = new_gate(gates)
    snap = Gated(9, gate=gate)
    worker.checkpoint(9, Capture(snap))
    assert snap.started.wait(WAIT)
    done = threading.Event()

    def complete() -> None:
        worker.complete(steps=9)
        done.set()

    t = threading.Thread(target=complete, daemon=True)
    t.start()
    assert not done.wait(0.5)
    assert not (worker.run_dir / FINAL).exists()
    gate.set()
    t.join(WAIT)
    assert done.is_set()
    assert worker.store.committed() == [checkpoint_name(9)]
    kinds = [e["event"] for e in read_events(worker.run_dir)]
    assert kinds.index("checkpoint-saved") < kinds.index("job-completed")


def test_wait_true_persists_on_the_training_thread(worker: Worker) -> None:
    snap = Gated(7)
    worker.checkpoint(7, Capture(snap), wait=True)
    assert snap.thread is threading.current_thread()
    assert manifest(worker.run_dir, 7).exists()  # durable when checkpoint() returns
    (ev,) = read_events(worker.run_dir, "checkpoint-saved")
    assert ev["asynchronous"] is False


def test_wait_true_after_an_async_one_writes_both_in_order(worker: Worker, gates: list[threading.Event]) -> None:
    gate = new_gate(gates)
    worker.checkpoint(3, Capture(Gated(3, gate=gate)))
    opener = threading.Timer(0.2, gate.set)  # the durable one must wait for it, then write its own
    opener.start()
    try:
        worker.checkpoint(4, Capture(Gated(4)), wait=True)
    finally:
        opener.cancel()
        gate.set()
    assert worker.store.committed() == [checkpoint_name(3), checkpoint_name(4)]
    assert [e["step"] for e in read_events(worker.run_dir, "checkpoint-saved")] == [3, 4]


# -- what the events say ---------------------------------------------------------------------------------


def test_checkpoint_saved_events_carry_stall_seconds_and_asynchronous(worker: Worker) -> None:
    worker.checkpoint(2, Capture(Gated(2)))
    worker.flush_checkpoints()
    worker.checkpoint(4, Capture(Gated(4)), wait=True)
    worker.save_checkpoint(6, {"state.bin": b"six"}, {"step": 6})

    evs = read_events(worker.run_dir, "checkpoint-saved")
    assert [(e["step"], e["name"], e["asynchronous"]) for e in evs] == [
        (2, checkpoint_name(2), True), (4, checkpoint_name(4), False), (6, checkpoint_name(6), False)]
    for e in evs:
        assert e["source"] == "worker" and e["attempt"] == worker.attempt and e["pid"] == worker.pid
        assert isinstance(e["stall_s"], float) and isinstance(e["seconds"], float)
        assert e["stall_s"] >= 0 and e["seconds"] >= 0
    # Written on the training thread, a checkpoint's whole time is the stall.
    for e in evs[1:]:
        assert e["stall_s"] == e["seconds"]
    assert worker.store.committed() == [checkpoint_name(s) for s in (2, 4, 6)]


def test_a_checkpoint_needs_an_active_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(ENV_STANDBY, "1")
    (tmp_path / "run").mkdir()
    w = Worker(tmp_path / "run", handle_signals=False)  # a spare on standby, not the run's worker yet
    cap = Capture(Gated(1))
    with pytest.raises(RuntimeError, match=r"Worker.restore\(\)"):
        w.checkpoint(1, cap)
    with pytest.raises(RuntimeError, match=r"Worker.restore\(\)"):
        w.save_checkpoint(1, {"a": b"b"}, {})
    with pytest.raises(RuntimeError, match=r"Worker.restore\(\)"):
        w.report_step(0, loss=1.0)
    assert not cap.called.is_set()
    assert list((tmp_path / "run").iterdir()) == []


# -- the copies are copies (Paddle) ---------------------------------------------------------------------


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
    ps.set_rng_states(state)
    got = draw()
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_a_captured_train_state_saved_in_the_background_is_the_state_at_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paddle
) -> None:
    """The real job's capture, handed to the background writer while training goes on, restores the
    model, optimizer, scheduler, sample order and every RNG as they were at the capture."""
    from checkpoint import paddle_state as ps
    from model.train import _capture

    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)
    model, opt, sched = tiny(paddle)
    train_steps(paddle, model, opt, sched, 2)
    np.random.seed(7)
    random.seed(7)
    data_rng = np.random.default_rng(7)
    order = data_rng.permutation(40)

    want_model = copy.deepcopy(ps.model_arrays(model))
    want_opt, want_sched = copy.deepcopy(ps.optimizer_arrays(opt))
    want_data = copy.deepcopy(data_rng.bit_generator.state)
    want_order = order.copy()

    with Worker(tmp_path / "run", handle_signals=False) as w:
        gate = threading.Event()
        started = threading.Event()
        state_box: list[TrainState] = []

        def capture() -> Any:
            st = _capture(model, opt, 2, 0, 2, order, data_rng)
            state_box.append(st)

            class Slow:
                def to_files(self) -> tuple[Mapping[str, bytes], Mapping[str, Any]]:
                    started.set()
                    gate.wait(WAIT)  # hold the writer until training has moved on
                    return st.to_files()

            return Slow()

        try:
            w.checkpoint(2, capture)
            assert started.wait(WAIT)
            expected_draws = (paddle.randn([4]).numpy(), np.random.rand(3), random.random(), data_rng.permutation(40))
            train_steps(paddle, model, opt, sched, 3, seed=2)  # everything moves on meanwhile
        finally:
            gate.set()
        w.flush_checkpoints()
        ckpt = w.store.load_latest()

    assert ckpt is not None and ckpt.step == 2
    st = TrainState.from_checkpoint(ckpt)
    for k in want_model:
        assert np.array_equal(st.model[k], want_model[k]), k
    for k in want_opt:
        assert np.array_equal(st.optimizer[k], want_opt[k]), k
    assert dict(st.lr_scheduler) == want_sched
    assert (st.step, st.epoch, st.batch) == (2, 0, 2)

    # Restoring it reproduces the draws made right after the capture, the data generator's included.
    rng = st.rng_state()
    ps.set_rng_states(rng)
    data_rng2 = np.random.default_rng()
    data_rng2.bit_generator.state = rng[1]["data"]
    assert rng[1]["data"] == want_data
    got = (paddle.randn([4]).numpy(), np.random.rand(3), random.random(), data_rng2.permutation(40))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_draws))
    # The epoch's sample order (the job never writes it in place: each epoch gets a new permutation).
    assert np.array_equal(st.order, want_order)
