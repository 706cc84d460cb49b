"""End to end: a crafted chaos schedule or checkpoint manifest never reaches a file outside the run
directory. A schedule is refused with one line and exit 78 before anything runs; a real worker
resuming falls back past a crafted manifest with one warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from checkpoint import filehash
from checkpoint.store import MANIFEST, _canonical, _sha256, checkpoint_name
from tests.helpers.processes import describe, run_job, run_runner

pytestmark = pytest.mark.e2e

CANARY = b"victim: chaos must not flip my bytes\n"


def canary(tmp_path: Path) -> tuple[Path, tuple[int, int]]:
    victim = tmp_path / "x" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(CANARY)
    os.utime(victim, ns=(10**18, 10**18))
    st = victim.stat()
    return victim, (st.st_mtime_ns, st.st_ino)


def assert_untouched(victim: Path, before: tuple[int, int]) -> None:
    st = victim.stat()
    assert victim.read_bytes() == CANARY and (st.st_mtime_ns, st.st_ino) == before


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_a_crafted_schedule_exits_78_with_one_line_before_anything_runs(tmp_path: Path, how: str) -> None:
    victim, before = canary(tmp_path)
    run_dir, refs = tmp_path / "run", tmp_path / "refs"
    # Relative to run/checkpoints/step-N/, "../../../x/victim.txt" is the victim.
    name = str(victim) if how == "absolute" else "../../../x/victim.txt"
    schedule = tmp_path / "crafted.json"
    schedule.write_text(json.dumps({"format": 1, "seed": 0, "total_steps": 75, "faults": [
        {"kind": "corrupt-checkpoint", "step": 15, "detail": {"mode": "flip-byte", "file": name, "position": 0.5}}]}))
    p = run_runner("--simulate-preemption", "--chaos-replay", schedule, "--run-dir", run_dir,
                   "--reference-cache", refs, timeout=120)
    assert p.returncode == 78, describe(p)
    assert "Traceback" not in p.stdout + p.stderr, describe(p)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines == [f"error: chaos schedule {schedule}: not a valid schedule: fault 1 (corrupt-checkpoint at step "
                     f"15): its file {name!r} " + ("is an absolute path" if how == "absolute" else
                                                    "climbs out of its directory with '..'")], describe(p)
    assert p.stdout.strip() == "", describe(p)
    assert not run_dir.exists() and not refs.exists(), "something ran before the schedule was checked"
    assert_untouched(victim, before)


def test_a_worker_resuming_falls_back_past_a_crafted_manifest(tmp_path: Path) -> None:
    victim, before = canary(tmp_path)
    run_dir = tmp_path / "run"
    p = run_job(run_dir, "--epochs", 1, "--checkpoint-every", 5)
    assert p.returncode == 0, describe(p)
    newest = max((run_dir / "checkpoints").glob("step-*"))
    # A manifest that lists the victim by a climbing name, its entry and its checksum made to match: a
    # loader that opened the file would accept the checkpoint.
    body = json.loads((newest / MANIFEST).read_text())
    body.pop("sha256")
    name = os.path.relpath(victim, newest)
    body["files"][name] = {filehash.DEFAULT: filehash.hex_digest(filehash.DEFAULT, [CANARY]), "size": len(CANARY)}
    (newest / MANIFEST).write_text(json.dumps(dict(body, sha256=_sha256(_canonical(body)))))
    (run_dir / "final.json").unlink()  # so that the job resumes instead of exiting at once

    p = run_job(run_dir, "--epochs", 1, "--checkpoint-every", 5)
    assert p.returncode == 0, describe(p)
    warnings = [line for line in p.stdout.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and "lists a file outside the checkpoint" in warnings[0], describe(p)
    assert (run_dir / "checkpoints" / f"corrupt-{newest.name}-0").is_dir()
    assert newest.name != checkpoint_name(0)
    assert_untouched(victim, before)
