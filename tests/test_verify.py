"""runner/verify.py: what ``python -m runner verify`` refuses before comparing (exit 65), the line per
journal with malformed records, and the verdict's exit code and JSON. The verdicts themselves are
tables in test_verdict.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rundir.exitcodes import ExitCode, UserError
from rundir.names import FINAL, LOSSES
from runner.trace import Trace, Verdict
from runner.verify import skipped_lines, verify_dirs, verify_main
from tests.helpers.factories import rec, trace_of, write_jsonl


def run_dir(d: Path, steps: int = 5, *, digest: str | None = "ab" * 32, loss: float = 1.0) -> Path:
    d.mkdir()
    write_jsonl(d / LOSSES, [rec(s, loss + s) for s in range(steps)])
    if digest is not None:
        (d / FINAL).write_text(json.dumps({"params_sha256": digest}))
    return d


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: None, "no such directory"),
    (lambda d: d.mkdir(), f"no {LOSSES} (not a run directory)"),
])
@pytest.mark.parametrize("which", ["run", "reference"])
def test_what_is_not_a_run_directory_is_refused_with_65(tmp_path: Path, make, says: str, which: str) -> None:
    good = run_dir(tmp_path / "good")
    bad = tmp_path / "bad"
    make(bad)
    args = (bad, good) if which == "run" else (good, bad)
    with pytest.raises(UserError) as exc:
        verify_dirs(*args)
    assert exc.value.code == ExitCode.BAD_DATA == 65
    assert str(exc.value) == f"{which} {bad}: {says}"


@pytest.mark.parametrize(("traces", "want"), [
    ([], []),
    ([(Path("/r"), trace_of([]))], []),
    ([(Path("/r"), Trace({}, 0, None, skipped=2, skip_problem="the line at byte 0: not JSON"))],
     [f"2 malformed record(s) skipped in {Path('/r') / LOSSES} (first: the line at byte 0: not JSON)"]),
    ([(Path("/a"), Trace({}, 0, None, skipped=1)), (Path("/b"), Trace({}, 0, None, skipped=3))],
     [f"1 malformed record(s) skipped in {Path('/a') / LOSSES}",
      f"3 malformed record(s) skipped in {Path('/b') / LOSSES}"]),
])
def test_skipped_lines(traces: list[tuple[Path, Trace]], want: list[str]) -> None:
    assert skipped_lines(traces) == want


@pytest.mark.parametrize(("run_loss", "digest", "verdict", "code"), [
    (1.0, "ab" * 32, Verdict.PASS, 0),
    (1.5, "cd" * 32, Verdict.DIVERGED, 3),
    (1.0, None, Verdict.INCOMPLETE, 4),
])
def test_the_exit_code_and_json_are_the_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str], run_loss: float,
                                                 digest: str | None, verdict: Verdict, code: int) -> None:
    ref = run_dir(tmp_path / "ref")
    run = run_dir(tmp_path / "run", loss=run_loss, digest=digest)
    assert verify_dirs(run, ref).verdict is verdict
    out = tmp_path / "out" / "verify.json"  # its directory is made
    assert verify_main([str(run), str(ref), "--json", str(out)]) == verdict.exit_code == code
    assert capsys.readouterr().out.startswith(verdict.value.upper() + " ")
    assert json.loads(out.read_text())["verdict"] == verdict.value


def test_a_json_file_that_cannot_be_written_is_exit_73(tmp_path: Path) -> None:
    ref, run = run_dir(tmp_path / "ref"), run_dir(tmp_path / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as exc:
        verify_main([str(run), str(ref), "--json", str(tmp_path / "file" / "v.json")])
    assert exc.value.code == ExitCode.UNWRITABLE
