"""The checkpoint writer process, driven directly: what it commits is exactly what was submitted (the
late part and the digests included), whatever the layout; one checkpoint at a time; it lives and dies
with the process that started it, ignores SIGTERM and SIGINT, and stops when closed.

Real processes, signals, shared memory and files; every wait is bounded and nothing is timed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from safetensors.numpy import load as st_load

from checkpoint.state import StateArrays, pack, params_digest
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name
from checkpoint.writer import CheckpointWriter, Saved, WriterError
from tests.helpers import REPO
from tests.helpers.processes import child_env, gone, stopped, wait_for
from tests.helpers.readers import events

WAIT = 60.0  # seconds: a bound for things that take milliseconds on an idle machine
MODEL = "model.safetensors"
TRAIN = "train.safetensors"
EVENT = {"source": "test", "asynchronous": True}


def sample(step: int, *, n: int = 6, extra: int = 0, late_size: int = 624) -> StateArrays:
    """A checkpoint's worth of small arrays of several dtypes and shapes, with a late part."""
    rng = np.random.default_rng(step)
    model = {
        "w": rng.standard_normal((n, 3)).astype(np.float32),
        "b": rng.standard_normal(3),
        "t": rng.standard_normal((3, n)).astype(np.float32).T,  # not C-contiguous
    }
    train: dict[str, np.ndarray] = {
        "order": rng.permutation(2 * n),
        "count": np.array(step, dtype=np.int64),  # 0-d
        "mask": rng.integers(0, 2, size=5).astype(bool),
        "empty": np.zeros((0, 4), dtype=np.float16),
    }
    for i in range(extra):
        train[f"extra/{i}"] = rng.integers(0, 255, size=(i + 1) * 100, dtype=np.uint8)
    keys = rng.integers(0, 2**32, size=late_size, dtype=np.uint32)

    def late() -> StateArrays:
        return StateArrays({TRAIN: {"rng/keys": keys}}, {"rng": {"pos": step, "name": "MT19937"}})

    meta = {"step": step, "lr_scheduler": {"last_epoch": step}}
    return StateArrays({MODEL: model, TRAIN: train}, meta, {"params_sha256": MODEL}, late=late)


