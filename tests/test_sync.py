"""The two tiers together (checkpoint/sync.py): when to upload and to retry, the settings a supervisor
hands its workers, the job's configuration in the store, and an empty run directory restored from
the store - on moto's S3 server and on a directory store alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checkpoint.cadence import upload_due
from checkpoint.objects import StoreError
from checkpoint.remote import CHECKPOINTS, RemoteStore
from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore, checkpoint_name
from checkpoint.sync import (
    CONFIG_KEY,
    ConfigConflict,
    UploadSettings,
    check_continuation,
    continue_run,
    has_local_run,
    put_config,
    restore_run,
    retry_delay,
    take_store,
)
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_STORE, ENV_STORE_GENERATION, ENV_UPLOAD_DRAIN, ENV_UPLOAD_EVERY, EVENTS, JOB, LOSSES


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


# -- pure decisions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "last", "every", "due"), [
    (100.0, None, 60.0, True),  # the first checkpoint of an attempt
    (100.0, 50.0, 60.0, False),
    (110.0, 50.0, 60.0, True),
    (100.0, 99.9, 0.0, True),  # 0: every checkpoint
    (100.0, 100.0, 60.0, False),
])
def test_upload_due(now: float, last: float | None, every: float, due: bool) -> None:
    assert upload_due(now, last, every) is due


@pytest.mark.parametrize(("failures", "delay"), [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0),
                                                 (50, 30.0)])
def test_retry_delay_doubles_up_to_a_ceiling(failures: int, delay: float) -> None:
    assert retry_delay(failures) == delay


def test_upload_settings_travel_through_the_environment() -> None:
    s = UploadSettings("s3://b/job", 7, every_s=0.5, drain_s=2.5)
    env = s.to_env()
    assert env == {ENV_STORE: "s3://b/job", ENV_STORE_GENERATION: "7", ENV_UPLOAD_EVERY: "0.5", ENV_UPLOAD_DRAIN: "2.5"}
    assert UploadSettings.from_env(env) == s


@pytest.mark.parametrize("env", [{}, {ENV_STORE: "s3://b/job"}, {ENV_STORE_GENERATION: "3"}])
def test_no_settings_without_both_a_store_and_a_generation(env: dict[str, str]) -> None:
    assert UploadSettings.from_env(env) is None


def test_settings_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(UserError) as e:
        UploadSettings.from_env({ENV_STORE: "s3://b/job", ENV_STORE_GENERATION: "seven"})
    assert e.value.code == ExitCode.BAD_CONFIG


# -- what counts as a run ----------------------------------------------------------------------------------


def checkpoint_in(run_dir: Path, step: int, payload: bytes = b"x") -> Path:
    CheckpointStore(LocalStorage(run_dir), keep=100).save(step, {"model.bin": payload * 1000}, {"step": step})
    return run_dir / CHECKPOINTS / checkpoint_name(step)


@pytest.mark.parametrize(("files", "has_run"), [
    ((), False),
    (("data.npz", "logs/attempt-001.log", "supervisor.lock", EVENTS), False),  # set-up and failed starts
    ((JOB,), True),
    ((LOSSES,), True),
    (("checkpoints/step-000000005/model.bin",), False),  # a torn checkpoint is not one
])
def test_has_local_run(tmp_path: Path, files: tuple[str, ...], has_run: bool) -> None:
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    assert has_local_run(tmp_path) is has_run


def test_a_committed_checkpoint_is_a_run(tmp_path: Path) -> None:
    checkpoint_in(tmp_path, 5)
    assert has_local_run(tmp_path)


# -- the job's configuration -------------------------------------------------------------------------------


def test_the_configuration_goes_to_the_store_once_and_another_is_refused(url: str, tmp_path: Path) -> None:
    store = RemoteStore(url)
    store.acquire()
    run = tmp_path / "run"
    run.mkdir()
    assert put_config(store, run) is False  # nothing to put yet
    (run / JOB).write_text(json.dumps({"job": "mnist-cnn", "epochs": 3}, indent=1))
    assert put_config(store, run) is True
    (run / JOB).write_text(json.dumps({"epochs": 3, "job": "mnist-cnn"}))  # the same, spelt otherwise
    assert put_config(store, run) is True
    (run / JOB).write_text(json.dumps({"job": "mnist-cnn", "epochs": 4}))
    with pytest.raises(ConfigConflict) as e:
        put_config(store, run)
    assert e.value.code == ExitCode.STORE and "another job's configuration" in str(e.value)
    assert json.loads(store.objects.read(CONFIG_KEY)) == {"job": "mnist-cnn", "epochs": 3}


# -- restoring an empty machine ----------------------------------------------------------------------------


def machine_one(url: str, run: Path, steps: tuple[int, ...] = (5, 10)) -> RemoteStore:
    """A run that uploaded checkpoints ``steps`` with its journals and configuration."""
    run.mkdir()
    (run / JOB).write_text('{"job": "test"}')
    store = RemoteStore(url)
    store.acquire()
    put_config(store, run)
    for step in steps:
        with open(run / LOSSES, "a") as f:
            f.write(json.dumps({"step": step - 1, "loss": 1.0 / step}) + "\n")
        with open(run / EVENTS, "a") as f:
            f.write(json.dumps({"event": "checkpoint-saved", "step": step}) + "\n")
        store.upload(checkpoint_in(run, step, bytes([step])), journals=[run / LOSSES, run / EVENTS])
    return store


def test_an_empty_run_directory_is_restored_whole(url: str, tmp_path: Path) -> None:
    machine_one(url, tmp_path / "one")
    empty = tmp_path / "two"
    empty.mkdir()
    (empty / "data.npz").write_bytes(b"prepared data does not make a run")
    warnings: list[str] = []
    restored = restore_run(RemoteStore(url), empty, warnings.append)
    assert restored is not None and warnings == []
    assert (restored.checkpoint, restored.step, restored.config) == (checkpoint_name(10), 10, True)
    assert restored.bytes == 1000 and restored.seconds > 0
    for name in (JOB, LOSSES, EVENTS):
        assert (empty / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert dict(restored.journals) == {LOSSES: (empty / LOSSES).stat().st_size, EVENTS: (empty / EVENTS).stat().st_size}
    ck = CheckpointStore(LocalStorage(empty)).load_latest()
    assert ck is not None and ck.step == 10 and ck.files["model.bin"] == bytes([10]) * 1000
    assert restored.to_event()["checkpoint"] == checkpoint_name(10)
    assert restored.line(url).startswith(f"restored {checkpoint_name(10)} (step 10")


def test_a_run_directory_that_holds_a_run_is_left_alone(url: str, tmp_path: Path) -> None:
    machine_one(url, tmp_path / "one")
    assert restore_run(RemoteStore(url), tmp_path / "one") is None
    assert has_local_run(tmp_path / "one")


def test_an_empty_store_restores_nothing(url: str, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert restore_run(RemoteStore(url), tmp_path / "run") is None
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_a_run_directory_behind_the_store_is_refused(url: str, tmp_path: Path) -> None:
    machine_one(url, tmp_path / "one", steps=(5,))
    (tmp_path / "two").mkdir()
    continue_run(RemoteStore(url), tmp_path / "two")  # machine two takes over...
    with open(tmp_path / "two" / LOSSES, "a") as f:
        f.write('{"step": 5, "loss": 0.5}\n')
    two = RemoteStore(url)
    two.acquire()
    two.sync_journal(tmp_path / "two" / LOSSES)  # ...and the store's journal grows past machine one's
    check_continuation(two, tmp_path / "two")
    with pytest.raises(UserError) as e:
        check_continuation(RemoteStore(url), tmp_path / "one")
    assert e.value.code == ExitCode.BAD_CONFIG and "another machine went on with it" in str(e.value)


def test_take_store_checks_takes_a_generation_and_restores(file_url: str, tmp_path: Path) -> None:
    machine_one(file_url, tmp_path / "one")
    (tmp_path / "two").mkdir()
    attached = take_store(file_url, tmp_path / "two", every_s=5.0, drain_s=1.0)
    assert attached.settings == UploadSettings(file_url, 2, 5.0, 1.0)
    assert attached.restored is not None and attached.restored.step == 10
    assert take_store(file_url, tmp_path / "three", restore=False).restored is None
    assert not (tmp_path / "three" / JOB).exists()


@pytest.mark.parametrize("bad", ["nonsense", "file:///no/such/store/dir", "s3://Not_A_Bucket/x"])
def test_take_store_refuses_a_store_it_cannot_use(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError) as e:
        take_store(bad, tmp_path)
    assert e.value.code == ExitCode.STORE and "\n" not in str(e.value)
