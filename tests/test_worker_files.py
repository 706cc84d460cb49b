"""The run-directory files the worker writes (runner/worker/files.py): the worker lock (a
:class:`rundir.lock.RunLock` with its own file and message), the heartbeat and when it is rewritten,
the loss journal's records, the worker's event records, ``job.json`` and ``final.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from rundir.lock import LOCK_FILE, RunLock
from rundir.names import ENV_ATTEMPT, EVENTS, FINAL, HEARTBEAT, JOB, LOSSES, WORKER_LOCK, read_heartbeat
from runner.worker.files import (
    TRAIN_PHASE,
    EventLog,
    Heartbeat,
    LossJournal,
    attempt_number,
    beat_due,
    bind_config,
    config_conflict,
    loss_record,
    read_final,
    worker_lock,
    write_final,
)
from tests.helpers.readers import jsonl

# -- the locks -----------------------------------------------------------------------------------------------


def test_a_second_worker_lock_is_refused_with_69_and_the_workers_message(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with worker_lock(run_dir), pytest.raises(UserError) as exc:
        worker_lock(run_dir).acquire()
    assert exc.value.code == ExitCode.LOCKED == 69
    assert str(exc.value) == f"run directory {run_dir} is in use by another worker"
    assert (run_dir / WORKER_LOCK).read_bytes() == b""  # the worker's lock file stays empty
    with worker_lock(run_dir):  # released: taken again
        pass


def test_the_worker_lock_and_the_supervisor_lock_are_two_locks(tmp_path: Path) -> None:
    """Each guards its own file: a supervisor and its worker hold theirs at once."""
    with RunLock(tmp_path), worker_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_second_supervisor_lock_still_names_the_holders_pid(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(UserError) as exc:
        RunLock(tmp_path).acquire()
    assert exc.value.code == ExitCode.LOCKED
    assert str(exc.value) == f"run directory {tmp_path} is in use by supervisor pid {os.getpid()}"


@pytest.mark.parametrize("make", [worker_lock, RunLock], ids=["worker", "supervisor"])
def test_a_run_directory_that_cannot_be_made_is_refused_with_73(tmp_path: Path, make) -> None:
    (tmp_path / "file").write_text("")
    run_dir = tmp_path / "file" / "run"
    with pytest.raises(UserError) as exc:
        make(run_dir).acquire()
    assert exc.value.code == ExitCode.UNWRITABLE == 73
    assert str(exc.value) == f"run directory {run_dir} is not writable: Not a directory"


# -- the heartbeat --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("last", "phase", "now", "want"), [
    (None, TRAIN_PHASE, 0.0, True),  # nothing written yet
    (("restoring", 9.0), TRAIN_PHASE, 9.1, True),  # a new phase: at once
    ((TRAIN_PHASE, 9.0), TRAIN_PHASE, 9.4, False),  # training, too soon
    ((TRAIN_PHASE, 9.0), TRAIN_PHASE, 9.5, True),  # training, due again
    ((TRAIN_PHASE, 9.0), "checkpoint", 9.1, True),  # any other phase: always
    (("checkpoint", 9.0), "checkpoint", 9.1, True),
])
def test_beat_due(last: tuple[str, float] | None, phase: str, now: float, want: bool) -> None:
    assert beat_due(last, phase, now, every_s=0.5) is want


def test_the_heartbeat_is_rewritten_at_phase_changes_and_now_and_then_while_training(tmp_path: Path) -> None:
    now = [100.0]
    hb = Heartbeat(tmp_path / HEARTBEAT, pid=7, attempt=3, every_s=10.0, clock=lambda: now[0])

    def beat() -> tuple[str, int | None]:
        rec = read_heartbeat(tmp_path)
        assert rec is not None and (rec["pid"], rec["attempt"]) == (7, 3)
        return rec["phase"], rec["step"]

    hb.beat("restoring")
    assert beat() == ("restoring", None)
    hb.training(0)
    assert beat() == (TRAIN_PHASE, 0)  # a new phase: at once
    now[0] += 9.0
    hb.training(1)
    assert beat() == (TRAIN_PHASE, 0)  # the same phase, too soon
    hb.beat("evaluating-a-long-phase-name", step=2)
    hb.training(2)
    assert beat() == (TRAIN_PHASE, 2)  # back from another phase: at once (and the file cut to the shorter record)
    now[0] += 10.0
    hb.training(3)
    assert beat() == (TRAIN_PHASE, 3)  # due again
    hb.close()


# -- the loss journal and the events ---------------------------------------------------------------------------


def test_a_loss_record_holds_the_loss_exactly_and_plain_numbers() -> None:
    import numpy as np

    rec = loss_record(4, loss=np.float32(0.1), epoch=1, batch=2, acc=np.float64(0.5), lr=None, attempt=3, at=5.0,
                      dt=0.25)
    assert rec == {"step": 4, "epoch": 1, "batch": 2, "loss": float(np.float32(0.1)),
                   "loss_hex": float(np.float32(0.1)).hex(), "acc": 0.5, "lr": None, "attempt": 3, "time": 5.0,
                   "dt": 0.25}
    assert type(rec["loss"]) is float and type(rec["acc"]) is float
    json.dumps(rec)


def test_a_loss_records_extra_fields_never_replace_its_own() -> None:
    rec = loss_record(4, loss=0.5, epoch=0, batch=4, acc=None, lr=None, attempt=1, at=5.0, dt=0.1,
                      extra={"rank0_loss": 0.25, "ranks": 2, "loss": 9.0, "step": 99})
    assert (rec["rank0_loss"], rec["ranks"], rec["loss"], rec["step"]) == (0.25, 2, 0.5, 4)


def test_the_loss_journal_appends_one_line_per_step_of_its_attempt(tmp_path: Path) -> None:
    journal = LossJournal(tmp_path / LOSSES, attempt=2)
    for step in (0, 1):
        journal.write(step, loss=1.0 / (step + 1), epoch=0, batch=step, acc=None, lr=0.1, dt=0.01)
    journal.close()
    recs = jsonl(tmp_path / LOSSES)
    assert [(r["step"], r["attempt"], float.fromhex(r["loss_hex"])) for r in recs] == [(0, 2, 1.0), (1, 2, 0.5)]


def test_event_records_say_which_worker_wrote_them(tmp_path: Path) -> None:
    log = EventLog(tmp_path / EVENTS, pid=11)
    log.standby_ready()
    log.attempt = 4
    log.record(EventKind.PREEMPTED, step=9)
    ready, preempted = jsonl(tmp_path / EVENTS)
    assert {k: v for k, v in ready.items() if k != "time"} == {"source": "standby", "event": "standby-ready",
                                                              "pid": 11}
    assert {k: v for k, v in preempted.items() if k != "time"} == {"source": "worker", "event": "preempted",
                                                                  "attempt": 4, "pid": 11, "step": 9}
    assert log.ids() == {"source": "worker", "attempt": 4, "pid": 11}


@pytest.mark.parametrize(("env", "journal", "want"), [
    ({ENV_ATTEMPT: "5"}, [], 5),  # the supervisor's number
    ({ENV_ATTEMPT: "5"}, [{"step": 0, "loss": 1.0, "attempt": 9}], 5),
    ({}, [], 1),  # run by hand, a new run
    ({}, [{"step": 0, "loss": 1.0, "attempt": 1}, {"step": 1, "loss": 1.0, "attempt": 3}], 4),  # the last line's + 1
    ({ENV_ATTEMPT: ""}, [{"step": 0, "loss": 1.0, "attempt": 2}], 3),
    ({}, [{"step": 0, "loss": 1.0, "attempt": 2}, {"step": "x", "attempt": "y"}], 3),  # a malformed line is skipped
])
def test_attempt_number(tmp_path: Path, env: dict[str, str], journal: list[dict], want: int) -> None:
    (tmp_path / LOSSES).write_text("".join(json.dumps(r) + "\n" for r in journal))
    assert attempt_number(env, tmp_path) == want


# -- job.json and final.json -------------------------------------------------------------------------------


@pytest.mark.parametrize(("have", "want", "key"), [
    ({"lr": 0.1, "seed": 1}, {"lr": 0.1, "seed": 1}, None),
    ({"lr": 0.1, "seed": 1}, {"seed": 1, "lr": 0.2}, "lr"),
    ({"lr": 0.1}, {"lr": 0.1, "seed": 1}, "seed"),  # a key only one of them has
    ({"b": 1, "a": 1}, {"b": 2, "a": 2}, "a"),  # the first in sorted order
    ({"x": None}, {}, None),  # a key set to None is one left out
])
def test_config_conflict(have: dict, want: dict, key: str | None) -> None:
    assert config_conflict(have, want) == key


def test_bind_config_records_the_first_and_refuses_another_with_78(tmp_path: Path) -> None:
    bind_config(tmp_path, {"lr": 0.1, "sizes": (8, 16)})
    assert json.loads((tmp_path / JOB).read_text()) == {"lr": 0.1, "sizes": [8, 16]}
    bind_config(tmp_path, {"sizes": [8, 16], "lr": 0.1})  # the same configuration, as JSON reads it back
    with pytest.raises(UserError) as exc:
        bind_config(tmp_path, {"lr": 0.2, "sizes": (8, 16)})
    assert exc.value.code == ExitCode.BAD_CONFIG == 78
    assert str(exc.value) == f"{tmp_path} holds a run with lr=0.1, not 0.2; use a new --run-dir"
    (tmp_path / JOB).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as exc:
        bind_config(tmp_path, {"lr": 0.1})
    assert exc.value.code == ExitCode.BAD_CONFIG


def test_final_json_round_trip(tmp_path: Path) -> None:
    assert read_final(tmp_path) is None
    write_final(tmp_path, {"steps": 10}, attempt=2)
    final = read_final(tmp_path)
    assert final is not None and (final["steps"], final["attempt"]) == (10, 2) and "time" in final
    (tmp_path / FINAL).write_text("[1, 2]")  # not a record
    assert read_final(tmp_path) is None
