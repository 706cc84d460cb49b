"""Cloud preemption notices end to end: ``python -m runner --notice CLOUD --metadata-url URL`` in a real
process, watching a fake metadata server (chaos.cloudfake) that the test turns to preempted. The run
commits at the step it reached, loses no step, and exits 75 with its one line; a new supervisor on the
same run directory (``--notice none``: the next machine) finishes it, bit-exact against an
uninterrupted reference (``python -m runner verify``). Also: a metadata server that hangs or answers
garbage costs nothing; a notice in the middle of a checkpoint write lets the write finish; a notice
during start-up; two notices at once; two machines in a row under chaos; and what ``auto`` adds to the
start-up, measured."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chaos.cloudfake import FakeAws, FakeAzure, FakeGcp, FakeMetadataServer, Mode
from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore
from rundir.names import read_heartbeat
from tests.helpers import REPO
from tests.helpers.processes import finish, runner_cmd
from tests.helpers.readers import events, losses

pytestmark = pytest.mark.e2e

JOB = ("--epochs", 3, "--checkpoint-every-steps", 5)
STEPS = 45
POLL = ("--notice-poll", 0.05)
FAKES: dict[str, Callable[[], FakeMetadataServer]] = {"aws": FakeAws, "gcp": FakeGcp, "azure": FakeAzure}
LINE = re.compile(r"^error: preempted by (aws|gcp|azure) notice \((terminate|preempt) at \d\d:\d\d:\d\dZ\): state "
                  r"saved at step (\d+); rerun on another machine to continue$")


# -- processes and the run directory: a child here keeps no RUNNER_ variable at all ------------------


def start(cmd: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("RUNNER_")}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return finish(start(cmd))


def explain(p: subprocess.CompletedProcess[str], run_dir: Path | None = None) -> str:
    text = f"exit {p.returncode}\n--- stdout ---\n{p.stdout[-3000:]}\n--- stderr ---\n{p.stderr[-2000:]}"
    if run_dir is not None:
        text += "\n--- events ---\n" + "\n".join(json.dumps(e) for e in events(run_dir)[-30:])
    return text


def heartbeat(run_dir: Path) -> dict[str, Any]:
    return read_heartbeat(run_dir) or {}


def wait_for(done: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"it exited before {what}: " + explain(finish(proc)))
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen[str]) -> None:
    wait_for(lambda: any(r["step"] >= step for r in losses(run_dir)), proc, f"step {step}")


def seed_data(run_dir: Path, reference: Path) -> Path:
    """A new run directory with the reference's prepared data, so the job skips preparing it."""
    run_dir.mkdir(parents=True)
    shutil.copy2(reference / "data.npz", run_dir / "data.npz")
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref = tmp_path_factory.mktemp("notice-reference") / "run"
    p = run([sys.executable, "-m", "model", "--run-dir", str(ref), *map(str, JOB)])
    assert p.returncode == 0, explain(p)
    return ref


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """The supervisors a test starts; whatever still runs at its end, and any process naming its
    directory (a worker, the fork server), is killed by pid."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    for leftover in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp_path) in arg for arg in leftover.info["cmdline"] or []):
                leftover.kill()
        except psutil.Error:
            pass


def verify(run_dir: Path, reference: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "runner", "verify", str(run_dir), str(reference)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("PASS"), p.stdout + p.stderr


def committed(run_dir: Path) -> list[int]:
    return [int(n.split("-")[1]) for n in CheckpointStore(LocalStorage(run_dir)).committed()]


def assert_saved_at_the_step_reached(run_dir: Path, line: str) -> int:
    """The closing line names the step saved; it is the newest checkpoint, and every step the
    preempted attempt completed is in it: none lost."""
    m = LINE.match(line)
    assert m, line
    saved = int(m.group(3))
    done = max(r["step"] for r in losses(run_dir)) + 1
    assert saved == done == committed(run_dir)[-1], (saved, done, committed(run_dir))
    (h,) = events(run_dir, "notice-handled")
    assert (h["saved_step"], h["steps_lost"], h["before_deadline"]) == (saved, 0, True), h
    assert h["committed_at"] <= h["deadline"] and 0 <= h["notice_to_commit_s"] < 5, h
    return saved


def continue_elsewhere(run_dir: Path, reference: Path, procs: list[subprocess.Popen[str]]) -> None:
    """The next machine: a new supervisor on the same run directory finishes the job, bit-exact."""
    p = finish(_start(procs, runner_cmd(run_dir, *JOB, "--notice", "none")))
    assert p.returncode == 0, explain(p, run_dir)
    assert [r["step"] for r in losses(run_dir)] == list(range(STEPS)), "a step lost or done twice"
    verify(run_dir, reference)


def _start(procs: list[subprocess.Popen[str]], cmd: list[str]) -> subprocess.Popen[str]:
    proc = start(cmd)
    procs.append(proc)
    return proc


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_cloud_notice_saves_exits_75_and_the_next_machine_finishes(tmp_path: Path, reference: Path, cloud: str,
                                                                      procs: list[subprocess.Popen[str]]) -> None:
    run_dir = seed_data(tmp_path / "run", reference)
    with FAKES[cloud]() as fake:
        sup = _start(procs, runner_cmd(run_dir, *JOB, "--notice", cloud, "--metadata-url", fake.url, *POLL))
        wait_for_step(run_dir, 12, sup)
        fake.preempt(0.0, window_s=20.0)
        p = finish(sup)
        approvals = list(getattr(fake, "approvals", []))
    assert p.returncode == 75, explain(p, run_dir)
    line = p.stderr.strip()
    assert_saved_at_the_step_reached(run_dir, line)
    assert line.startswith(f"error: preempted by {cloud} notice (")
    (notice,) = events(run_dir, "preemption-notice")
    assert (notice["notice"], notice["reaction"], notice["attempt"]) == (cloud, "act", 1)
    (stop,) = events(run_dir, "stop-requested")
    # --grace 30, cut to end 2 s before the deadline (GCP's is not in its protocol: 30 s from the notice)
    assert stop["notice"] == cloud and stop["grace_s"] == pytest.approx(min(30.0, notice["seconds_left"] - 2.0),
                                                                        abs=0.5)
    assert [(e["attempt"], e["returncode"]) for e in events(run_dir, "attempt-exited")] == [(1, 75)]
    assert events(run_dir, "restart") == [], "restarted on a machine that is going away"
    (last,) = events(run_dir, "supervisor-exit")
    assert last["code"] == 75
    if cloud == "azure":
        assert approvals == [notice["detail"]["EventId"]]  # approved early, once the state was saved
        assert events(run_dir, "notice-handled")[0]["approved"] is True
    continue_elsewhere(run_dir, reference, procs)


@pytest.mark.parametrize("mode", [Mode.HANG, Mode.GARBAGE, Mode.NOT_HTTP])
def test_a_broken_metadata_server_neither_crashes_nor_slows_the_run(tmp_path: Path, reference: Path, mode: Mode,
                                                                    procs: list[subprocess.Popen[str]]) -> None:
    run_dir = seed_data(tmp_path / "run", reference)
    with FakeAws() as fake:
        fake.set_mode(mode)
        t = time.monotonic()
        p = finish(_start(procs, runner_cmd(run_dir, *JOB, "--notice", "aws", "--metadata-url", fake.url, *POLL)))
        took = time.monotonic() - t
        asked = len(fake.requests)
    assert p.returncode == 0, explain(p, run_dir)
    assert asked >= 1  # it was watched
    assert events(run_dir, "preemption-notice") == []
    ref_dt = statistics.median(r["dt"] for r in losses(reference))
    run_dt = statistics.median(r["dt"] for r in losses(run_dir))
    print(f"{mode.value}: {took:.1f} s; median step {run_dt * 1000:.1f} ms (reference {ref_dt * 1000:.1f} ms)")
    assert run_dt < 2 * ref_dt + 0.02, "the watch slowed the training"
    verify(run_dir, reference)


def test_a_notice_during_a_checkpoint_write_lets_the_write_finish(tmp_path: Path,
                                                                 procs: list[subprocess.Popen[str]]) -> None:
    job = [sys.executable, str(REPO / "tests" / "e2e" / "slow_save_job.py")]
    ref = tmp_path / "reference"
    p = subprocess.run([*job, str(ref)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    run_dir = tmp_path / "run"
    with FakeGcp() as fake:
        sup = _start(procs, runner_cmd(run_dir, "--notice", "gcp", "--metadata-url", fake.url, *POLL, command=job))
        wait_for(lambda: heartbeat(run_dir).get("phase") == "checkpoint" and heartbeat(run_dir).get("step") == 30,
                 sup, "the slow checkpoint write at 30")
        fake.preempt(0.0, window_s=20.0)
        p = finish(sup)
    assert p.returncode == 75, explain(p, run_dir)
    (notice,) = events(run_dir, "preemption-notice")
    (saved30,) = [e for e in events(run_dir, "checkpoint-saved") if e["step"] == 30]
    assert notice["received"] < saved30["time"] and saved30["persist_s"] >= 1.0  # heard in the middle of it
    assert committed(run_dir)[-1] == 30 and max(r["step"] for r in losses(run_dir)) == 29
    assert "state saved at step 30;" in p.stderr
    p = finish(_start(procs, runner_cmd(run_dir, "--notice", "none", command=job)))
    assert p.returncode == 0, explain(p, run_dir)
    verify(run_dir, ref)


def test_a_notice_during_start_up_stops_the_worker_before_its_first_step(tmp_path: Path, reference: Path,
                                                                          procs: list[subprocess.Popen[str]]
                                                                          ) -> None:
    run_dir = seed_data(tmp_path / "run", reference)
    with FakeAws() as fake:
        # Started with exec, the worker imports Paddle itself: a second or more of start-up.
        sup = _start(procs, runner_cmd(run_dir, *JOB, "--preload", "none", "--no-standby", "--notice", "aws",
                                       "--metadata-url", fake.url, *POLL))
        wait_for(lambda: heartbeat(run_dir).get("phase") in ("loading-data", "importing"), sup,
                 "the worker's start-up")
        fake.preempt(0.0, window_s=20.0)
        p = finish(sup)
    assert p.returncode == 75, explain(p, run_dir)
    assert p.stderr.strip().endswith("state saved at step 0 (no checkpoint yet); rerun on another machine to "
                                     "continue"), p.stderr
    assert losses(run_dir) == [], "it took a step"
    (exited,) = events(run_dir, "attempt-exited")
    assert exited["returncode"] == 75, exited  # it took the signal in start-up, and left as if preempted
    continue_elsewhere(run_dir, reference, procs)


def test_two_notices_at_once_are_acted_on_once(tmp_path: Path, reference: Path,
                                               procs: list[subprocess.Popen[str]]) -> None:
    run_dir = seed_data(tmp_path / "run", reference)
    with FakeAzure() as fake:
        sup = _start(procs, runner_cmd(run_dir, *JOB, "--notice", "azure", "--metadata-url", fake.url, *POLL))
        wait_for_step(run_dir, 12, sup)
        fake.add_event("Terminate", window_s=20.0)
        fake.preempt(0.0, window_s=20.0)
        p = finish(sup)
        approvals = list(fake.approvals)
    assert p.returncode == 75, explain(p, run_dir)
    reactions = [(e["notice_kind"], e["reaction"]) for e in events(run_dir, "preemption-notice")]
    assert [r for _, r in reactions] == ["act", "record"], reactions
    assert len(events(run_dir, "stop-requested")) == 1
    assert len(approvals) == 1
    assert_saved_at_the_step_reached(run_dir, p.stderr.strip())
    continue_elsewhere(run_dir, reference, procs)


def test_chaos_notices_on_two_machines_in_a_row(tmp_path: Path, reference: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "runner", "--simulate-preemption", *map(str, JOB), "--fault-kinds", "notice",
           "--faults", 2, "--chaos-seed", 6,  # aws at step 3, azure at 27
           "--run-dir", tmp_path / "chaos", "--reference-cache", tmp_path / "refs", "--json-report", report]
    p = subprocess.run(list(map(str, cmd)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    r = json.loads(report.read_text())
    assert (r["verdict"], r["bit_exact"]) == ("pass", True)
    notices = r["steps_lost_per_notice"]
    assert [(n["kind"], n["steps_lost"], n["made_deadline"]) for n in notices] == [("notice", 0, True)] * 2, notices
    assert [f["kind"] for f in r["faults"]] == ["notice", "notice"] and not any(f["missed"] for f in r["faults"])
    sups = [e for e in events(tmp_path / "chaos", "supervisor-exit")]
    assert [e["code"] for e in sups] == [75, 75, 0]
    assert p.stdout.count("a new supervisor takes over the run directory") == 2


def first_spawn_s(run_dir: Path, *notice: str) -> float:
    """Seconds from ``python -m runner`` starting to its first worker's spawn."""
    t = time.time()
    p = run(runner_cmd(run_dir, "--epochs", 1, "--no-standby", *notice))
    assert p.returncode == 0, explain(p, run_dir)
    (spawned,) = events(run_dir, "attempt-spawned")
    return float(spawned["time"]) - t


def test_auto_adds_under_half_a_second_to_start_up(tmp_path: Path, reference: Path) -> None:
    import socket

    hole = socket.socket()  # a port whose connects hang, as 169.254.169.254's do off a cloud
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    try:
        none, auto = [], []
        for i in range(3):  # alternated, so that the machine's load falls on both alike
            none.append(first_spawn_s(seed_data(tmp_path / f"none-{i}", reference), "--notice", "none"))
            auto.append(first_spawn_s(seed_data(tmp_path / f"auto-{i}", reference), "--notice", "auto",
                                      "--metadata-url", url))
    finally:
        hole.close()
    added = statistics.median(auto) - statistics.median(none)
    print(f"first worker spawned after: none {statistics.median(none):.3f} s, auto {statistics.median(auto):.3f} s "
          f"(median of 3): auto adds {added * 1000:.0f} ms")
    assert added < 0.5
    (found,) = events(tmp_path / "auto-0", "notice-source-detected")
    assert found["choice"] == "none" and found["elapsed_s"] < 0.5
