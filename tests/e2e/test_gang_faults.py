"""Every fault kind against a gang of two ranks (``--simulate-preemption --nproc-per-node 2``), each
aimed at one rank by its schedule, with real processes, gloo and Paddle:

- a hang of one rank (SIGSTOP to it alone): the watch judges the whole gang hung, kills it, names the
  stopped rank, and the gang restarts;
- a checkpoint write stopped in one rank (rank 1 half-way through its part, rank 0 between the files
  it commits), then that rank SIGKILLed: no checkpoint of that step loads, the gang restarts from
  the one before;
- a corrupt checkpoint (rank 1's part, or rank 0's manifest): every rank falls back to the same older
  step, and each rank's log says which steps the ranks loaded;
- the six default kinds in one run, the opt-in notice and disk-full, and store-outage on a machine
  with a store; instance-loss is refused for a gang;
- a gang whose ranks resume from different checkpoints (``--break-resume rank-step``) is stopped
  before its first step, every attempt, until the supervisor gives up.

Each run is short (one epoch of 15 steps, checkpoints every 5) and compared bit for bit with one
uninterrupted two-rank reference, trained once for the module."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chaos.faults import DEFAULT_KINDS
from rundir.exitcodes import ExitCode
from tests.helpers.processes import describe, run_runner
from tests.helpers.readers import events, resumed_from_step

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GANG = ("--nproc-per-node", 2, "--dropout", 0.1, "--jitter", 0.02, "--hang-timeout", 6)
ONE_EPOCH = ("--epochs", 1)  # 15 steps, checkpoints after 5, 10 and 15
STEPS = 15


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gang-references")


@dataclass(frozen=True)
class Case:
    kind: str
    step: int
    detail: dict[str, Any]
    exits: tuple[str, ...]  # the attempts' exit classes
    resumed: tuple[int, ...]  # the steps attempt 2 may resume from
    fallback: bool = False  # attempt 2 moved a corrupt checkpoint aside first
    says: tuple[str, ...] = field(default=())  # lines in attempt 1's log

    @property
    def id(self) -> str:
        return f"{self.kind}-rank{self.detail['rank']}" + (f"-{self.detail['file']}" if "file" in self.detail else "")


CASES = [
    # The SIGSTOP goes out once the supervisor sees step 7; on a busy machine the gang may have
    # committed step 10 by the time it lands.
    Case("hang", 7, {"rank": 1}, ("hung", "completed"), (5, 10),
         says=("rank 1 of 2 was stopped (hung) when the gang was ended",)),
    Case("checkpoint-write", 10, {"rank": 1}, ("killed", "completed"), (5,),
         says=("rank 1 of 2 failed first (killed by SIGKILL)",)),
    Case("checkpoint-write", 10, {"rank": 0}, ("killed", "completed"), (5,),
         says=("rank 0 of 2 failed first (killed by SIGKILL)",)),
    Case("corrupt-checkpoint", 10, {"mode": "flip-byte", "position": 0.5, "rank": 1}, ("killed", "completed"), (5,),
         fallback=True),
    Case("corrupt-checkpoint", 10, {"mode": "truncate", "file": "MANIFEST.json", "position": 0.5, "rank": 0},
         ("killed", "completed"), (5,), fallback=True),
]


def simulate(run_dir: Path, cache: Path, *args: object) -> tuple[Any, dict[str, Any] | None]:
    report = run_dir.with_suffix(".json")
    p = run_runner("--simulate-preemption", *GANG, "--reference-cache", cache, "--run-dir", run_dir,
                   "--json-report", report, *args)
    return p, json.loads(report.read_text()) if report.is_file() else None


def replay(tmp_path: Path, cache: Path, *faults: dict[str, Any], args: tuple[object, ...] = ONE_EPOCH,
           steps: int = STEPS) -> tuple[Path, Any, dict[str, Any] | None]:
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"format": 1, "seed": None, "total_steps": steps, "faults": list(faults)}))
    run_dir = tmp_path / "run"
    p, report = simulate(run_dir, cache, *args, "--chaos-replay", schedule)
    return run_dir, p, report


def assert_passed(p: Any, report: dict[str, Any] | None, steps: int = STEPS) -> dict[str, Any]:
    assert p.returncode == 0 and report is not None, describe(p)
    assert (report["verdict"], report["bit_exact"], report["steps_compared"]) == ("pass", True, steps), describe(p)
    return report


def ranks_resumed(run_dir: Path, attempt: int) -> set[str]:
    """What each rank's log of ``attempt`` says the ranks loaded."""
    ranks = run_dir / "logs" / f"attempt-{attempt:03d}-ranks"
    return {line.split(": ", 1)[1] for r in (0, 1) for line in (ranks / f"workerlog.{r}").read_text().splitlines()
            if "the ranks resumed from steps" in line}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_fault_aimed_at_one_rank_restarts_the_whole_gang_bit_exactly(case: Case, tmp_path: Path,
                                                                        cache: Path) -> None:
    run_dir, p, report = replay(tmp_path, cache, {"kind": case.kind, "step": case.step, "detail": case.detail})
    r = assert_passed(p, report)
    (hit,) = r["faults"]  # the report's per-kind result
    assert (hit["kind"], hit["rank"], hit["missed"], hit["attempt"]) == (case.kind, case.detail["rank"], False, 1)
    assert [e["exit_class"] for e in events(run_dir, "attempt-exited")] == list(case.exits)
    log = (run_dir / "logs" / "attempt-001.log").read_text()
    for line in case.says:
        assert line in log, log[-2000:]
    resumed = resumed_from_step(run_dir, 2)
    assert resumed in case.resumed
    assert ranks_resumed(run_dir, 2) == {f"the ranks resumed from steps [{resumed}, {resumed}]"}
    fallbacks = [e for e in events(run_dir, "checkpoint-fallback") if e["attempt"] == 2]
    assert bool(fallbacks) is case.fallback, fallbacks
    if case.kind == "hang":
        (hung,) = events(run_dir, "hang-detected")
        assert hung["attempt"] == 1
        fault = next(e for e in events(run_dir, "chaos-fault"))
        assert (fault["signal"], fault["rank"]) == ("SIGSTOP", 1)
    if case.kind == "checkpoint-write":  # stopped in the write of the checkpoint after 10 steps: none of it loads
        paused = [e for e in events(run_dir, "chaos-paused-in-checkpoint-write") if e["attempt"] == 1]
        assert paused and paused[0]["step"] == 10
        saved = [e["step"] for e in events(run_dir, "checkpoint-saved") if e["attempt"] == 1]
        assert 10 not in saved and 5 in saved
        if case.detail["rank"] == 1:
            assert (paused[0]["rank"], paused[0]["part_bytes"] * 2 <= paused[0]["of_bytes"]) == (1, True)
    if case.kind == "corrupt-checkpoint":
        assert "step-000000010" in fallbacks[0]["reason"]
        assert ("rank 1's part does not match the manifest" in fallbacks[0]["reason"]) is (case.detail["rank"] == 1)


