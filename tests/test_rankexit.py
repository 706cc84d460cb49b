"""The rank wrapper (runner/rankexit.py): the first failed rank as a decision table, the records it
reads, and the wrapper itself around real processes that exit, crash and are killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.rankexit import RECORD_BYTES, RankRecord, failed, first_failure, read_records, record_path
from tests.helpers import REPO
from tests.helpers.tmpfs import tmpfs

KILL, TERM = -signal.SIGKILL, -signal.SIGTERM


def rec(rank: int, rc: int | None, ended: float | None = None) -> RankRecord:
    return RankRecord(rank, 1000 + rank, 2000 + rank, rc, ended if rc is not None else None)


@pytest.mark.parametrize(("rc", "ends_the_gang"), [
    (0, False), (75, False), (TERM, False),  # done, stopped with its state saved, stopped by the launcher
    (1, True), (KILL, True), (74, True), (76, True), (-signal.SIGSEGV, True), (143, True),
])
def test_which_exits_end_the_gang_at_once(rc: int, ends_the_gang: bool) -> None:
    assert failed(rc) is ends_the_gang


@pytest.mark.parametrize(("records", "launcher_rc", "want"), [
    # the earliest failure, not a survivor killed or stopped after it
    ([rec(0, KILL, 2.0), rec(1, KILL, 1.0)], 1, (1, KILL)),
    ([rec(0, 1, 1.0), rec(1, KILL, 2.0)], 1, (0, 1)),
    ([rec(0, TERM, 1.0), rec(1, 1, 2.0)], 1, (1, 1)),  # the launcher's SIGTERM to the survivor came first
    ([rec(0, 75, 1.0), rec(1, 74, 2.0)], 74, (1, 74)),
    ([rec(0, 1, 3.0), rec(1, None), rec(2, 76, 2.0)], 1, (2, 76)),
    ([rec(0, 1, 2.0), rec(1, 1, 2.0)], 1, (0, 1)),  # a tie: the lower rank
    # no failure: a stop, then the launcher's word
    ([rec(0, 75, 2.0), rec(1, 75, 1.0)], 15, (1, 75)),
    ([rec(0, TERM, 1.0), rec(1, 75, 2.0)], 15, (0, TERM)),
    ([rec(0, 0, 1.0), rec(1, 0, 2.0)], 0, (None, 0)),
    ([rec(0, None), rec(1, None)], KILL, (None, KILL)),  # killed whole: no rank could say
    ([], 1, (None, 1)),  # the launcher failed before starting any
])
def test_the_gang_exits_as_the_rank_that_failed_first(records: list[RankRecord], launcher_rc: int,
                                                      want: tuple[int | None, int]) -> None:
    assert first_failure({r.rank: r for r in records}, launcher_rc) == want


@pytest.mark.parametrize(("records", "size", "want"), [
    ([rec(0, 0, 1.0), rec(1, 0, 2.0)], 2, (None, 0)),  # every rank done: done, though the launcher says 15
    ([rec(0, 0, 1.0), rec(1, None)], 2, (None, 15)),  # one rank could not say: the launcher's word
    ([rec(0, 0, 1.0)], 2, (None, 15)),
    ([rec(0, 0, 1.0), rec(1, 75, 2.0)], 2, (1, 75)),
    ([], 2, (None, 15)),
])
def test_a_gang_whose_ranks_all_finished_is_done_whatever_its_launcher_says(
        records: list[RankRecord], size: int, want: tuple[int | None, int]) -> None:
    """A stop (a notice's SIGTERM) that reaches the launcher as its ranks finish the job: it exits
    15; the job is done all the same, not crashed."""
    assert first_failure({r.rank: r for r in records}, 15, size) == want


def test_a_record_that_does_not_parse_is_left_out(tmp_path: Path) -> None:
    record_path(tmp_path, 0).write_text(json.dumps({"rank": 0, "pid": 5, "wrapper": 6}))
    record_path(tmp_path, 1).write_text("{torn")
    record_path(tmp_path, 2).write_text(json.dumps({"rank": 2, "pid": "x", "wrapper": 6}))
    record_path(tmp_path, 3).write_text(json.dumps([1, 2]))
    assert read_records(tmp_path) == {0: RankRecord(0, 5, 6)}


def wrapped(tmp_path: Path, code: str, rank: int = 1) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PADDLE_TRAINER_ID=str(rank), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "runner.rankexit", str(tmp_path), sys.executable, "-c", code],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("code", "rc", "exit_status"), [
    ("print('hi')", 0, 0),
    ("import sys; sys.exit(75)", 75, 75),
    ("raise SystemExit(3)", 3, 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", KILL, 128 + signal.SIGKILL),
])
def test_the_wrapper_records_how_its_rank_ended_and_exits_as_it_did(tmp_path: Path, code: str, rc: int,
                                                                    exit_status: int) -> None:
    p = wrapped(tmp_path, code)
    assert p.returncode == exit_status, p.stderr
    got = read_records(tmp_path)[1]
    assert got.returncode == rc and got.ended is not None and got.wrapper != got.pid


def test_the_wrapper_passes_a_sigterm_on_to_its_rank(tmp_path: Path) -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    env = dict(os.environ, PADDLE_TRAINER_ID="0", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "runner.rankexit", str(tmp_path), sys.executable, "-c", code],
                         env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)  # to the wrapper alone
        assert p.wait(timeout=30) == 75
    finally:
        p.kill()
        p.wait()
    assert read_records(tmp_path)[0].returncode == 75


def test_the_wrapper_wants_a_directory_and_a_command(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "runner.rankexit", str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "usage" in p.stderr


FILL_AND_EXIT_74 = """
import sys
from tests.helpers.tmpfs import fill
fill(__import__("pathlib").Path({path!r}))
sys.exit(74)
"""


def test_a_rank_that_exits_on_a_full_disk_is_still_heard(tmp_path: Path) -> None:
    """The rank fills the disk and exits 74 (as a rank does when its part finds no space): its wrapper
    has no room for a new record, so it writes over the one it wrote at the start."""
    with tmpfs(tmp_path / "disk", "256k") as disk:
        p = wrapped(disk, FILL_AND_EXIT_74.format(path=str(disk / "filler")))
        assert p.returncode == 74, p.stderr
        got = read_records(disk)[1]
        assert got.returncode == 74 and got.ended is not None
        assert record_path(disk, 1).stat().st_size == RECORD_BYTES
        assert not list(disk.glob(".rank-*"))  # no temporary file left on the full disk
