"""The remote store end to end, on moto's S3 server: ``python -m runner --store`` refuses a store it
cannot use before anything starts; a machine lost whole is continued bit-exactly by a supervisor on
an empty directory; of two supervisors on one store the older is fenced off; a kill in the middle of
a worker's upload leaves nothing in the store that loads; and ``--simulate-preemption`` loses
machines and takes the store away and still proves the run bit-exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from checkpoint.remote import CHECKPOINTS, RemoteStore
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore
from tests.helpers.processes import (
    describe,
    finish,
    job_cmd,
    kill_leftovers,
    run,
    run_runner,
    runner_cmd,
    seeded_run_dir,
    start,
    wait_for,
)
from tests.helpers.readers import events, final, loss_trace, losses
from tests.s3_server import S3Server

pytestmark = pytest.mark.e2e

JOB = ("--epochs", 3, "--checkpoint-every-steps", 3)
STEPS = 45


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """moto's server, reached through the standard variables by every process the test starts."""
    monkeypatch.delenv("RUNNER_CHECKPOINT_KEY", raising=False)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("remote-reference") / "run"
    p = run(job_cmd(ref, *JOB))
    assert p.returncode == 0, describe(p)
    return ref


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    kill_leftovers(started, [tmp_path])


def lose_machine(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a supervisor and everything under it at once."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.communicate(timeout=30)
    psutil.wait_procs(tree, timeout=10)


def uploaded_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in events(run_dir, "checkpoint-uploaded")]


def assert_matches(run_dir: Path, reference: Path) -> None:
    trace, ref = loss_trace(run_dir), loss_trace(reference)
    assert list(trace) == list(range(STEPS)), "steps missing from the stitched trace"
    assert [s for s in ref if trace[s] != ref[s]] == []
    assert final(run_dir)["params_sha256"] == final(reference)["params_sha256"]


# -- a store that cannot be used ---------------------------------------------------------------------------