def committed(root: Path, name: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    ckpt = CheckpointStore(LocalStorage(root)).verify(name)  # raises unless the manifest and files agree
    return dict(ckpt.files), dict(ckpt.meta)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def writer(root: Path) -> Iterator[CheckpointWriter]:
    root.mkdir()
    w = CheckpointWriter(root, keep=10, events=root / "events.jsonl")
    yield w
    w.close()


def save(w: CheckpointWriter, step: int, state: StateArrays) -> Saved:
    w.submit(step, state, event=EVENT, started=0.0)
    saved = w.wait(WAIT)
    assert saved is not None, f"checkpoint {step} was not committed within {WAIT} s"
    return saved


# -- what it commits -------------------------------------------------------------------------------------


def test_a_submitted_state_is_committed_exactly_with_its_late_part_and_digests(
    writer: CheckpointWriter, root: Path
) -> None:
    state = sample(3)
    want_files, want_meta = pack(state)
    originals = {f: {k: v.copy() for k, v in a.items()} for f, a in state.complete().files.items()}

    with stopped(writer.pid) as release:
        stall = writer.submit(3, state, event=EVENT, started=time.monotonic())
        # The arrays were copied before submit() returned: what happens to them now is not saved.
        for arrays in state.files.values():
            for a in arrays.values():
                a[...] = 0
        assert writer.busy
        release()
        saved = writer.wait(WAIT)

    assert saved == Saved(3, checkpoint_name(3), saved.seconds) and saved.seconds > 0
    files, meta = committed(root, checkpoint_name(3))
    assert files == want_files and meta == want_meta
    for fname, arrays in originals.items():
        loaded = st_load(files[fname])
        assert sorted(loaded) == sorted(arrays)
        for k, a in arrays.items():
            assert loaded[k].dtype == a.dtype and loaded[k].shape == a.shape, k
            assert loaded[k].tobytes() == np.ascontiguousarray(a).tobytes(), k
    assert "rng/keys" in st_load(files[TRAIN])  # the late part, encoded when copied
    assert meta["rng"] == {"pos": 3, "name": "MT19937"}
    assert meta["params_sha256"] == params_digest(originals[MODEL])

    (ev,) = events(root, strict=True)
    assert ev["event"] == "checkpoint-saved" and ev["source"] == "test" and ev["asynchronous"] is True
    assert (ev["step"], ev["name"], ev["writer_pid"]) == (3, checkpoint_name(3), writer.pid)
    assert ev["writer_pid"] != os.getpid()
    assert ev["stall_s"] == round(stall, 6) and ev["persist_s"] == round(saved.seconds, 6)


def test_layouts_that_change_between_submits_still_round_trip(writer: CheckpointWriter, root: Path) -> None:
    states = [
        sample(1, n=4),
        sample(2, n=20_000),  # bigger arrays: a new, bigger buffer
        sample(3, n=20_000, extra=6),  # more arrays
        sample(4, n=4, extra=1),  # smaller again: fits the buffer it has
        sample(5, n=4, late_size=400_000),  # a late part that outgrows the buffer
        sample(6, n=4, late_size=400_000),  # the same layout, on the buffer made for the late part
        sample(7, n=4),
    ]
    for step, state in enumerate(states, start=1):
        want = pack(state)
        saved = save(writer, step, state)
        assert (saved.step, saved.name) == (step, checkpoint_name(step))
        assert committed(root, saved.name) == want, f"checkpoint {step} differs from what was submitted"
    assert [e["step"] for e in events(root, strict=True)] == list(range(1, len(states) + 1))


def test_a_state_without_a_late_part_round_trips(writer: CheckpointWriter, root: Path) -> None:
    full = sample(2).complete()
    state = StateArrays(full.files, full.meta, full.digests)
    want = pack(state)
    save(writer, 2, state)
    assert committed(root, checkpoint_name(2)) == want


# -- read-only arrays, copied once ---------------------------------------------------------------------
# submit() may leave a slot's bytes in the buffer when the very same read-only array that owns its
# memory is submitted to it again (the epoch's sample order). Whatever it skips, each checkpoint must
# hold what was submitted.


def frozen(a: np.ndarray) -> np.ndarray:
    """``a`` read-only, owning its memory: what submit() may skip copying again."""
    a.flags.writeable = False
    assert a.base is None
    return a


def with_order(step: int, order: np.ndarray, *, n: int = 1000, late_size: int = 16) -> StateArrays:
    """A state whose ``order`` slot holds ``order``, after model weights of ``n`` floats that differ by
    step (so the bytes around ``order`` change), and with a late part of ``late_size`` keys."""
    rng = np.random.default_rng(1000 + step)
    model = {"w": rng.standard_normal(n).astype(np.float32)}
    train = {"order": order, "count": np.array(step, dtype=np.int64)}
    keys = rng.integers(0, 2**32, size=late_size, dtype=np.uint32)

    def late() -> StateArrays:
        return StateArrays({TRAIN: {"rng/keys": keys}}, {"rng": {"pos": step}})

    return StateArrays({MODEL: model, TRAIN: train}, {"step": step}, {"params_sha256": MODEL}, late=late)


def save_and_check(w: CheckpointWriter, root: Path, step: int, state: StateArrays, order: np.ndarray) -> None:
    """Save ``state``; its checkpoint must hold exactly what it held at submit(), ``order`` as given."""
    want_order = np.array(order, copy=True)
    want = pack(state)
    save(w, step, state)
    files, meta = committed(root, checkpoint_name(step))
    got = st_load(files[TRAIN])["order"]
    assert got.dtype == want_order.dtype and np.array_equal(got, want_order), f"checkpoint {step}: stale order"
    assert (files, meta) == want, f"checkpoint {step} differs from what was submitted"


def test_the_same_read_only_array_is_committed_every_time_across_layouts_and_new_buffers(
    writer: CheckpointWriter, root: Path
) -> None:
    order = frozen(np.arange(2000, dtype=np.int64) * 7 + 3)
    plan = [
        dict(n=4000),  # copied
        dict(n=4000),  # the same layout: may stay in the buffer
        dict(n=1000),  # smaller weights: the order moves down in the same buffer, onto old weights
        dict(n=1000),
        dict(n=40_000),  # bigger weights: a new buffer, zeroed
        dict(n=40_000),
        dict(n=40_000, late_size=400_000),  # a late part that outgrows the buffer
        dict(n=40_000),  # the same layout again, on the buffer made for it
        dict(n=40_000),
        dict(n=1000),
    ]
    for step, kw in enumerate(plan, start=1):
        save_and_check(writer, root, step, with_order(step, order, **kw), order)
    assert not order.flags.writeable  # the writer did not make it writable to copy it


def test_a_writable_array_changed_in_place_is_committed_with_its_new_contents(
    writer: CheckpointWriter, root: Path
) -> None:
    order = np.arange(500, dtype=np.int64)
    for step in range(1, 5):
        order[step::3] += 100 * step  # the same object, changed since the last submit
        save_and_check(writer, root, step, with_order(step, order), order)


def test_a_read_only_view_of_a_changing_array_is_committed_with_its_new_contents(
    writer: CheckpointWriter, root: Path
) -> None:
    base = np.arange(500, dtype=np.int64)
    order = base.view()
    order.flags.writeable = False
    assert order.base is base
    for step in range(1, 5):
        base[step::3] += 100 * step  # through the writable array the view is of
        save_and_check(writer, root, step, with_order(step, order), order)


def test_a_new_read_only_array_in_the_same_slot_is_committed_with_its_contents(
    writer: CheckpointWriter, root: Path
) -> None:
    for step in range(1, 5):
        order = frozen(np.random.default_rng(step).permutation(500))  # a new epoch's order, same shape
        save_and_check(writer, root, step, with_order(step, order), order)


def test_the_same_arrays_changed_every_way_between_submits_are_committed_as_they_are(
    writer: CheckpointWriter, root: Path
) -> None:
    """Training tensors come back as the same objects each step, changed in place: the writer reuses
    its copy plan for them. Whatever changes between submits - contents, a replaced array, a shape
    changed in place, a frozen array made writable and changed, a new frozen one - is committed."""
    rng = np.random.default_rng(0)
    model = {f"w{i}": rng.standard_normal((5, i + 1)).astype(np.float32) for i in range(6)}
    model["t"] = rng.standard_normal((4, 6)).astype(np.float32).T  # not C-contiguous
    model["odd"] = rng.integers(0, 9, size=3).astype(np.int8)  # 3 bytes: padding after it
    train = {"m": rng.standard_normal(7), "order": frozen(rng.permutation(50)), "step": np.array(0)}
    state = StateArrays({MODEL: model, TRAIN: train}, {"step": 0}, {"params_sha256": MODEL})

    def bump() -> None:
        for a in (*model.values(), train["m"]):
            if a.flags.writeable:
                a += 1

    def replace() -> None:
        model["w2"] = model["w2"] * 3  # a new object in the same slot, same shape

    def reshape() -> None:
        model["w5"].shape = (6, 5)  # the same object, another shape

    def thaw() -> None:
        train["order"].flags.writeable = True
        train["order"][:5] = -1

    def refreeze() -> None:
        train["order"] = frozen(np.roll(train["order"], 1).copy())

    def regrow() -> None:
        train["order"] = frozen(np.arange(60))  # a new frozen array of another size

    moves = [lambda: None, bump, bump, replace, bump, reshape, bump, thaw, refreeze, bump, regrow, bump,
             lambda: None]
    for step, move in enumerate(moves, start=1):
        move()
        train["step"][...] = step
        want = pack(state)
        save(writer, step, state)
        assert committed(root, checkpoint_name(step)) == want, f"checkpoint {step} differs after {move}"


# -- one at a time -----------------------------------------------------------------------------------------


def test_submit_while_one_is_in_flight_raises_and_leaves_the_buffer_alone(
    writer: CheckpointWriter, root: Path
) -> None:
    first, second = sample(1), sample(2)
    want = pack(first)
    with stopped(writer.pid) as release:
        writer.submit(1, first, event=EVENT, started=0.0)
        with pytest.raises(RuntimeError, match="still being written"):
            writer.submit(2, second, event=EVENT, started=0.0)
        assert writer.wait(timeout=0.05) is None  # still in flight: the writer is stopped
        assert writer.busy
        release()
        saved = writer.wait(WAIT)
    assert saved is not None and saved.step == 1
    assert committed(root, checkpoint_name(1)) == want  # the refused submit copied nothing
    assert not writer.busy
    assert writer.wait() is None  # nothing in flight any more
    save(writer, 2, second)
    assert CheckpointStore(LocalStorage(root)).committed() == [checkpoint_name(1), checkpoint_name(2)]


def test_a_deferred_submit_copies_on_the_copier_thread_and_wait_copied_waits_for_it(
    writer: CheckpointWriter, root: Path
) -> None:
    """A callable state is made and copied on the writer's thread, after submit() returned; what
    changes in the arrays after wait_copied() is not saved."""
    state = sample(3)
    want = pack(state)
    gate, made_on = threading.Event(), []

    def make() -> StateArrays:
        made_on.append(threading.current_thread())
        assert gate.wait(WAIT)
        return state

    writer.submit(3, make, event=EVENT, started=time.monotonic())
    assert not writer.wait_copied(0.05)  # held at the gate: not copied yet
    gate.set()
    assert writer.wait_copied(WAIT)
    assert made_on and made_on[0] is not threading.current_thread()
    for arrays in state.files.values():
        for a in arrays.values():
            a[...] = 0
    saved = writer.wait(WAIT)
    assert saved is not None and saved.step == 3
    assert committed(root, checkpoint_name(3)) == want
    assert writer.wait_copied(0)  # nothing deferred in flight


@pytest.mark.parametrize("let_go", ["release", "wait_copied", "wait", "close"])
def test_a_held_deferred_submit_runs_only_once_let_go(writer: CheckpointWriter, root: Path, let_go: str) -> None:
    """Held, a deferred state is not even made until release(); waiting for it lets it go, so that
    nothing waits forever; closing the writer finishes it."""
    state = sample(5)
    want = pack(state)
    made = threading.Event()

    def make() -> StateArrays:
        made.set()
        return state

    writer.submit(5, make, event=EVENT, started=0.0, held=True)
    assert writer.held and writer.busy
    assert not made.wait(0.2) and writer.held  # not made, not even queued
    if let_go == "release":
        writer.release()
        assert not writer.held and made.wait(WAIT) and writer.wait(WAIT) is not None
    elif let_go == "wait_copied":
        assert writer.wait_copied(WAIT) and made.is_set() and writer.wait(WAIT) is not None
    elif let_go == "wait":
        assert writer.wait(WAIT) is not None and made.is_set()
    else:
        writer.close()
        assert made.is_set()
    assert not writer.held
    assert committed(root, checkpoint_name(5)) == want
    writer.release()  # nothing held: nothing happens


def test_a_deferred_state_that_fails_is_raised_by_wait_and_the_writer_goes_on(
    writer: CheckpointWriter, root: Path
) -> None:
    def make() -> StateArrays:
        raise ValueError("the capture broke")

    writer.submit(3, make, event=EVENT, started=0.0)
    assert writer.wait_copied(WAIT)  # a failed copy does not leave the barrier shut
    with pytest.raises(ValueError, match="the capture broke"):
        writer.wait(WAIT)
    assert not writer.busy and events(root, strict=True) == []
    state = sample(4)
    want = pack(state)
    writer.submit(4, lambda: state, event=EVENT, started=0.0)
    saved = writer.wait(WAIT)
    assert saved is not None and committed(root, checkpoint_name(4)) == want


# -- failures ----------------------------------------------------------------------------------------------


def test_a_failed_save_is_reported_and_the_writer_goes_on(writer: CheckpointWriter, root: Path) -> None:
    (root / "checkpoints").write_bytes(b"")  # a file where the checkpoints directory should be
    writer.submit(4, sample(4), event=EVENT, started=0.0)
    with pytest.raises(WriterError, match="checkpoint after step 4"):
        writer.wait(WAIT)
    assert not writer.busy
    assert events(root, strict=True) == []
    assert not gone(writer.pid)

    (root / "checkpoints").unlink()
    state = sample(5)
    want = pack(state)
    save(writer, 5, state)
    assert committed(root, checkpoint_name(5)) == want


def test_a_writer_that_is_gone_is_reported_by_wait(writer: CheckpointWriter, root: Path) -> None:
    save(writer, 1, sample(1))
    os.kill(writer.pid, signal.SIGKILL)
    writer.submit(2, sample(2), event=EVENT, started=0.0)
    with pytest.raises(WriterError, match=f"checkpoint writer \\(pid {writer.pid}\\)"):
        writer.wait(WAIT)
    assert CheckpointStore(LocalStorage(root)).committed() == [checkpoint_name(1)]


def test_a_paused_checkpoint_stays_torn_after_the_writer_is_killed(writer: CheckpointWriter, root: Path) -> None:
    save(writer, 1, sample(1))
    pause = {"source": "test", "event": "paused", "step": 2}
    writer.submit(2, sample(2), event=EVENT, started=0.0, pause=pause)
    saved = writer.wait(WAIT)
    assert saved is not None and saved.paused and saved.step == 2
    torn = root / "checkpoints" / checkpoint_name(2)
    assert (torn / MODEL).is_file() and not (torn / TRAIN).exists() and not (torn / MANIFEST).exists()
    assert not gone(writer.pid)  # stopped between the files for good

    os.kill(writer.pid, signal.SIGKILL)
    wait_for(lambda: gone(writer.pid), timeout=WAIT, what="the writer to die")
    store = CheckpointStore(LocalStorage(root))
    assert store.committed() == [checkpoint_name(1)]
    latest = store.load_latest()
    assert latest is not None and latest.step == 1
    (paused,) = [e for e in events(root, strict=True) if e["event"] == "paused"]
    assert paused["after_file"] == MODEL and paused["step"] == 2


# -- the process -----------------------------------------------------------------------------------------

PARENT = """
import sys, threading, time
import numpy as np
from pathlib import Path
from checkpoint.state import StateArrays
from checkpoint.writer import CheckpointWriter

root, pause, start = Path(sys.argv[1]), sys.argv[2] == "pause", sys.argv[3]
held = open(root / "held-by-the-parent", "w")
if start == "exec":  # a second thread: forking is not safe, so the writer is started with exec
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
w = CheckpointWriter(root, keep=3, events=root / "events.jsonl")
state = StateArrays({"a.safetensors": {"x": np.arange(10.0)}, "b.safetensors": {"y": np.arange(3)}}, {"n": 1})
w.submit(1, state, event={}, started=0.0)
assert w.wait(60) is not None
if pause:
    w.submit(2, state, event={}, started=0.0, pause={"event": "paused"})
    assert w.wait(60).paused
print(w.pid, type(w._proc).__name__, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.fixture(params=["fork", "exec"])
def start_mode(request: pytest.FixtureRequest) -> str:
    """How the writer is started: forked from a single-threaded parent, or with exec from one with threads."""
    return str(request.param)


@contextmanager
def parent_of_a_writer(root: Path, mode: str, start: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A real process that starts a writer, has it commit checkpoint 1 (and pause in checkpoint 2)."""
    root.mkdir()
    env = child_env({"OPENBLAS_NUM_THREADS": "1"})  # else NumPy's BLAS starts a thread on import
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(root), mode, start], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip(), f"the parent exited with {proc.wait(WAIT)} before printing the writer's pid"
        pid, how = line.split()
        writer_pid = int(pid)
        writer = psutil.Process(writer_pid)
        assert writer.ppid() == proc.pid and "checkpoint.writer_process" in " ".join(writer.cmdline())
        assert how == ("ForkedWriter" if start == "fork" else "Popen")
        assert not [f for f in writer.open_files() if f.path.endswith("held-by-the-parent")]
        yield proc, writer_pid
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)


