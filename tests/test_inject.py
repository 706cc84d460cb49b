"""The injector as a table of pure decisions: observations in, actions out. No processes: the
supervisor that carries the actions out is tested elsewhere."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from chaos.faults import ARMED_KINDS, Fault, FaultKind
from chaos.inject import FaultHit, Injector, corrupt_file
from rundir.classify import ExitClass
from rundir.contract import FileEffect, SendSignal
from runner.worker import ENV_CHAOS_ARM, PAUSED_EVENT, PAUSED_PHASE
from runner.worker.ranks import part_key
from tests.helpers.factories import attempt_result, obs, saved, schedule_of

TARGET = 12
GRACE = 4.5


def injector(*faults, run_dir: Path = Path("/nonexistent-run"), grace: float = GRACE) -> Injector:
    return Injector(schedule_of(*faults), run_dir, grace=grace)


# -- signals on reaching the target step ---------------------------------------------------------------------

SIGNAL_KINDS = {
    FaultKind.SIGKILL: (signal.SIGKILL, None),
    FaultKind.SIGTERM: (signal.SIGTERM, GRACE),
    FaultKind.HANG: (signal.SIGSTOP, None),
}


@pytest.mark.parametrize("kind", list(SIGNAL_KINDS), ids=lambda k: k.value)
def test_signal_faults_wait_for_the_target_step(kind: FaultKind) -> None:
    inj = injector((kind, TARGET))
    for last in (None, 0, 5, TARGET - 1):
        assert inj.on_tick(obs(last)) == [], f"fired at last_step {last}"
    # A checkpoint phase or a checkpoint event is no reason for these kinds to fire early.
    assert inj.on_tick(obs(TARGET - 1, phase=PAUSED_PHASE, events=[saved(TARGET)])) == []
    assert inj.hits == [] and inj.current == Fault(kind, TARGET)


@pytest.mark.parametrize("last_step", [TARGET, TARGET + 3], ids=["at", "past"])
@pytest.mark.parametrize("kind", list(SIGNAL_KINDS), ids=lambda k: k.value)
def test_signal_faults_fire_once_the_target_step_is_done(kind: FaultKind, last_step: int) -> None:
    inj = injector((kind, TARGET))
    actions = inj.on_tick(obs(last_step, attempt=2))
    sig, kill_after = SIGNAL_KINDS[kind]
    assert len(actions) == 1
    (a,) = actions
    assert isinstance(a, SendSignal)
    assert a.sig == sig
    assert a.kill_after == kill_after
    assert a.fault == {"fault": kind.value, "target_step": TARGET}
    # Nothing twice, however far the worker gets before it dies.
    for later in (last_step, last_step + 1, last_step + 10):
        assert inj.on_tick(obs(later, attempt=2)) == []


@pytest.mark.parametrize("kind", [FaultKind.SIGKILL, FaultKind.SIGTERM, FaultKind.HANG], ids=lambda k: k.value)
def test_a_signal_fault_aimed_at_a_rank_goes_to_that_rank_alone(kind: FaultKind) -> None:
    (a,) = injector(Fault(kind, TARGET, {"rank": 1})).on_tick(obs(TARGET))
    assert isinstance(a, SendSignal) and a.rank == 1
    assert a.fault == {"fault": kind.value, "target_step": TARGET, "rank": 1}  # recorded with the fault
    (b,) = injector((kind, TARGET)).on_tick(obs(TARGET))
    assert isinstance(b, SendSignal) and b.rank is None  # the whole worker


def test_a_crash_aimed_at_a_rank_is_armed_for_that_rank() -> None:
    env = injector(Fault(FaultKind.CRASH, 9, {"rank": 1})).env_for(1)
    assert json.loads(env[ENV_CHAOS_ARM]) == {"kind": "crash", "step": 9, "rank": 1}


def test_sigterm_grace_is_the_injectors() -> None:
    (a,) = injector((FaultKind.SIGTERM, 3), grace=0.25).on_tick(obs(3))
    assert a == SendSignal(signal.SIGTERM, kill_after=0.25, fault={"fault": "sigterm", "target_step": 3})


# -- checkpoint-write: the worker pauses inside the write, the injector kills it there ---------------------


def test_checkpoint_write_fires_only_when_the_worker_pauses_in_the_write() -> None:
    inj = injector((FaultKind.CHECKPOINT_WRITE, 15))
    for o in (obs(14), obs(20), obs(14, phase="checkpoint"), obs(14, events=[saved(15)]), obs(None, phase=None)):
        assert inj.on_tick(o) == []
    (a,) = inj.on_tick(obs(14, phase=PAUSED_PHASE))
    assert a == SendSignal(signal.SIGKILL, fault={"fault": "checkpoint-write", "target_step": 15})
    assert inj.on_tick(obs(14, phase=PAUSED_PHASE)) == []


@pytest.mark.parametrize("rank", [0, 1])
def test_a_checkpoint_write_aimed_at_a_rank_is_armed_there_and_kills_that_rank_when_it_pauses(rank: int) -> None:
    """Rank 0 pauses between the files it commits (its heartbeat says so), a rank R > 0 in the middle
    of its part (it has no heartbeat: its event says so); either way that rank is the one killed."""
    inj = injector(Fault(FaultKind.CHECKPOINT_WRITE, 15, {"rank": rank}))
    assert json.loads(inj.env_for(1)[ENV_CHAOS_ARM]) == {"kind": "checkpoint-write", "step": 15, "rank": rank}
    paused = {"source": "worker", "event": PAUSED_EVENT, "attempt": 1, "step": 15, "rank": rank}
    (a,) = inj.on_tick(obs(14, events=[paused]))
    assert a == SendSignal(signal.SIGKILL, fault={"fault": "checkpoint-write", "target_step": 15, "rank": rank},
                           rank=rank)


# -- corrupt-checkpoint: on the checkpoint-saved event, corrupt a file, then SIGKILL -------------------------


def make_checkpoint(run_dir: Path, step: int, size: int = 1000) -> Path:
    d = run_dir / "checkpoints" / f"step-{step:09d}"
    d.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.safetensors", "data.safetensors"):
        (d / name).write_bytes(bytes(i % 251 for i in range(size)))
    return d


CORRUPT = Fault(FaultKind.CORRUPT_CHECKPOINT, 15,
                {"mode": "flip-byte", "file": "optimizer.safetensors", "position": 0.5})


def test_corrupt_checkpoint_waits_for_the_targeted_checkpoint(tmp_path: Path) -> None:
    inj = injector(CORRUPT, run_dir=tmp_path)
    assert inj.on_tick(obs(15)) == []  # past the step, but no checkpoint saved yet
    assert inj.on_tick(obs(9, events=[saved(10)])) == []  # an earlier checkpoint
    assert inj.on_tick(obs(14, phase=PAUSED_PHASE)) == []
    other = {"source": "worker", "event": "checkpoint-fallback", "step": 20, "name": "step-000000020"}
    assert inj.on_tick(obs(19, events=[other])) == []


@pytest.mark.parametrize("saved_step", [15, 20], ids=["the-target", "a-later-one"])
def test_corrupt_checkpoint_corrupts_the_file_then_kills(tmp_path: Path, saved_step: int) -> None:
    ckpt = make_checkpoint(tmp_path, saved_step)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    inj = injector(CORRUPT, run_dir=tmp_path)
    actions = inj.on_tick(obs(saved_step - 1, attempt=3, events=[saved(10), saved(saved_step)]))
    assert [type(a) for a in actions] == [FileEffect, SendSignal]
    effect, kill = actions
    assert isinstance(effect, FileEffect) and isinstance(kill, SendSignal)
    assert kill.sig == signal.SIGKILL and kill.kill_after is None
    assert effect.fault == kill.fault == {"fault": "corrupt-checkpoint", "target_step": 15}
    # Deciding changed nothing on disk: the supervisor applies the effect.
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    what = effect.apply()
    assert what == f"flipped byte 500 of step-{saved_step:09d}/optimizer.safetensors"
    after = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert after["model.safetensors"] == before["model.safetensors"]
    assert after["data.safetensors"] == before["data.safetensors"]
    old, new = before["optimizer.safetensors"], after["optimizer.safetensors"]
    diff = [i for i, (x, y) in enumerate(zip(old, new)) if x != y]
    assert diff == [500]
    assert inj.on_tick(obs(saved_step + 1, attempt=3, events=[saved(saved_step)])) == []  # nothing twice
    # The hit carries what the effect did.
    inj.on_exit(attempt_result(ExitClass.KILLED, attempt=3, last_step=saved_step - 1))
    (hit,) = inj.hits
    assert (hit.kind, hit.target_step, hit.attempt, hit.hit_step, hit.effect, hit.missed) == (
        "corrupt-checkpoint", 15, 3, saved_step - 1, what, False)


def test_corrupt_checkpoint_defaults_to_flipping_a_model_byte(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path, 10, size=10)
    inj = injector((FaultKind.CORRUPT_CHECKPOINT, 10), run_dir=tmp_path)
    effect, _ = inj.on_tick(obs(9, events=[saved(10)]))
    assert isinstance(effect, FileEffect)
    assert effect.apply() == "flipped byte 5 of step-000000010/model.safetensors"
    assert (ckpt / "model.safetensors").read_bytes()[5] == 5 ^ 0xFF


def make_part(run_dir: Path, step: int, rank: int, size: int = 100) -> Path:
    path = run_dir / part_key(step, rank)
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(range(size)))
    return path


def test_a_corrupt_checkpoint_aimed_at_a_rank_damages_its_part_and_kills_that_rank(tmp_path: Path) -> None:
    ckpt, part = make_checkpoint(tmp_path, 20), make_part(tmp_path, 20, 1)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    inj = injector(Fault(FaultKind.CORRUPT_CHECKPOINT, 15, {"mode": "truncate", "position": 0.25, "rank": 1}),
                   run_dir=tmp_path)
    effect, kill = inj.on_tick(obs(19, events=[saved(20)]))
    assert isinstance(effect, FileEffect) and kill == SendSignal(signal.SIGKILL, fault=effect.fault, rank=1)
    assert effect.apply() == "truncated step-000000020/rank-00001.safetensors to 25 of 100 bytes"
    assert part.read_bytes() == bytes(range(25))
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # rank 0's files untouched


def test_a_corrupt_checkpoint_aimed_at_rank_0_damages_its_file(tmp_path: Path) -> None:
    ckpt, part = make_checkpoint(tmp_path, 15, size=10), make_part(tmp_path, 15, 1)
    inj = injector(Fault(FaultKind.CORRUPT_CHECKPOINT, 15, {**CORRUPT.detail, "rank": 0}), run_dir=tmp_path)
    effect, kill = inj.on_tick(obs(14, events=[saved(15)]))
    assert isinstance(effect, FileEffect) and isinstance(kill, SendSignal) and kill.rank == 0
    assert effect.apply() == "flipped byte 5 of step-000000015/optimizer.safetensors"
    assert (ckpt / "optimizer.safetensors").read_bytes()[5] == 5 ^ 0xFF
    assert part.read_bytes() == bytes(range(100))


def test_a_corrupt_part_that_is_not_there_is_not_applied(tmp_path: Path) -> None:
    inj = injector(Fault(FaultKind.CORRUPT_CHECKPOINT, 15, {"rank": 1}), run_dir=tmp_path)
    effect, _ = inj.on_tick(obs(14, events=[saved(15)]))
    assert isinstance(effect, FileEffect) and effect.apply().startswith("not applied")


# -- arming through the environment ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FaultKind), ids=lambda k: k.value)
def test_env_for_arms_only_the_faults_inside_the_worker(kind: FaultKind) -> None:
    env = injector((kind, 20)).env_for(1)
    if kind in (FaultKind.CRASH, FaultKind.CHECKPOINT_WRITE):
        assert set(env) == {ENV_CHAOS_ARM}
        assert json.loads(env[ENV_CHAOS_ARM]) == {"kind": kind.value, "step": 20}
    else:
        assert env == {}
    assert {FaultKind.CRASH, FaultKind.CHECKPOINT_WRITE} == ARMED_KINDS


def test_env_for_follows_the_current_fault() -> None:
    inj = injector((FaultKind.CRASH, 5), (FaultKind.SIGKILL, 10), (FaultKind.CHECKPOINT_WRITE, 15))
    assert json.loads(inj.env_for(1)[ENV_CHAOS_ARM]) == {"kind": "crash", "step": 5}
    inj.on_exit(attempt_result(ExitClass.CRASHED, attempt=1, last_step=4))
    assert inj.env_for(2) == {}
    inj.on_tick(obs(10, attempt=2))
    inj.on_exit(attempt_result(ExitClass.KILLED, attempt=2, last_step=10))
    assert json.loads(inj.env_for(3)[ENV_CHAOS_ARM]) == {"kind": "checkpoint-write", "step": 15}
    inj.on_tick(obs(14, attempt=3, phase=PAUSED_PHASE))
    inj.on_exit(attempt_result(ExitClass.KILLED, attempt=3, last_step=14))
    assert inj.env_for(4) == {} and inj.current is None


def test_no_faults_no_actions() -> None:
    inj = injector()
    assert inj.env_for(1) == {}
    assert inj.on_tick(obs(50, phase=PAUSED_PHASE, events=[saved(50)])) == []
    inj.on_exit(attempt_result(ExitClass.COMPLETED))
    assert inj.hits == []


# -- on_exit: hits, advancing, misses ---------------------------------------------------------------------


def test_on_exit_records_the_hit_and_advances() -> None:
    inj = injector((FaultKind.SIGKILL, 5), (FaultKind.HANG, 12))
    (a,) = inj.on_tick(obs(6, attempt=1))
    assert isinstance(a, SendSignal) and a.sig == signal.SIGKILL
    inj.on_exit(attempt_result(ExitClass.KILLED, attempt=1, last_step=7))
    (hit,) = inj.hits
    # hit_step is what the injector saw when it fired, not where the worker got to before dying.
    assert (hit.kind, hit.target_step, hit.attempt, hit.hit_step, hit.missed) == ("sigkill", 5, 1, 6, False)
    assert hit.time is not None and hit.effect is None
    assert inj.current == Fault(FaultKind.HANG, 12)
    # The next fault is live at once, for the next attempt.
    assert inj.on_tick(obs(11, attempt=2)) == []
    (a,) = inj.on_tick(obs(12, attempt=2))
    assert isinstance(a, SendSignal) and a.sig == signal.SIGSTOP
    inj.on_exit(attempt_result(ExitClass.HUNG, attempt=2, last_step=12))
    assert [(h.kind, h.attempt, h.hit_step) for h in inj.hits] == [("sigkill", 1, 6), ("hang", 2, 12)]
    assert inj.current is None
    assert inj.on_tick(obs(40, attempt=3)) == []


def test_a_sigterm_hit_is_recorded_when_the_worker_exits_preempted() -> None:
    inj = injector((FaultKind.SIGTERM, 8))
    inj.on_tick(obs(8, attempt=4))
    inj.on_exit(attempt_result(ExitClass.PREEMPTED, attempt=4, last_step=9))
    assert [(h.kind, h.attempt, h.hit_step, h.missed) for h in inj.hits] == [("sigterm", 4, 8, False)]


def test_a_crash_is_a_hit_when_the_attempt_crashes() -> None:
    inj = injector((FaultKind.CRASH, 20), (FaultKind.SIGKILL, 30))
    assert inj.on_tick(obs(25)) == []  # the worker raises by itself: nothing to send
    inj.on_exit(attempt_result(ExitClass.CRASHED, attempt=2, last_step=19, ended=1234.5))
    (hit,) = inj.hits
    assert hit == FaultHit("crash", 20, 2, 19, 1234.5)
    assert inj.current == Fault(FaultKind.SIGKILL, 30)


OTHER_DEATHS = [
    (kind, died)
    for kind in FaultKind
    for died in (ExitClass.KILLED, ExitClass.HUNG, ExitClass.PREEMPTED, ExitClass.CRASHED)
    if not (kind is FaultKind.CRASH and died is ExitClass.CRASHED)  # that is the crash fault hitting
]


@pytest.mark.parametrize(("kind", "died"), OTHER_DEATHS, ids=lambda x: x.value)
def test_an_attempt_that_dies_of_something_else_leaves_the_fault_due(kind: FaultKind, died: ExitClass) -> None:
    inj = injector((kind, 20))
    inj.on_exit(attempt_result(died, attempt=1, last_step=7))
    assert inj.hits == []
    assert inj.current == Fault(kind, 20)
    assert inj.env_for(2) == injector((kind, 20)).env_for(1)  # armed again for the next attempt


def test_faults_the_job_outran_are_recorded_as_missed() -> None:
    inj = injector((FaultKind.SIGKILL, 5), (FaultKind.HANG, 40), (FaultKind.CRASH, 60))
    inj.on_tick(obs(5, attempt=1))
    inj.on_exit(attempt_result(ExitClass.KILLED, attempt=1, last_step=5))
    # The next attempt completes before the hang could fire.
    inj.on_exit(attempt_result(ExitClass.COMPLETED, attempt=2, last_step=74))
    assert [h.to_json() for h in inj.hits][1:] == [
        {"kind": "hang", "target_step": 40, "attempt": None, "hit_step": None, "time": None, "effect": None,
         "missed": True},
        {"kind": "crash", "target_step": 60, "attempt": None, "hit_step": None, "time": None, "effect": None,
         "missed": True},
    ]
    assert not inj.hits[0].missed
    assert inj.current is None and inj.pending == []


def test_fault_hit_json() -> None:
    h = FaultHit("sigterm", 22, 3, 22, 17.5, effect=None)
    assert h.to_json() == {"kind": "sigterm", "target_step": 22, "attempt": 3, "hit_step": 22, "time": 17.5,
                           "effect": None, "missed": False}
    assert FaultHit("hang", 8, 2, 8, 1.0, rank=1).to_json()["rank"] == 1  # aimed at a rank of a gang


def test_a_hit_says_the_rank_it_was_aimed_at() -> None:
    inj = injector(Fault(FaultKind.HANG, 8, {"rank": 1}), Fault(FaultKind.CRASH, 12, {"rank": 0}))
    inj.on_tick(obs(8))
    inj.on_exit(attempt_result(ExitClass.HUNG, attempt=1, last_step=8))
    inj.on_exit(attempt_result(ExitClass.CRASHED, attempt=2, last_step=11))
    assert [(h.kind, h.rank, h.missed) for h in inj.hits] == [("hang", 1, False), ("crash", 0, False)]


# -- corrupt_file on a real file ---------------------------------------------------------------------------


@pytest.mark.parametrize(("position", "at"), [(0.0, 0), (0.25, 25), (0.5, 50), (0.999, 99), (1.0, 99)])
def test_corrupt_file_truncates(tmp_path: Path, position: float, at: int) -> None:
    path = tmp_path / "step-000000010" / "model.safetensors"
    path.parent.mkdir()
    data = bytes(range(100))
    path.write_bytes(data)
    what = corrupt_file(path, "truncate", position)
    assert path.read_bytes() == data[:at]
    assert what == f"truncated step-000000010/model.safetensors to {at} of 100 bytes"


@pytest.mark.parametrize(("position", "at"), [(0.0, 0), (0.5, 50), (1.0, 99)])
def test_corrupt_file_flips_one_byte(tmp_path: Path, position: float, at: int) -> None:
    path = tmp_path / "data.safetensors"
    data = bytes(range(100))
    path.write_bytes(data)
    what = corrupt_file(path, "flip-byte", position)
    got = path.read_bytes()
    assert len(got) == 100
    assert [i for i in range(100) if got[i] != data[i]] == [at]
    assert got[at] == data[at] ^ 0xFF
    assert what == f"flipped byte {at} of {tmp_path.name}/data.safetensors"


def test_corrupt_file_truncates_an_empty_file_harmlessly(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert corrupt_file(path, "truncate", 0.5) == f"truncated {tmp_path.name}/empty to 0 of 0 bytes"
    assert path.read_bytes() == b""


# -- notice: the trial's fake cloud is told, and the hit keeps its deadline ----------------------------------


def test_a_notice_fault_tells_the_fake_cloud_once_the_target_step_is_done() -> None:
    told: list[Fault] = []
    fault = Fault(FaultKind.NOTICE, TARGET, {"cloud": "gcp", "window_s": 5.0})

    def trigger(f: Fault) -> tuple[str, float | None]:
        told.append(f)
        return "gcp metadata server: preempted, reclaimed in 5 s", 1234.5

    inj = Injector(schedule_of(fault), Path("/nonexistent-run"), notice=trigger)
    assert inj.on_tick(obs(TARGET - 1)) == [] and inj.env_for(1) == {}
    (a,) = inj.on_tick(obs(TARGET, attempt=2))
    assert isinstance(a, FileEffect) and a.fault == {"fault": "notice", "target_step": TARGET}
    assert told == []  # decided, not done: the supervisor carries it out
    assert a.apply() == "gcp metadata server: preempted, reclaimed in 5 s" and told == [fault]
    assert inj.on_tick(obs(TARGET + 1, attempt=2)) == []
    inj.on_exit(attempt_result(ExitClass.PREEMPTED, attempt=2, last_step=TARGET + 1))
    (hit,) = inj.hits
    assert (hit.kind, hit.attempt, hit.hit_step, hit.deadline) == ("notice", 2, TARGET, 1234.5)
    assert hit.to_json()["deadline"] == 1234.5 and "deadline" not in FaultHit("sigkill", 1, 1, 1, 1.0).to_json()
    assert inj.current is None


def test_a_notice_fault_without_a_fake_cloud_says_it_was_not_applied() -> None:
    (a,) = injector((FaultKind.NOTICE, 3)).on_tick(obs(3))
    assert isinstance(a, FileEffect) and a.apply() == "not applied: no metadata server"
