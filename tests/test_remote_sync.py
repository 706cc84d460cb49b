"""The supervisor's side of the remote store (runner/remote_sync.py, and ``--store`` in runner/cli.py):
a store that cannot be used stops the supervisor before anything starts; one that can is checked,
a generation taken in it, an empty run directory restored from it, and the journals' last records
appended when the supervisor ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checkpoint.objects import StoreError
from checkpoint.remote import RemoteStore
from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_STORE, ENV_STORE_GENERATION, ENV_UPLOAD_DRAIN, ENV_UPLOAD_EVERY, EVENTS, JOB, LOSSES
from runner.cli import build_parser, run_supervised
from runner.remote_sync import RemoteTier, drain_time
from tests.s3_server import S3Server


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / EVENTS).read_text().splitlines()]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    (tmp_path / "remote").mkdir()
    return tmp_path / "remote"


@pytest.mark.parametrize(("grace", "drain"), [(30.0, 15.0), (5.0, 2.5), (0.4, 0.5)])
def test_a_worker_gets_half_the_grace_for_its_last_upload(grace: float, drain: float) -> None:
    assert drain_time(grace) == drain


def test_attach_takes_a_generation_and_hands_it_to_the_workers(store_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    url = f"file://{store_dir}"
    first = RemoteTier.attach(url, run, upload_every=60.0, grace=30.0, note=print)
    second = RemoteTier.attach(url, run, upload_every=5.0, grace=4.0, note=print)
    assert (first.generation, second.generation) == (1, 2)
    assert second.env() == {ENV_STORE: url, ENV_STORE_GENERATION: "2", ENV_UPLOAD_EVERY: "5.0",
                            ENV_UPLOAD_DRAIN: "2.0"}
    assert second.restore() is None  # an empty store: nothing to restore
    (ev,) = events(run)
    assert (ev["source"], ev["event"], ev["generation"], ev["upload_every_s"]) == ("supervisor", "store-attached", 2,
                                                                                   5.0)


def test_an_empty_run_directory_is_restored_and_said_so(store_dir: Path, tmp_path: Path) -> None:
    url = f"file://{store_dir}"
    one = tmp_path / "one"
    CheckpointStore(LocalStorage(one)).save(4, {"m.bin": b"four"}, {"step": 4})
    (one / JOB).write_text("{}")
    (one / LOSSES).write_text('{"step": 3}\n')
    (one / EVENTS).write_text('{"event": "attempt-spawned", "attempt": 1}\n')
    writer = RemoteStore(url)
    writer.acquire()
    writer.upload(one / "checkpoints" / "step-000000004", journals=[one / LOSSES, one / EVENTS])
    two = tmp_path / "two"
    two.mkdir()
    notes: list[str] = []
    tier = RemoteTier.attach(url, two, upload_every=60.0, grace=30.0, note=notes.append)
    restored = tier.restore()
    assert restored is not None and restored.step == 4
    assert notes == [restored.line(url)]
    recs = events(two)
    assert recs[0] == {"event": "attempt-spawned", "attempt": 1}  # the first machine's, restored
    assert [r["event"] for r in recs[1:]] == ["store-attached", "store-restored"]
    assert recs[2]["checkpoint"] == "step-000000004" and recs[2]["generation"] == 2
    tier.finish()  # the supervisor's own records since reach the store
    assert writer.journals.length(EVENTS) == (two / EVENTS).stat().st_size


def test_a_fenced_supervisor_leaves_the_journals_alone(store_dir: Path, tmp_path: Path) -> None:
    url = f"file://{store_dir}"
    run = tmp_path / "run"
    run.mkdir()
    tier = RemoteTier.attach(url, run, upload_every=60.0, grace=30.0, note=print)
    tier.restore()
    RemoteTier.attach(url, tmp_path / "other", upload_every=60.0, grace=30.0, note=print)
    tier.finish()
    assert RemoteStore(url).journals.length(EVENTS) == 0


def test_a_store_gone_at_the_end_is_a_warning(store_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    notes: list[str] = []
    tier = RemoteTier.attach(f"file://{store_dir}", run, upload_every=60.0, grace=30.0, note=notes.append)
    tier.restore()
    store_dir.rename(tmp_path / "gone")
    tier.finish()
    assert len(notes) == 1 and notes[0].startswith("warning: the journals' last records did not reach the store")


def supervise(tmp_path: Path, store: str) -> None:
    ns = build_parser().parse_args(["--run-dir", str(tmp_path / "run"), "--store", store, "--epochs", "1"])
    run_supervised(ns, None, _NoJob())


class _NoJob:
    """A job that would fail if it started: it must not get to (no ``logs/`` is a sign it did not)."""

    preload = ()

    def argv(self, ns: object, *, reference: bool = False) -> list[str]:
        return []

    def command(self, run_dir: Path, argv: list[str]) -> tuple[str, ...]:
        return ("false",)


@pytest.mark.parametrize(("store", "message"), [
    ("nonsense", "bad store URL 'nonsense'"),
    ("s3://Bad_Bucket/x", "is not a bucket name"),
    ("file:///no/such/dir", "'/no/such/dir' does not exist"),
    ("s3://no-such-bucket-here/job", "bucket 'no-such-bucket-here' does not exist"),
])
def test_a_store_that_cannot_be_used_stops_the_supervisor_before_anything_starts(
        tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, store: str, message: str) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StoreError) as e:
        supervise(tmp_path, store)
    assert e.value.code == ExitCode.STORE and message in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["supervisor.lock"]


def test_refused_credentials_stop_the_supervisor(tmp_path: Path, s3_server: S3Server,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with s3_server.iam_auth(), pytest.raises(UserError) as e:
        supervise(tmp_path, s3_server.fresh_url())
    assert e.value.code == ExitCode.STORE and "access denied" in str(e.value)


def test_an_unreachable_endpoint_stops_the_supervisor(tmp_path: Path, s3_server: S3Server,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StoreError) as e:
        supervise(tmp_path, s3_server.fresh_url())
    assert e.value.code == ExitCode.STORE and "cannot reach http://127.0.0.1:9" in str(e.value)


def test_a_worker_gets_the_store_of_its_supervisor_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from rundir.names import worker_env

    monkeypatch.setenv(ENV_STORE, "s3://left/over")  # the supervisor's own environment: not passed on
    monkeypatch.setenv(ENV_STORE_GENERATION, "3")
    assert ENV_STORE not in worker_env({}) and ENV_STORE_GENERATION not in worker_env({})
    given = {ENV_STORE: "s3://b/job", ENV_STORE_GENERATION: "7"}
    env = worker_env(given)
    assert (env[ENV_STORE], env[ENV_STORE_GENERATION]) == ("s3://b/job", "7")