def test_every_default_kind_in_one_run(tmp_path: Path, cache: Path) -> None:
    """Chaos seed 0's six faults over two epochs, each aimed at a rank: crash (rank 1), a corrupt
    manifest and a stopped checkpoint write (rank 0), a hang (rank 1), SIGTERM (rank 0), SIGKILL (rank 1)."""
    p, report = simulate(tmp_path / "run", cache, "--epochs", 2, "--faults", 6, "--chaos-seed", 0)
    r = assert_passed(p, report, 30)
    assert sorted(h["kind"] for h in r["faults"]) == sorted(k.value for k in DEFAULT_KINDS)
    assert all(h["rank"] in (0, 1) and not h["missed"] for h in r["faults"]), r["faults"]
    exits = [e["exit_class"] for e in events(tmp_path / "run", "attempt-exited")]
    assert exits == ["crashed", "killed", "killed", "hung", "preempted", "killed", "completed"], exits


@pytest.mark.skipif(os.geteuid() != 0, reason="disk-full mounts a tmpfs: root only")
def test_a_notice_and_a_full_disk_reach_the_whole_gang(tmp_path: Path, cache: Path) -> None:
    """The notice stops every rank at one step (exit 75, nothing lost) and a new supervisor goes on;
    the full disk makes the rank that writes next exit 74, heard as such, and the supervisor waits
    for space. Four epochs: the gang must still write checkpoints after the disk is filled, and
    its steps must not outrun the supervisor that fills it."""
    run_dir, p, report = replay(
        tmp_path, cache, {"kind": "notice", "step": 4, "detail": {"cloud": "gcp", "window_s": 5.0}},
        {"kind": "disk-full", "step": 12, "detail": {}}, args=("--epochs", 4), steps=60)
    r = assert_passed(p, report, 60)
    assert [(h["kind"], h["attempt"], h["missed"]) for h in r["faults"]] == [("notice", 1, False),
                                                                             ("disk-full", 2, False)]
    assert [n["steps_lost"] for n in r["steps_lost_per_notice"]] == [0]
    exits = [e["exit_class"] for e in events(run_dir, "attempt-exited")]
    assert exits[0] == "preempted" and exits[-1] == "completed", exits
    # The supervisor's own records are dropped while the disk is full; these come after it is freed.
    assert events(run_dir, "disk-space-returned")
    assert resumed_from_step(run_dir, 3) >= 10


