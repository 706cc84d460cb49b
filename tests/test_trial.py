"""chaos/trial.py: the reference's key (what makes a cached reference reusable), the replay command,
and the reference run itself with a stand-in job in real processes: made once and reused, and a
failed one reported in one line and removed. A whole trial: tests/e2e/test_simulate.py."""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from chaos.trial import ensure_reference, reference_key, replay_command
from rundir.exitcodes import ExitCode, UserError
from rundir.names import FINAL

# A stand-in job: writes final.json and exits 0, or prints a last line and exits with the code it is given.
JOB = """
import json, pathlib, sys
run_dir, code = pathlib.Path(sys.argv[1]), int(sys.argv[2])
if code:
    print("some output"); print(f"error: it broke ({code})"); sys.exit(code)
(run_dir / "final.json").write_text(json.dumps({"params_sha256": "ab" * 32}))
"""


class StandIn:
    """A job adapter whose identity is ``ns.width`` and whose data key is ``ns.data``."""

    preload: tuple[str, ...] = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--width", type=int, default=3)

    def argv(self, ns: argparse.Namespace, *, reference: bool = False) -> list[str]:
        return [str(ns.exit)]

    def command(self, run_dir: Path, argv: Sequence[str]) -> tuple[str, ...]:
        return (sys.executable, "-c", JOB, str(run_dir), *argv)

    def env(self, ns: argparse.Namespace) -> dict[str, str]:
        return {}

    def identity(self, ns: argparse.Namespace) -> dict[str, Any]:
        return {"job": "stand-in", "width": ns.width}

    def cache_key(self, ns: argparse.Namespace) -> str:
        return str(ns.data)

    def prepared(self, ref_dir: Path) -> Sequence[Path]:
        return []

    def total_steps(self, ref_dir: Path, ns: argparse.Namespace) -> tuple[int, int]:
        return 1, 1


def ns(width: int = 3, data: str = "d1", exit: int = 0) -> argparse.Namespace:
    return argparse.Namespace(width=width, data=data, exit=exit)


def test_the_reference_key_is_stable_and_sensitive_to_identity_and_data() -> None:
    job = StandIn()
    key = reference_key(job, ns())  # type: ignore[arg-type]
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert reference_key(job, ns()) == key  # type: ignore[arg-type]
    others = {reference_key(job, ns(width=4)), reference_key(job, ns(data="d2"))}  # type: ignore[arg-type]
    assert key not in others and len(others) == 2
    assert reference_key(job, ns(exit=3)) == key  # type: ignore[arg-type]  # not part of the identity


def test_the_replay_command_round_trips_through_a_shell(tmp_path: Path) -> None:
    schedule = tmp_path / "a dir" / "chaos-schedule.json"
    cmd = replay_command(StandIn(), ns(exit=0), schedule)  # type: ignore[arg-type]
    assert shlex.split(cmd) == ["python", "-m", "runner", "--simulate-preemption", "--chaos-replay", str(schedule),
                                "0"]


def console() -> Console:
    return Console(file=io.StringIO(), width=1000)  # a line per message, however long its path


def test_the_reference_is_run_once_and_then_reused(tmp_path: Path) -> None:
    job, c = StandIn(), console()
    ref = ensure_reference(job, ns(), tmp_path / "refs", c)  # type: ignore[arg-type]
    assert ref == tmp_path / "refs" / reference_key(job, ns())  # type: ignore[arg-type]
    assert json.loads((ref / FINAL).read_text())["params_sha256"] == "ab" * 32
    (ref / "marker").write_text("")
    assert ensure_reference(job, ns(), tmp_path / "refs", c) == ref  # type: ignore[arg-type]
    assert (ref / "marker").exists()  # reused, not run again
    assert c.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        f"reference: running the uninterrupted job in {ref}", f"reference: reusing {ref}"]


def test_an_unfinished_reference_is_never_reused(tmp_path: Path) -> None:
    job = StandIn()
    stale = tmp_path / "refs" / reference_key(job, ns())  # type: ignore[arg-type]
    stale.mkdir(parents=True)
    (stale / "losses.jsonl").write_text('{"step": 0, "loss": 1.0}\n')  # a killed reference: no final.json
    ref = ensure_reference(job, ns(), tmp_path / "refs", console())  # type: ignore[arg-type]
    assert ref == stale and not (ref / "losses.jsonl").exists() and (ref / FINAL).is_file()


@pytest.mark.parametrize(("code", "want"), [(65, ExitCode.BAD_DATA), (78, ExitCode.BAD_CONFIG), (9, ExitCode.CRASHED)])
def test_a_failed_reference_is_one_line_with_its_code_and_is_removed(tmp_path: Path, code: int,
                                                                     want: ExitCode) -> None:
    job = StandIn()
    with pytest.raises(UserError) as exc:
        ensure_reference(job, ns(exit=code), tmp_path / "refs", console())  # type: ignore[arg-type]
    assert exc.value.code == want
    assert str(exc.value) == f"the reference run failed: it broke ({code})"
    assert list((tmp_path / "refs").iterdir()) == []


def test_a_reference_cache_that_cannot_be_made_is_exit_73(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as exc:
        ensure_reference(StandIn(), ns(), tmp_path / "file" / "refs", console())  # type: ignore[arg-type]
    assert exc.value.code == ExitCode.UNWRITABLE
