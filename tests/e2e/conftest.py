"""Runs shared by the end-to-end tests: each costs a real ``python -m model`` process (seconds), so
the uninterrupted references and the interrupted runs the tests resume are made once per session.

A test that resumes a shared interrupted run copies its directory first: shared runs stay as made.
``procs`` holds the processes a test starts, and kills whatever of them outlives it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint.store import checkpoint_name
from tests.e2e.runs import ARGS2, ARGS3, BREAK_KINDS, EVERY4, STEPS2, Runs2, Runs3, assert_crashed_at, copy_run, crash
from tests.helpers.processes import Started, describe, kill_leftovers, run_job, run_jobs, seeded_run_dir
from tests.helpers.readers import losses


@pytest.fixture(scope="session")
def runs2(tmp_path_factory: pytest.TempPathFactory) -> Runs2:
    base = tmp_path_factory.mktemp("runs2")
    ref = base / "reference"
    p = run_job(ref, *ARGS2)  # from scratch: it prepares the data the other runs reuse
    assert p.returncode == 0, describe(p)
    assert [r["step"] for r in losses(ref)] == list(range(STEPS2))
    runs = Runs2(ref, seeded_run_dir(base / "crashed-epoch-end", ref), seeded_run_dir(base / "crashed-mid-epoch", ref))
    p15, p21 = run_jobs([
        ((runs.crashed_epoch_end, *ARGS2), {"arm": crash(15)}),
        ((runs.crashed_mid_epoch, *ARGS2, *EVERY4), {"arm": crash(21)}),
    ])
    assert_crashed_at(p15, runs.crashed_epoch_end, 15, [15])
    assert_crashed_at(p21, runs.crashed_mid_epoch, 21, [15, 16, 20])
    return runs


@pytest.fixture(scope="session")
def runs3(tmp_path_factory: pytest.TempPathFactory, runs2: Runs2) -> Runs3:
    base = tmp_path_factory.mktemp("runs3")
    runs = Runs3(seeded_run_dir(base / "reference", runs2.reference), resume_step=20)
    crashed = seeded_run_dir(base / "crashed", runs2.reference)
    pref, pcrash = run_jobs([((runs.reference, *ARGS3), {}), ((crashed, *ARGS3, *EVERY4), {"arm": crash(21)})])
    assert pref.returncode == 0, describe(pref)
    assert_crashed_at(pcrash, crashed, 21, [15, 16, 20])
    kinds: list[str | None] = [None, *BREAK_KINDS]
    for kind in kinds:
        runs.resumed[kind] = copy_run(crashed, base / f"resumed-{kind or 'correctly'}")
    procs = run_jobs(
        ((runs.resumed[k], *ARGS3, *EVERY4, *(("--break-resume", k) if k else ())), {}) for k in kinds
    )
    for p in procs:
        assert p.returncode == 0, describe(p)
    assert (crashed / "checkpoints" / checkpoint_name(runs.resume_step)).is_dir()
    return runs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Started]:
    """The processes a test starts; whatever is still running at teardown, or names its tmp dir, is killed."""
    started = Started()
    yield started
    kill_leftovers(started, [tmp_path])