def test_the_writer_dies_when_its_parent_is_sigkilled(root: Path, start_mode: str) -> None:
    with parent_of_a_writer(root, "idle", start_mode) as (proc, writer_pid):
        assert not gone(writer_pid)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(WAIT) == -signal.SIGKILL
        wait_for(lambda: gone(writer_pid), timeout=WAIT, what="the orphaned writer to die")
    assert CheckpointStore(LocalStorage(root)).committed() == [checkpoint_name(1)]


def test_a_writer_paused_mid_checkpoint_leaves_no_checkpoint_when_its_parent_is_sigkilled(
    root: Path, start_mode: str
) -> None:
    with parent_of_a_writer(root, "pause", start_mode) as (proc, writer_pid):
        torn = root / "checkpoints" / checkpoint_name(2)
        assert (torn / "a.safetensors").is_file() and not (torn / MANIFEST).exists()
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(lambda: gone(writer_pid), timeout=WAIT, what="the paused writer to die")
    assert not (torn / MANIFEST).exists() and not (torn / "b.safetensors").exists()
    store = CheckpointStore(LocalStorage(root))
    assert store.committed() == [checkpoint_name(1)]
    latest = store.load_latest()
    assert latest is not None and latest.step == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_do_not_stop_the_writer(writer: CheckpointWriter, root: Path, sig: int) -> None:
    save(writer, 1, sample(1))  # answered: it is up, its signal dispositions set
    os.kill(writer.pid, sig)
    state = sample(2)
    want = pack(state)
    save(writer, 2, state)  # a writer killed by the signal could not answer this one
    assert not gone(writer.pid)
    assert committed(root, checkpoint_name(2)) == want


@pytest.mark.parametrize("deferred", [False, True])
def test_close_lets_the_checkpoint_in_flight_finish_then_the_writer_exits(
    writer: CheckpointWriter, root: Path, deferred: bool
) -> None:
    proc = psutil.Process(writer.pid)
    state = sample(8)
    want = pack(state)
    writer.submit(8, (lambda: state) if deferred else state, event=EVENT, started=0.0)
    writer.close()
    assert committed(root, checkpoint_name(8)) == want
    assert not proc.is_running()


def test_close_with_nothing_submitted_does_not_wait_for_its_timeout(root: Path) -> None:
    root.mkdir()
    w = CheckpointWriter(root, keep=1, events=root / "events.jsonl")
    proc = psutil.Process(w.pid)
    # Far longer than the bounded wait below: a close() that waits for a reply that is not coming fails.
    t = threading.Thread(target=w.close, kwargs={"timeout": 10 * WAIT}, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "close() waited for a checkpoint that was never submitted"
    assert not proc.is_running()
