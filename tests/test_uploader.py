"""The uploader (checkpoint/uploader.py, checkpoint/upload_process.py): its decisions in this process
on a directory store - uploaded, retried while the store is away, given up when the checkpoint is
gone, fatal when fenced - then the real process, driven by the worker's side, on moto's S3 server
and on a directory store."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.proxy import DirectoryOutage
from checkpoint.objects import StoreError
from checkpoint.remote import RemoteStore
from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore, checkpoint_name
from checkpoint.sync import CONFIG_KEY, UploadSettings
from checkpoint.upload_process import Outcome, Uploads, fenced_line
from checkpoint.uploader import Uploader, UploadRequest, UploadResult
from rundir.exitcodes import ExitCode
from rundir.names import EVENTS, JOB, LOSSES
from tests.s3_server import S3Server

IDS = {"source": "worker", "attempt": 3, "pid": 4242}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def events(run: Path, kind: str | None = None) -> list[dict[str, Any]]:
    try:
        recs = [json.loads(line) for line in (run / EVENTS).read_text().splitlines()]
    except FileNotFoundError:
        return []
    return [r for r in recs if kind is None or r["event"] == kind]


def results(out: io.BytesIO) -> list[UploadResult]:
    return [UploadResult.parse(line) for line in out.getvalue().splitlines()]


def make_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / JOB).write_text('{"job": "test"}')
    (run / LOSSES).write_text('{"step": 0, "loss": 1.0}\n')
    return run


def save(run: Path, step: int) -> UploadRequest:
    CheckpointStore(LocalStorage(run), keep=100).save(step, {"model.bin": bytes([step]) * 5000}, {"step": step})
    return UploadRequest(checkpoint_name(step), step, committed=0.0, attempt=3)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Uploads, Path, io.BytesIO, Clock, DirectoryOutage]:
    (tmp_path / "remote").mkdir()
    store = RemoteStore(f"file://{tmp_path / 'remote'}")
    store.acquire()
    out, clock = io.BytesIO(), Clock()
    run = make_run(tmp_path)
    return Uploads(store, run, IDS, out, clock=clock), run, out, clock, DirectoryOutage(tmp_path / "remote")


def test_an_upload_commits_and_says_so(setup) -> None:
    up, run, out, _, _ = setup
    up.take(save(run, 5))
    assert up.wait_s == 0.0
    assert up.attempt() is Outcome.OK
    assert up.pending is None and up.wait_s is None
    assert [c.step for c in up.store.list_committed()] == [5]
    assert json.loads(up.store.objects.read(CONFIG_KEY)) == {"job": "test"}
    (ev,) = events(run, "checkpoint-uploaded")
    assert (ev["source"], ev["attempt"], ev["pid"], ev["step"]) == ("worker", 3, 4242, 5)
    assert ev["name"] == checkpoint_name(5)
    assert ev["bytes"] == 5000 and ev["seconds"] > 0 and ev["lag_s"] > 0 and ev["generation"] == 1
    assert ev["checked"] == ["read-back"] and ev["uploader_pid"] == os.getpid()
    assert results(out) == [UploadResult(checkpoint_name(5), 5, ok=True)]
    assert up.store.journals.length(LOSSES) == (run / LOSSES).stat().st_size


def test_only_the_newest_waiting_checkpoint_goes(setup) -> None:
    up, run, _, _, _ = setup
    up.take(save(run, 10))
    up.take(save(run, 5))  # older than the one waiting: ignored
    up.take(save(run, 15))
    assert up.pending is not None and up.pending.step == 15
    up.attempt()
    assert [c.step for c in up.store.list_committed()] == [15]


def test_while_the_store_is_away_uploads_are_retried_with_a_growing_wait(setup) -> None:
    up, run, out, clock, outage = setup
    up.take(save(run, 5))
    outage.down("refuse")
    assert up.attempt() is Outcome.RETRY
    assert up.attempt() is Outcome.RETRY
    assert up.failures == 2 and up.wait_s == 1.0
    failed = events(run, "checkpoint-upload-failed")
    assert [(e["failures"], e["retry_in_s"]) for e in failed] == [(1, 0.5), (2, 1.0)]
    assert failed[0]["error"].startswith(f"remote store {up.store.url}: ")
    up.take(save(run, 10))  # a newer checkpoint waits as long: it is the store that is away
    assert up.wait_s == 1.0
    clock.t += 1.0
    outage.up()
    assert up.wait_s == 0.0 and up.attempt() is Outcome.OK
    assert up.failures == 0 and [c.step for c in up.store.list_committed()] == [10]
    assert [r.ok for r in results(out)] == [False, False, True]
    assert results(out)[0].retry_in_s == 0.5 and not results(out)[0].settled


def test_a_checkpoint_gone_from_the_run_directory_is_given_up(setup) -> None:
    up, run, out, _, _ = setup
    up.take(UploadRequest(checkpoint_name(20), 20, 0.0))
    assert up.attempt() is Outcome.GONE and up.pending is None
    (r,) = results(out)
    assert r.settled and not r.ok and "gone before it was uploaded" in (r.error or "")


def test_a_newer_supervisor_fences_the_uploader_off(setup) -> None:
    up, run, out, _, _ = setup
    up.take(save(run, 5))
    assert up.attempt() is Outcome.OK
    RemoteStore(up.store.url).acquire()  # generation 2
    up.take(save(run, 10))
    assert up.attempt() is Outcome.FATAL
    (r,) = results(out)[1:]
    assert r.fatal and r.last and r.error == fenced_line(up.store)
    assert r.error.startswith(f"fenced: a newer supervisor (generation 2) owns this job's store {up.store.url}")
    assert [c.step for c in up.store.list_committed()] == [5]
    assert events(run, "checkpoint-upload-failed")[-1]["fatal"] is True


def test_a_store_that_holds_another_job_is_fatal(setup) -> None:
    up, run, out, _, _ = setup
    up.store.objects.write(CONFIG_KEY, b'{"job": "another"}')
    up.take(save(run, 5))
    assert up.attempt() is Outcome.FATAL
    assert "another job's configuration" in (results(out)[0].error or "")


def test_stopping_uploads_what_is_pending_then_the_journals(setup) -> None:
    up, run, out, _, _ = setup
    up.take(save(run, 5))
    with open(run / EVENTS, "a") as f:
        f.write('{"event": "preempted", "step": 5}\n')
    assert up.drain(5.0) == ExitCode.OK
    assert [c.step for c in up.store.list_committed()] == [5]
    assert events(run, "checkpoint-uploaded")[0]["stopping"] is True
    assert results(out)[-1] == UploadResult(last=True)
    # Everything up to the uploader's own record of the upload is in the store.
    held = up.store.journals.length(EVENTS)
    assert b'"preempted"' in (run / EVENTS).read_bytes()[:held]


def test_stopping_gives_up_within_the_drain_time_and_says_so(setup) -> None:
    up, run, out, clock, outage = setup
    up.take(save(run, 5))
    outage.down("refuse")
    assert up.drain(0.3) == ExitCode.OK  # one try, then the next would come after the drain time
    gave_up = [e for e in events(run, "checkpoint-upload-failed") if e.get("gave_up")]
    assert len(gave_up) == 1 and "within the 0.3 s the worker had to stop" in gave_up[0]["error"]
    assert [r.settled for r in results(out)[:-1]] == [False, True]
    outage.up()
    assert up.store.list_committed() == []


# -- the real process ----------------------------------------------------------------------------------------


def uploader(url: str, run: Path, *, drain_s: float = 10.0) -> tuple[Uploader, RemoteStore]:
    store = RemoteStore(url)
    generation = store.acquire()
    return Uploader(run, UploadSettings(url, generation, every_s=0.0, drain_s=drain_s), ids=IDS,
                    events=run / EVENTS), store


def test_the_process_uploads_what_it_is_told_and_stops_when_told(url: str, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    u, store = uploader(url, run)
    u.attempt = 4
    save(run, 5)
    u.notify(checkpoint_name(5), 5)
    r = u.settle(checkpoint_name(5), 5, timeout=60.0)
    assert r is not None and r.ok
    save(run, 10)
    u.notify(checkpoint_name(10), 10)
    u.close()  # the last checkpoint it was given goes before it exits
    assert [c.step for c in store.list_committed()] == [5, 10]
    assert [e["attempt"] for e in events(run, "checkpoint-uploaded")] == [4, 4]
    assert u.results[-1].last and u._proc.returncode == 0


def test_a_fenced_process_stops_the_worker(url: str, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    u, store = uploader(url, run)
    save(run, 5)
    u.notify(checkpoint_name(5), 5)
    assert u.settle(checkpoint_name(5), 5, timeout=60.0) is not None
    RemoteStore(url).acquire()
    save(run, 10)
    u.notify(checkpoint_name(10), 10)
    with pytest.raises(StoreError) as e:
        u.settle(checkpoint_name(10), 10, timeout=60.0)
    assert e.value.code == ExitCode.STORE and str(e.value).startswith("fenced: a newer supervisor (generation 2)")
    with pytest.raises(StoreError):
        u.close()
    assert u._proc.returncode == ExitCode.STORE
    assert [c.step for c in store.list_committed()] == [5]


def test_a_process_that_cannot_open_the_store_says_why(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    u = Uploader(run, UploadSettings("nonsense", 1), ids=IDS, events=run / EVENTS)
    with pytest.raises(StoreError, match="bad store URL"):
        u.settle("x", 0, timeout=60.0)


def test_requests_and_results_round_trip() -> None:
    req = UploadRequest(checkpoint_name(7), 7, 12.5, attempt=2)
    assert UploadRequest.parse(req.line().strip()) == req
    res = UploadResult(checkpoint_name(7), 7, error="away", retry_in_s=1.0)
    assert UploadResult.parse(res.line()) == res and not res.settled
    assert UploadResult(ok=True).settled and UploadResult(error="gone").settled


def test_after_uploads_the_store_is_pruned_at_most_once_a_minute(tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    later = RemoteStore(f"file://{tmp_path / 'remote'}", clock=lambda: time.time() + 3600)  # past every grace
    later.acquire()
    clock = Clock()
    up = Uploads(later, make_run(tmp_path), IDS, io.BytesIO(), clock=clock)
    for step in (1, 2, 3, 4):
        up.take(save(up.run_dir, step))
        assert up.attempt() is Outcome.OK
    assert [c.step for c in later.list_committed()] == [1, 2, 3, 4]  # pruned after the first only: nothing to do
    clock.t += 60.0
    up.take(save(up.run_dir, 5))
    up.attempt()
    assert [c.step for c in later.list_committed()] == [3, 4, 5]


def test_warming_up_hears_at_once_that_the_writer_is_fenced_off(setup) -> None:
    up, run, out, _, outage = setup
    assert up.warm_up() is Outcome.OK
    outage.down("refuse")
    assert up.warm_up() is Outcome.OK  # away: the uploads will say so
    outage.up()
    RemoteStore(up.store.url).acquire()
    assert up.warm_up() is Outcome.FATAL
    (r,) = results(out)
    assert r.fatal and (r.error or "").startswith("fenced: a newer supervisor (generation 2)")


def test_an_uploader_stuck_on_a_hanging_store_is_killed_at_the_end_of_the_drain_time(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chaos.proxy import FaultProxy, endpoint_address

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    target = endpoint_address(s3_server.endpoint)
    assert target is not None
    proxy = FaultProxy(target)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        run = make_run(tmp_path)
        u, store = uploader(s3_server.fresh_url(), run, drain_s=0.5)
        save(run, 5)
        proxy.down("hang")  # calls wait on their (60 s) read timeout
        u.notify(checkpoint_name(5), 5)
        t0 = time.monotonic()
        u.close()
        assert time.monotonic() - t0 < 10.0
        assert u._proc.returncode == -9
        (ev,) = [e for e in events(run, "checkpoint-upload-failed") if e.get("gave_up")]
        assert (ev["step"], ev["name"], ev["stopping"]) == (5, checkpoint_name(5), True)
        assert "killed" in ev["error"]
    finally:
        proxy.close()


def test_an_uploader_never_asked_anything_leaves_the_journals_alone(setup) -> None:
    up, run, out, _, _ = setup  # a warm spare's, say, that was not needed
    assert up.drain(1.0) == ExitCode.OK
    assert up.store.journals.length(LOSSES) == 0 and results(out) == [UploadResult(last=True)]
