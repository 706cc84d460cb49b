"""The worker's failures that are facts, end to end inside one worker: a NaN loss or non-finite
parameters stop the job (exit 76) naming the step and the last good checkpoint, and commit nothing;
a write that finds the disk full - the journal's, the checkpoint writer's - leaves the ``Worker`` as
a ``ResourceError`` (exit 74) naming the file; ``run_guarded`` turns both into one line and the
code. With a real tmpfs where the tests run as root: a job on a full disk says so in one line."""

from __future__ import annotations

import errno
import math
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from checkpoint.state import StateArrays
from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore
from checkpoint.writer_protocol import WriterError
from rundir.errors import NonFiniteError, ResourceError
from rundir.exitcodes import ExitCode, UserError
from runner.worker import ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY, EVENTS, LOSSES, Worker, run_guarded
from runner.worker import api as api_mod
from runner.worker.guard import exit_code
from tests.helpers import REPO
from tests.helpers.processes import child_env as job_env
from tests.helpers.readers import events, losses
from tests.helpers.tmpfs import tmpfs

SGD = REPO / "tests" / "jobs" / "sgd.py"


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for k in (ENV_ATTEMPT, ENV_CHAOS_ARM, ENV_STANDBY):
        monkeypatch.delenv(k, raising=False)
    yield tmp_path / "run"


class Weights:
    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def arrays(self) -> StateArrays:
        return StateArrays({"state.safetensors": {"w": self.w}}, {})


def committed(run_dir: Path) -> list[str]:
    return CheckpointStore(LocalStorage(run_dir)).committed()


# -- non-finite values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_a_non_finite_loss_stops_the_job_naming_the_step_and_the_last_good_checkpoint(run_dir: Path,
                                                                                    loss: float) -> None:
    with pytest.raises(NonFiniteError) as got, Worker(run_dir, handle_signals=False) as w:
        w.restore()
        for step in range(41):
            w.report_step(step, loss=1.0)
            if (step + 1) % 10 == 0:
                w.checkpoint(step + 1, partial(Weights, np.ones(4)))  # asynchronous: in flight at the NaN
        w.report_step(41, loss=loss)
    value = float(loss)
    assert str(got.value) == f"the loss is {value} at step 41; the last good checkpoint is step-000000040"
    assert got.value.code is ExitCode.NON_FINITE
    assert [r["step"] for r in losses(run_dir)] == list(range(41))  # the bad step is not journaled
    (e,) = events(run_dir, "non-finite")
    assert (e["step"], e["last_good"], e["what"]) == (41, "step-000000040", f"the loss is {value} at step 41")


def test_a_nan_before_any_checkpoint_says_there_is_none(run_dir: Path) -> None:
    with pytest.raises(NonFiniteError, match="^the loss is nan at step 0; no checkpoint was saved before it$"), \
            Worker(run_dir, handle_signals=False) as w:
        w.restore()
        w.report_step(0, loss=math.nan)


# Broken on purpose: a worker without the check journals the NaN and trains on.
def test_without_the_check_the_nan_would_be_journaled(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_mod.math, "isfinite", lambda x: True)
    with Worker(run_dir, handle_signals=False) as w:
        w.restore()
        w.report_step(0, loss=math.nan)
    assert math.isnan(losses(run_dir)[0]["loss"])


@pytest.mark.parametrize("wait", [False, True], ids=["asynchronous", "synchronous"])
def test_non_finite_parameters_are_never_committed(run_dir: Path, wait: bool) -> None:
    bad = np.ones(4)
    bad[2] = np.nan
    with pytest.raises(NonFiniteError) as got, Worker(run_dir, handle_signals=False) as w:
        w.restore()
        w.checkpoint(5, partial(Weights, np.ones(4)), wait=wait)
        w.checkpoint(10, partial(Weights, bad), wait=wait)
        w.flush_checkpoints()  # an asynchronous one is refused in the writer; its answer comes here
    assert str(got.value) == ("the parameters are not finite at step 10 (state.safetensors: w holds nan); "
                              "the last good checkpoint is step-000000005")
    assert committed(run_dir) == ["step-000000005"]
    assert not (run_dir / "checkpoints" / "step-000000010").exists()