@pytest.mark.parametrize(("store", "env", "message"), [
    ("not-a-url", {}, "bad store URL 'not-a-url'"),
    ("s3://no-such-bucket/job", {}, "bucket 'no-such-bucket' does not exist"),
    ("s3://checkpoints-test/job", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach http://127.0.0.1:9"),
    ("file:///no/such/store", {}, "'/no/such/store' does not exist"),
], ids=["bad-url", "missing-bucket", "unreachable", "missing-directory"])
def test_a_bad_store_gives_one_line_and_exit_77_before_training(s3: S3Server, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, store: str,
                                                                env: dict[str, str], message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = run_runner("--run-dir", tmp_path / "run", "--store", store, *JOB, timeout=60)
    assert p.returncode == 77, describe(p)
    (line,) = [x for x in p.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "run" / "logs").exists(), "a worker was started"


def test_refused_credentials_give_one_line_and_exit_77(s3: S3Server, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with s3.iam_auth():  # the server runs in this process: it checks credentials while inside
        p = run_runner("--run-dir", tmp_path / "run", "--store", s3.fresh_url(), *JOB, timeout=60)
    assert p.returncode == 77, describe(p)
    (line,) = [x for x in p.stderr.splitlines() if x.strip()]
    assert "access denied" in line


# -- losing the machine ------------------------------------------------------------------------------------


def test_a_lost_machine_is_continued_bit_exactly_on_an_empty_one(s3: S3Server, tmp_path: Path, reference: Path,
                                                                  procs: list) -> None:
    url = s3.fresh_url()
    one = seeded_run_dir(tmp_path / "machine-1", reference)
    procs.append(sup := start(runner_cmd(one, *JOB, "--store", url, "--upload-every", 0)))
    wait_for(lambda: any(s >= 12 for s in uploaded_steps(one)), proc=sup, timeout=120,
             what="a checkpoint of step 12 or later in the store")
    lose_machine(sup)
    in_store = RemoteStore(url).latest()
    assert in_store is not None and in_store.step >= 12

    two = tmp_path / "machine-2"  # empty: not even the prepared data
    p = run(runner_cmd(two, *JOB, "--store", url))
    assert p.returncode == 0, describe(p, run_dir=two)
    (restored,) = events(two, "store-restored")
    assert restored["step"] == in_store.step and restored["checkpoint"] == in_store.name
    assert f"restored {in_store.name}" in p.stdout
    started = events(two, "attempt-started", source="worker")
    # The first machine's records came back with the journal, and the attempts go on counting.
    assert [(e["attempt"], e["resumed_from_step"]) for e in started] == [(1, 0), (2, in_store.step)]
    assert_matches(two, reference)
    v = run_runner("verify", two, reference)
    assert v.returncode == 0 and f"PASS bit-exact: {STEPS} steps" in v.stdout, describe(v)


def test_of_two_supervisors_on_one_store_the_older_is_fenced_off(s3: S3Server, tmp_path: Path, reference: Path,
                                                                procs: list) -> None:
    url = s3.fresh_url()
    long_job = ("--epochs", 40, "--checkpoint-every-steps", 2)
    a, b = seeded_run_dir(tmp_path / "a", reference), seeded_run_dir(tmp_path / "b", reference)
    procs.append(sup_a := start(runner_cmd(a, *long_job, "--store", url, "--upload-every", 0)))
    wait_for(lambda: uploaded_steps(a), proc=sup_a, timeout=120, what="supervisor A's first upload")
    procs.append(sup_b := start(runner_cmd(b, *long_job, "--store", url, "--upload-every", 0)))
    pa = finish(sup_a)
    assert pa.returncode == 77, describe(pa, run_dir=a)
    (line,) = [x for x in pa.stderr.splitlines() if x.strip()]
    assert "fenced: a newer supervisor (generation 2) owns this job's store" in line, line
    (exited,) = events(a, "attempt-exited", source="supervisor")
    assert (exited["returncode"], exited["exit_class"]) == (77, "bad-input")  # not retried
    assert len(events(a, "attempt-spawned", source="supervisor")) == 1
    fenced = [e for e in events(a, "checkpoint-upload-failed") if e.get("fatal")]
    assert len(fenced) == 1 and fenced[0]["error"].startswith("fenced:")
    # B took over from what A had put in the store, and goes on; A commits nothing after B came.
    wait_for(lambda: events(b, "checkpoint-uploaded"), proc=sup_b, timeout=120, what="supervisor B's first upload")
    (restored,) = events(b, "store-restored")
    assert restored["step"] >= min(uploaded_steps(a))
    committed = RemoteStore(url).list_committed()
    assert {c.generation for c in committed if c.step > max(uploaded_steps(a))} <= {2}
    sup_b.send_signal(signal.SIGTERM)
    assert finish(sup_b).returncode == 130


# -- a kill in the middle of an upload ---------------------------------------------------------------------

BIG_JOB = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from runner.worker import Worker

    with Worker(os.environ["RUNNER_RUN_DIR"]) as w:
        ckpt = w.restore(total_steps=1000)
        step = 0 if ckpt is None else ckpt.step
        state = {f"shard-{i}.bin": np.full(1 << 20, step, dtype=np.float32).tobytes() for i in range(6)}
        while step < 1000:
            w.report_step(step, loss=1.0 / (step + 1))
            step += 1
            w.save_checkpoint(step, state, {"step": step})
            time.sleep(0.02)
        w.complete(steps=step)
""")


def torn_checkpoint(store: RemoteStore) -> str | None:
    """A checkpoint with files but no manifest in the store: an upload under way."""
    names: dict[str, set[str]] = {}
    for key in store.objects.find(CHECKPOINTS):
        _, name, fname = key.split("/", 2)
        names.setdefault(name, set()).add(fname)
    torn = [n for n, files in names.items() if MANIFEST not in files]
    return max(torn) if torn else None


def test_a_kill_in_the_middle_of_a_workers_upload_leaves_nothing_that_loads(s3: S3Server, tmp_path: Path,
                                                                            procs: list) -> None:
    url = s3.fresh_url()
    script = tmp_path / "big_job.py"
    script.write_text(BIG_JOB)
    run_dir = tmp_path / "run"
    procs.append(sup := start(runner_cmd(run_dir, "--store", url, "--upload-every", 0, "--no-standby",
                                         command=[sys.executable, script])))
    store = RemoteStore(url)
    wait_for(lambda: store.latest() is not None, proc=sup, timeout=120, what="a first committed checkpoint")
    torn = wait_for(lambda: torn_checkpoint(store), proc=sup, timeout=120, interval=0.005,
                    what="an upload under way")
    lose_machine(sup)
    assert torn not in {c.name for c in store.list_committed()}
    leftovers = store.objects.find(f"{CHECKPOINTS}/{torn}")
    assert leftovers and not any(k.endswith(MANIFEST) for k in leftovers), "the upload was not torn after all"
    empty = tmp_path / "empty"
    got = RemoteStore(url).download(empty / CHECKPOINTS)
    assert got is not None and got.name < torn
    ck = CheckpointStore(LocalStorage(empty)).load_latest()
    assert ck is not None and ck.step == got.step
    assert ck.files["shard-0.bin"][:4] == ck.files["shard-5.bin"][:4]


# -- chaos ---------------------------------------------------------------------------------------------------


def test_simulate_preemption_loses_machines_and_the_store_and_stays_bit_exact(s3: S3Server, tmp_path: Path
                                                                             ) -> None:
    url = s3.fresh_url()
    base, report = tmp_path / "chaos", tmp_path / "report.json"
    p = run_runner("--simulate-preemption", "--store", url, "--fault-kinds", "instance-loss", "sigkill",
                   "store-outage", "--faults", 3, "--epochs", 3, "--run-dir", base, "--reference-cache",
                   tmp_path / "refs", "--json-report", report, timeout=400)
    assert p.returncode == 0, describe(p)
    r = json.loads(report.read_text())
    assert (r["verdict"], r["bit_exact"], r["steps_compared"]) == ("pass", True, STEPS)
    assert sorted(f["kind"] for f in r["faults"]) == ["instance-loss", "sigkill", "store-outage"]
    lost = [f for f in r["faults"] if f["kind"] == "instance-loss"]
    assert not lost[0]["missed"] and "SIGKILLed" in lost[0]["effect"]
    assert r["job"]["store"] == url and r["job"]["machines"] == 2
    last = Path(r["job"]["run_dir"])
    assert last == base / "machine-2" and not (base / "machine-1").exists()
    (restored,) = events(last, "store-restored")
    assert restored["step"] > 0, "the new machine restored no checkpoint"
    first_machine = {x["step"] for x in losses(last) if x["time"] < restored["time"]}  # came back from the store
    assert set(range(restored["step"])) <= first_machine
    assert "PASS bit-exact" in p.stdout


def test_without_a_store_a_simulation_that_loses_machines_keeps_one_in_its_directory(tmp_path: Path) -> None:
    base = tmp_path / "chaos"
    p = run_runner("--simulate-preemption", "--fault-kinds", "instance-loss", "--faults", 1, "--epochs", 2,
                   "--run-dir", base, "--reference-cache", tmp_path / "refs", timeout=400)
    assert p.returncode == 0, describe(p)
    assert (base / "store" / CHECKPOINTS).is_dir() and (base / "machine-2" / "final.json").is_file()
    assert "PASS bit-exact: 30 steps" in p.stdout
    assert sorted(os.listdir(base / "store" / "fence")) == ["gen-000000001", "gen-000000002"]  # two machines


def test_a_notice_during_a_store_outage_is_reported_honestly(s3: S3Server, tmp_path: Path) -> None:
    schedule = tmp_path / "outage-then-notice.json"
    schedule.write_text(json.dumps({"format": 1, "seed": None, "total_steps": STEPS, "faults": [
        {"kind": "store-outage", "step": 8, "detail": {"mode": "refuse", "seconds": 6.0}},
        {"kind": "sigterm", "step": 12, "detail": {}}]}))
    report = tmp_path / "report.json"
    p = run_runner("--simulate-preemption", "--store", s3.fresh_url(), "--chaos-replay", schedule, "--epochs", 3,
                   "--run-dir", tmp_path / "chaos", "--reference-cache", tmp_path / "refs", "--json-report", report,
                   timeout=400)
    assert p.returncode == 0, describe(p)
    r = json.loads(report.read_text())
    assert r["verdict"] == "pass" and [f["missed"] for f in r["faults"]] == [False, False]
    run_dir = Path(r["job"]["run_dir"])
    (notice,) = [e for e in events(run_dir, "chaos-fault") if e.get("fault") == "sigterm"]
    (stopped,) = [e for e in events(run_dir, "attempt-exited") if e["attempt"] == notice["attempt"]]
    assert stopped["exit_class"] == "preempted", "the worker did not stop in the grace period"
    last_words = [e for e in events(run_dir, "checkpoint-upload-failed")
                  if e["attempt"] == notice["attempt"] and notice["time"] < e["time"] < stopped["time"]]
    assert last_words and (last_words[-1].get("gave_up") or "killed" in last_words[-1]["error"]), last_words
    # Once the store is back, the next attempt's first checkpoint gets there.
    assert [e for e in events(run_dir, "checkpoint-uploaded") if e["attempt"] > notice["attempt"]]


def test_the_job_run_on_its_own_with_a_store_takes_a_generation_and_restores_itself(tmp_path: Path,
                                                                                     reference: Path) -> None:
    (tmp_path / "store").mkdir()
    url = f"file://{tmp_path / 'store'}"
    one = seeded_run_dir(tmp_path / "one", reference)
    p = run(job_cmd(one, *JOB, "--store", url, "--upload-every", 0))
    assert p.returncode == 0, describe(p)
    ups = events(one, "checkpoint-uploaded")
    assert ups and ups[-1]["step"] == STEPS and ups[-1]["generation"] == 1
    two = seeded_run_dir(tmp_path / "two", reference)
    p = run(job_cmd(two, *JOB, "--store", url))
    assert p.returncode == 0, describe(p)
    assert f"restored step-{STEPS:09d}" in p.stdout
    (restored,) = events(two, "store-restored", source="worker")
    assert (restored["step"], restored["generation"]) == (STEPS, 2)
    assert final(two)["params_sha256"] == final(reference)["params_sha256"]
    assert loss_trace(two) == loss_trace(one)
