"""rundir/lock.py: one holder of a run directory's lock at a time; a second is refused with the holder's
pid and exit 69; a directory that cannot be written is exit 73; a holder that was killed leaves nothing
to clean up. Real files and a real process."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from rundir.exitcodes import ExitCode, UserError
from rundir.lock import LOCK_FILE, RunLock
from tests.helpers.processes import start


def test_the_holder_writes_its_pid_and_a_second_is_refused_naming_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # created by the lock
    with RunLock(run_dir):
        assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError) as exc:
            RunLock(run_dir).acquire()
    assert exc.value.code == ExitCode.LOCKED == 69
    assert str(exc.value) == f"run directory {run_dir} is in use by supervisor pid {os.getpid()}"


def test_released_it_can_be_taken_again(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()
    lock.release()  # twice is harmless
    with RunLock(tmp_path) as again:
        assert again.fd is not None


def test_a_lock_of_its_own_name_and_message_without_a_pid(tmp_path: Path) -> None:
    def worker_lock() -> RunLock:
        return RunLock(tmp_path, "worker.lock", in_use="{run_dir} busy ({holder})", record_pid=False)

    with worker_lock():
        assert (tmp_path / "worker.lock").read_text() == ""
        with pytest.raises(UserError, match=rf"^{tmp_path} busy \(unknown\)$"):
            worker_lock().acquire()
        with RunLock(tmp_path):  # another name: another lock
            pass


def test_a_directory_that_cannot_be_made_is_exit_73(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as exc:
        RunLock(tmp_path / "file" / "run").acquire()
    assert exc.value.code == ExitCode.UNWRITABLE == 73
    assert str(exc.value).startswith(f"run directory {tmp_path / 'file' / 'run'} is not writable: ")


HOLDER = ("import sys, time; from rundir.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
          "print('held', flush=True); time.sleep(120)")


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    holder = start([sys.executable, "-c", HOLDER, str(tmp_path)])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"supervisor pid {holder.pid}$"):
            RunLock(tmp_path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"  # its pid overwritten
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