# -- a full disk -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raised", "line"), [
    (OSError(errno.ENOSPC, "No space left on device", "/r/losses.jsonl"),
     "no space left on device writing /r/losses.jsonl"),
    (WriterError("...", errno=errno.EDQUOT, filename="/r/checkpoints/step-000000005/m"),
     "disk quota exceeded writing /r/checkpoints/step-000000005/m"),
])
def test_a_full_disk_leaves_the_worker_as_a_resource_error(run_dir: Path, raised: Exception, line: str) -> None:
    with pytest.raises(ResourceError) as got, Worker(run_dir, handle_signals=False) as w:
        w.restore()
        raise raised
    assert str(got.value) == line and got.value.code is ExitCode.IO_ERROR
    assert got.value.__cause__ is raised


@pytest.mark.parametrize("raised", [OSError(errno.EACCES, "Permission denied", "/r/x"), RuntimeError("boom"),
                                    UserError("bad data", ExitCode.BAD_DATA)])
def test_other_errors_leave_the_worker_as_they_are(run_dir: Path, raised: Exception) -> None:
    with pytest.raises(type(raised)) as got, Worker(run_dir, handle_signals=False):
        raise raised
    assert got.value is raised


def test_a_full_disk_when_the_worker_starts(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / LOSSES))

    monkeypatch.setattr(api_mod.AttemptFiles, "open", full)
    with pytest.raises(ResourceError, match=f"^no space left on device writing {run_dir / LOSSES}$"):
        Worker(run_dir, handle_signals=False)


# -- the guard -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "known"), [
    (UserError("run directory /r is in use", ExitCode.LOCKED), (69, "run directory /r is in use")),
    (NonFiniteError("the loss is nan at step 3; no checkpoint was saved before it"),
     (76, "the loss is nan at step 3; no checkpoint was saved before it")),
    (OSError(errno.EIO, "Input/output error", "/r/heartbeat"), (74, "input/output error writing /r/heartbeat")),
    (OSError(errno.ENOENT, "No such file or directory", "/r/x"), None),  # a bug: a crash, with its traceback
    (KeyError("x"), None),
])
def test_exit_code(exc: BaseException, known: tuple[int, str] | None) -> None:
    assert exit_code(exc) == known


def test_run_guarded_returns_the_code_and_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_guarded(lambda: 0) == 0
    assert run_guarded(lambda: ExitCode.PREEMPTED) == 75

    def full() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/r/final.json")

    assert run_guarded(full) == 74
    assert capsys.readouterr().err == "error: no space left on device writing /r/final.json\n"
    with pytest.raises(ZeroDivisionError):
        run_guarded(lambda: 1 // 0)


# -- a real full disk (root only) -------------------------------------------------------------------------------


def test_a_job_on_a_full_disk_exits_74_with_one_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "96k") as disk:
        # Its journal grows until the disk is full: ~150 bytes a step.
        p = subprocess.run([sys.executable, str(SGD), str(disk / "run"), "--steps", "5000"], capture_output=True,
                           text=True, env=job_env(), timeout=120, cwd=REPO)
        assert p.returncode == ExitCode.IO_ERROR, p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
        assert p.stderr.startswith("error: no space left on device writing ") and str(disk / "run") in p.stderr
        store = CheckpointStore(LocalStorage(disk / "run"))
        ck = store.load_latest()  # nothing committed was lost, nothing half-written committed
        assert ck is not None and ck.step % 5 == 0 and ck.step > 0
        assert not [q for q in (disk / "run").rglob("*") if ".tmp-" in q.name]
        assert (disk / "run" / EVENTS).exists()