def test_a_store_outage_on_a_gangs_machine_and_no_instance_loss(tmp_path: Path, cache: Path) -> None:
    run_dir, p, report = replay(tmp_path, cache, {"kind": "store-outage", "step": 6,
                                                 "detail": {"mode": "refuse", "seconds": 1.5}})
    r = assert_passed(p, report)
    assert [(h["kind"], h["missed"]) for h in r["faults"]] == [("store-outage", False)]
    assert {rec["ranks"] for rec in map(json.loads, (run_dir / "machine-1" / "losses.jsonl").read_text().splitlines())
            } == {2}  # the machine ran the gang
    refused = run_runner("--simulate-preemption", *GANG, *ONE_EPOCH, "--fault-kinds", "instance-loss",
                         "--run-dir", tmp_path / "refused")
    assert refused.returncode == ExitCode.BAD_CONFIG and "not for a gang of ranks" in refused.stderr, describe(refused)


def test_ranks_that_resume_from_different_checkpoints_are_stopped_before_their_first_step(
        tmp_path: Path, cache: Path) -> None:
    """The broken variant of the agreement: with ``--break-resume rank-step`` rank 1 loads the
    checkpoint before the one rank 0 chose. Every attempt after the kill stops at once, saying so,
    and the supervisor gives up on the crash loop: a run that could only diverge is never trained."""
    run_dir, p, report = replay(tmp_path, cache, {"kind": "sigkill", "step": 12, "detail": {"rank": 1}},
                                args=("--epochs", 2, "--break-resume", "rank-step"), steps=30)
    assert p.returncode != 0 and report is not None and report["verdict"] != "pass", describe(p)
    exits = [e["exit_class"] for e in events(run_dir, "attempt-exited")]
    assert exits[0] == "killed" and set(exits[1:]) == {"crashed"}, exits
    assert events(run_dir, "gave-up")
    said = (run_dir / "logs" / "attempt-002-ranks" / "workerlog.0").read_text()
    # The kill goes out once the supervisor sees step 12; on a busy machine the gang may have
    # committed step 15 by the time it lands. Rank 1 loads the checkpoint before rank 0's either way.
    apart = re.search(r"the ranks resumed from different checkpoints: rank 0 from step (\d+), rank 1 from step (\d+)",
                      said)
    assert apart is not None, said[-2000:]
    chosen, older = int(apart[1]), int(apart[2])
    assert chosen in (10, 15) and older == chosen - 5, apart[0]


def test_a_campaign_of_gang_trials_aims_every_fault_at_a_rank(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "campaign"
    p = run_runner("campaign", *GANG, *ONE_EPOCH, "--trials", 2, "--faults-per-trial", 2, "--jobs", 1,
                   "--chaos-seed", 3, "--reference-cache", cache, "--out", out, "--json", tmp_path / "campaign.json")
    assert p.returncode == 0, describe(p)
    trials = json.loads((tmp_path / "campaign.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["passed", "passed"], trials
    faults = [f for t in trials for f in t["faults"]]
    assert len(faults) == 4 and all(f["rank"] in (0, 1) and not f["missed"] for f in faults), faults
