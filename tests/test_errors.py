"""The worker's failures that are facts (rundir/errors.py): which errnos are a resource fault and how
its one line reads, the path named in an error from a write, and the one line printed - with the
exit code kept - even when standard error is itself a full disk (``/dev/full``)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from checkpoint.writer_protocol import WriterError
from rundir.errors import NonFiniteError, ResourceError, as_resource_error, resource_cause, writing
from rundir.exitcodes import ExitCode, UserError
from rundir.journal import JsonlWriter, append_record
from tests.helpers import REPO


@pytest.mark.parametrize(("err", "cause"), [
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EIO, "input/output error"),
    (errno.EACCES, None),  # not a resource: the directory's permissions (exit 73 where it matters)
    (errno.ENOENT, None),
    (errno.EROFS, None),
    (errno.EPIPE, None),
    (None, None),
    (True, None),  # not an errno at all
    ("28", None),
])
def test_which_errnos_are_a_resource_fault(err: object, cause: str | None) -> None:
    assert resource_cause(err) == cause


@pytest.mark.parametrize(("exc", "line"), [
    (OSError(errno.ENOSPC, "No space left on device", "/run/losses.jsonl"),
     "no space left on device writing /run/losses.jsonl"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", b"/run/bytes-name"), "disk quota exceeded writing /run/bytes-name"),
    (OSError(errno.EIO, "Input/output error"), "input/output error"),  # no file known: the cause alone
    (WriterError("checkpoint after step 5: ...", errno=errno.ENOSPC, filename="/run/checkpoints/step-5/m"),
     "no space left on device writing /run/checkpoints/step-5/m"),
    (ResourceError("no space left on device", "/x"), "no space left on device writing /x"),
    (OSError(errno.EACCES, "Permission denied", "/run/x"), None),
    (WriterError("checkpoint writer (pid 1) exited with 1 before finishing"), None),
    (ValueError("no errno"), None),
    (NonFiniteError("the loss is nan at step 3"), None),
])
def test_an_error_as_a_resource_error(exc: BaseException, line: str | None) -> None:
    got = as_resource_error(exc)
    if line is None:
        assert got is None
    else:
        assert got is not None and str(got) == line and got.code is ExitCode.IO_ERROR
        assert isinstance(got, UserError)  # a job catching UserError gets it, with its code


def test_non_finite_is_a_user_error_with_its_own_code() -> None:
    e = NonFiniteError("the loss is nan at step 41; the last good checkpoint is step-000000040")
    assert isinstance(e, UserError) and e.code is ExitCode.NON_FINITE == 76
    assert ExitCode.IO_ERROR == 74


def test_writing_names_the_file_being_written_not_a_temporary_or_none(tmp_path: Path) -> None:
    target = tmp_path / "final.json"
    with pytest.raises(OSError) as bare, writing(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert bare.value.filename == str(target)
    with pytest.raises(OSError) as temp, writing(target):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".final.json.tmp-1"))
    assert temp.value.filename == str(target)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_the_journal_names_its_file_when_the_disk_is_full() -> None:
    # /dev/full answers every write with ENOSPC: a disk that is always full.
    journal = JsonlWriter(Path("/dev/full"))
    with pytest.raises(OSError) as got:
        journal.write({"step": 0})
    journal.close()
    assert got.value.errno == errno.ENOSPC and got.value.filename == "/dev/full"
    with pytest.raises(OSError) as got:
        append_record(Path("/dev/full"), {"event": "x"})
    assert str(as_resource_error(got.value)) == "no space left on device writing /dev/full"


GUARDED = textwrap.dedent("""
    import errno, sys
    from runner.worker import run_guarded
    def main():
        print("some buffered output", flush=False)
        raise OSError(errno.ENOSPC, "No space left on device", "/run/losses.jsonl")
    sys.exit(run_guarded(main))
""")
# The same without the guard's care for the streams: a plain print of the line.
UNGUARDED = textwrap.dedent("""
    import sys
    print("some buffered output", flush=False)
    try:
        raise OSError(28, "No space left on device", "/run/losses.jsonl")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(74)
""")


def run_with_streams(code: str, stream: str) -> subprocess.CompletedProcess[bytes]:
    with open(stream, "wb") as out:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, "-c", code], stdout=out, stderr=out, env=env, cwd=REPO, timeout=60)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_the_exit_code_survives_standard_streams_on_a_full_disk() -> None:
    assert run_with_streams(GUARDED, os.devnull).returncode == ExitCode.IO_ERROR
    assert run_with_streams(GUARDED, "/dev/full").returncode == ExitCode.IO_ERROR
    # Broken on purpose: printing the line to a full disk raises, and the exit code is lost.
    assert run_with_streams(UNGUARDED, os.devnull).returncode == ExitCode.IO_ERROR
    assert run_with_streams(UNGUARDED, "/dev/full").returncode != ExitCode.IO_ERROR


def test_the_guard_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert run_with_streams(GUARDED, str(log)).returncode == ExitCode.IO_ERROR
    lines = log.read_text().splitlines()
    assert sorted(lines) == ["error: no space left on device writing /run/losses.jsonl", "some buffered output"]
