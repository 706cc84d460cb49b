"""runner/cli.py: the front door's parser and how it sends each command on; what it refuses before it
starts anything (exit 2, one line, no run directory made)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from model.job import BUILTIN
from runner.cli import _split_command, build_parser, builtin_job, main
from tests.helpers.processes import run


@pytest.mark.parametrize(("argv", "own", "command"), [
    ([], [], None),
    (["--run-dir", "d", "--epochs", "2"], ["--run-dir", "d", "--epochs", "2"], None),
    (["--run-dir", "d", "--", "python", "job.py"], ["--run-dir", "d"], ["python", "job.py"]),
    (["--run-dir", "d", "--"], ["--run-dir", "d"], []),
    (["--", "a", "--", "b"], [], ["a", "--", "b"]),  # the first '--' splits; the command keeps the rest
])
def test_split_command(argv: list[str], own: list[str], command: list[str] | None) -> None:
    assert _split_command(argv) == (own, command)


def test_the_built_in_job_is_the_default() -> None:
    assert builtin_job() is BUILTIN
    ns = build_parser().parse_args(["--run-dir", "d"])
    assert (ns.run_dir, ns.epochs, ns.max_restarts, ns.standby) == (Path("d"), 5, 20, None)


class OtherJob:
    """A job of another shape: only its options matter here."""

    preload: tuple[str, ...] = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--width", type=int, default=3)


def test_the_parser_takes_the_jobs_own_options() -> None:
    ns = build_parser(OtherJob()).parse_args(["--width", "8", "--grace", "2"])  # type: ignore[arg-type]
    assert (ns.width, ns.grace) == (8, 2.0) and not hasattr(ns, "epochs")


def runner(*args: object) -> tuple[int, str, str]:
    p = run([sys.executable, "-m", "runner", *map(str, args)], timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize(("args", "says"), [
    ((), "error: --run-dir is required"),
    (("--run-dir", "RUN", "--"), "error: nothing after '--': give the command to supervise"),
    (("--run-dir", "RUN", "--epochs", "0"), "error: argument --epochs: must be 1 or more, got 0 "
                                            "(see python -m runner --help)"),
])
def test_refused_before_anything_starts(tmp_path: Path, args: Sequence[str], says: str) -> None:
    run_dir = tmp_path / "run"
    code, out, err = runner(*(str(run_dir) if a == "RUN" else a for a in args))
    assert (code, out, err.splitlines()) == (2, "", [says])
    assert not run_dir.exists()


@pytest.mark.parametrize(("argv", "prog"), [
    (["verify"], "python -m runner verify"),
    (["campaign"], "python -m runner campaign"),
    (["--simulate-preemption", "--faults", "x"], "python -m runner --simulate-preemption"),
])
def test_each_command_has_its_own_parser(argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and line.endswith(f"(see {prog} --help)")
