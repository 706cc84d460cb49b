"""A gang's ranks on the workers' side (runner/worker/ranks.py): which rank a process is, the rule
that a checkpoint loads only when every rank committed its part (a decision table, with the broken
variants it must refuse), the parts on real files, and the worker of a rank other than 0."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from checkpoint.storage import LocalStorage
from checkpoint.store import CheckpointStore, CorruptCheckpoint, checkpoint_name
from rundir.contract import ENV_CHAOS_ARM, PAUSED_EVENT
from rundir.exitcodes import ExitCode, UserError
from runner.worker.faults import SimulatedDeviceError
from runner.worker.ranks import (
    PARTS,
    PartDigest,
    Rank,
    RankParts,
    RankWorker,
    digest_of,
    gang_meta,
    gang_problem,
    gang_record,
    part_key,
    resumed_apart,
)

A, B = PartDigest.of(b"rank one"), PartDigest.of(b"rank two")


@pytest.mark.parametrize(("env", "want"), [
    ({}, Rank(0, 1)),
    ({"PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "2"}, Rank(1, 2)),
    ({"PADDLE_TRAINER_ID": "0", "PADDLE_TRAINERS_NUM": "4"}, Rank(0, 4)),
])
def test_a_rank_is_read_from_the_launchers_variables(env: dict[str, str], want: Rank) -> None:
    assert Rank.from_env(env) == want
    assert want.leader is (want.rank == 0)


@pytest.mark.parametrize(("env", "node", "node_ranks", "node_leader"), [
    ({"PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "2", "PADDLE_NNODES": "2"}, 1, range(1, 2), True),
    ({"PADDLE_TRAINER_ID": "3", "PADDLE_TRAINERS_NUM": "4", "PADDLE_NNODES": "2"}, 1, range(2, 4), False),
    ({"PADDLE_TRAINER_ID": "2", "PADDLE_TRAINERS_NUM": "4", "PADDLE_NNODES": "2"}, 1, range(2, 4), True),
    ({"PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "4", "PADDLE_NNODES": "1"}, 0, range(0, 4), False),
    ({"PADDLE_TRAINER_ID": "0", "PADDLE_TRAINERS_NUM": "6", "PADDLE_NNODES": "3"}, 0, range(0, 2), True),
])
def test_each_node_has_its_ranks_in_a_row_and_the_first_leads_it(env: dict[str, str], node: int,
                                                                 node_ranks: range, node_leader: bool) -> None:
    r = Rank.from_env(env)
    assert (r.node, r.node_ranks, r.node_leader) == (node, node_ranks, node_leader)
    assert r.part_ranks == node_ranks[1:]


@pytest.mark.parametrize("env", [
    {"PADDLE_TRAINER_ID": "2", "PADDLE_TRAINERS_NUM": "2"},
    {"PADDLE_TRAINER_ID": "-1", "PADDLE_TRAINERS_NUM": "2"},
    {"PADDLE_TRAINER_ID": "x", "PADDLE_TRAINERS_NUM": "2"},
    {"PADDLE_TRAINERS_NUM": "0"},
    {"PADDLE_TRAINER_ID": "0", "PADDLE_TRAINERS_NUM": "3", "PADDLE_NNODES": "2"},  # nodes of unequal size
    {"PADDLE_TRAINER_ID": "0", "PADDLE_TRAINERS_NUM": "2", "PADDLE_NNODES": "0"},
])
def test_a_rank_outside_its_gang_is_bad_configuration(env: dict[str, str]) -> None:
    with pytest.raises(UserError) as exc:
        Rank.from_env(env)
    assert exc.value.code is ExitCode.BAD_CONFIG


# -- committed by every rank: the decision table ----------------------------------------------------------

GANG3 = gang_meta(3, {1: A, 2: B})


@pytest.mark.parametrize(("record", "size", "found", "problem"), [
    # committed by every rank
    (GANG3, 3, {1: A, 2: B}, None),
    (None, 1, {}, None),  # a single process's checkpoint, for a single process
    (gang_meta(1, {}), 1, {}, None),
    # a part missing, or not the one the manifest names
    (GANG3, 3, {1: A, 2: None}, "rank 2's part is missing"),
    (GANG3, 3, {1: B, 2: B}, "rank 1's part does not match the manifest"),
    (GANG3, 3, {1: PartDigest(A.size + 1, A.sha256), 2: B}, "rank 1's part does not match the manifest"),
    # the manifest does not list every rank
    (gang_meta(3, {1: A}), 3, {1: A, 2: B}, "the manifest lists no part for rank 2"),
    ({"world_size": 3, "parts": {"1": {"size": "8", "sha256": A.sha256}, "2": {}}}, 3, {1: A, 2: B},
     "the manifest lists no part for rank 1"),
    # another gang's, or a single process's
    (GANG3, 2, {1: A}, "saved by a gang of 3, not 2"),
    (None, 2, {1: A}, "saved by a single process, not by a gang of 2"),
    (gang_meta(2, {1: A}), 1, {}, "saved by a gang of 2, not 1"),
    ({"parts": {}}, 2, {1: A}, "its gang record is malformed"),
    ("gang", 2, {1: A}, "its gang record is malformed"),
])
def test_a_checkpoint_loads_only_when_every_rank_committed_its_part(
        record: object, size: int, found: dict[int, PartDigest | None], problem: str | None) -> None:
    got = gang_problem(record, size, found)
    assert got == problem if problem is None else (got is not None and got.startswith(problem)), got


NODE1 = gang_meta(4, {3: A}, node=1, nodes=2)  # node 1 of 2: ranks 2 and 3, its leader 2


@pytest.mark.parametrize(("record", "found", "node", "problem"), [
    (NODE1, {3: A}, 1, None),
    (NODE1, {3: None}, 1, "rank 3's part is missing"),
    (NODE1, {3: A}, 0, "saved by node 1 of 2, not node 0 of 2"),  # another machine's checkpoint
    (gang_meta(4, {1: A, 2: A, 3: A}), {3: A}, 1, "saved by node 0 of 1, not node 1 of 2"),  # one machine's
])
def test_a_node_loads_only_its_own_checkpoints_with_its_own_ranks_parts(
        record: object, found: dict[int, PartDigest | None], node: int, problem: str | None) -> None:
    got = gang_problem(record, 4, found, ranks=[3] if node else [1], node=node, nodes=2)
    assert got == problem if problem is None else (got is not None and got.startswith(problem)), got


def test_the_gang_record_sits_under_extra_in_the_manifests_metadata() -> None:
    assert gang_record({"extra": {"gang": GANG3}}) == GANG3
    assert gang_record({"extra": {}}) is None
    assert gang_record({}) is None


# -- the parts on real files ------------------------------------------------------------------------------


def _committed(run_dir: Path, step: int, parts: dict[int, PartDigest], size: int) -> Any:
    store = CheckpointStore(LocalStorage(run_dir))
    store.save(step, {"model.safetensors": b"weights"}, {"extra": {"gang": gang_meta(size, parts)}})
    return store.verify(checkpoint_name(step))


def test_parts_are_written_durably_read_back_against_the_manifest_and_checked(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    parts = RankParts(storage, 3)
    d1, d2 = parts.write(5, 1, b"one"), parts.write(5, 2, b"two")
    assert (tmp_path / part_key(5, 1)).read_bytes() == b"one"
    assert digest_of(storage, 5, 2) == d2 and digest_of(storage, 5, 3) is None
    ckpt = _committed(tmp_path, 5, {1: d1, 2: d2}, 3)
    parts.check(ckpt)
    assert parts.read(ckpt, 2) == b"two"
    (tmp_path / part_key(5, 2)).write_bytes(b"TWO")  # rewritten since: not the part the manifest names
    with pytest.raises(CorruptCheckpoint, match="rank 2's part does not match the manifest"):
        parts.check(ckpt)
    with pytest.raises(CorruptCheckpoint, match="rank 2's part does not match the manifest"):
        parts.read(ckpt, 2)


def test_loading_falls_back_past_a_checkpoint_a_rank_did_not_commit(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    parts = RankParts(storage, 2)
    _committed(tmp_path, 4, {1: parts.write(4, 1, b"four")}, 2)
    _committed(tmp_path, 8, {1: PartDigest.of(b"eight")}, 2)  # its part never became durable
    assert CheckpointStore(storage).verify(checkpoint_name(8)).step == 8  # the store alone would load it
    warnings: list[str] = []
    ckpt = CheckpointStore(storage).load_latest(warn=warnings.append, check=parts.check)
    assert ckpt is not None and ckpt.step == 4
    assert len(warnings) == 1 and "rank 1's part is missing" in warnings[0]


def test_a_rank_prunes_only_its_own_parts_of_steps_gone_and_keeps_the_one_in_flight(tmp_path: Path) -> None:
    parts = RankParts(LocalStorage(tmp_path), 3)
    for step in (2, 4, 6, 8):
        for rank in (1, 2):
            parts.write(step, rank, b"x")
    parts.prune(1, committed=[4, 6])  # 8: in flight, newer than the newest committed
    left = sorted(p.relative_to(tmp_path / PARTS).as_posix() for p in (tmp_path / PARTS).rglob("*.safetensors"))
    assert left == ["step-000000002/rank-00002.safetensors", *(f"step-00000000{s}/rank-0000{r}.safetensors"
                                                              for s in (4, 6, 8) for r in (1, 2))]
    parts.prune(2, committed=[4, 6])
    assert not (tmp_path / PARTS / "step-000000002").exists()  # the last rank to prune it removed it


# -- the worker of a rank other than 0 ---------------------------------------------------------------------


def test_a_rank_worker_loads_the_chosen_checkpoint_and_its_own_part(tmp_path: Path) -> None:
    with RankWorker(tmp_path, Rank(1, 2), handle_signals=False) as w:
        d = w.save_part(3, b"my rngs")
        _committed(tmp_path, 3, {1: d}, 2)
        ckpt, part = w.load(3)
    assert ckpt.step == 3 and part == b"my rngs"


def test_a_rank_worker_turns_sigterm_into_a_request(tmp_path: Path) -> None:
    old = signal.getsignal(signal.SIGTERM)
    try:
        w = RankWorker(tmp_path, Rank(1, 2))
        assert not w.preemption_requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert w.preemption_requested
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize(("armed_rank", "fires"), [(1, True), (2, False), (None, False)])
def test_a_crash_aimed_at_a_rank_fires_in_that_rank_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         armed_rank: int | None, fires: bool) -> None:
    monkeypatch.setenv(ENV_CHAOS_ARM, json.dumps({"kind": "crash", "step": 4,
                                                  **({"rank": armed_rank} if armed_rank is not None else {})}))
    w = RankWorker(tmp_path, Rank(1, 3), handle_signals=False)
    w.step_done(3)
    if fires:
        with pytest.raises(SimulatedDeviceError, match="step 4 of rank 1"):
            w.step_done(4)
    w.step_done(5)  # once


def test_a_rank_worker_needs_the_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        RankWorker(tmp_path / "missing", Rank(1, 2), handle_signals=False)
    assert exc.value.code is ExitCode.BAD_CONFIG


class Paused(Exception):
    """What a test's ``sleep`` raises where a rank stopped by chaos would wait for its SIGKILL."""


def _never(seconds: float) -> None:
    raise Paused


def test_a_checkpoint_write_aimed_at_a_rank_leaves_half_its_part_says_so_and_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CHAOS_ARM, json.dumps({"kind": "checkpoint-write", "step": 6, "rank": 1}))
    monkeypatch.setenv("RUNNER_ATTEMPT", "3")
    w = RankWorker(tmp_path, Rank(1, 2), handle_signals=False, sleep=_never)
    w.save_part(4, b"before the armed step")  # written whole
    with pytest.raises(Paused):
        w.save_part(6, b"0123456789")
    assert (tmp_path / part_key(6, 1)).read_bytes() == b"01234"  # torn in place
    (event,) = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["event"] == PAUSED_EVENT and event["source"] == "worker"
    assert (event["attempt"], event["step"], event["rank"], event["part_bytes"], event["of_bytes"]) == (3, 6, 1, 5, 10)
    # No manifest can name the torn part; and a manifest that named the whole one would not take it.
    store = CheckpointStore(LocalStorage(tmp_path))
    assert store.committed() == []
    ckpt = _committed(tmp_path, 6, {1: PartDigest.of(b"0123456789")}, 2)
    with pytest.raises(CorruptCheckpoint, match="rank 1's part does not match"):
        RankParts(LocalStorage(tmp_path), 2).check(ckpt)


@pytest.mark.parametrize("armed_rank", [0, 2])
def test_a_checkpoint_write_aimed_at_another_rank_writes_this_ones_part_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, armed_rank: int) -> None:
    monkeypatch.setenv(ENV_CHAOS_ARM, json.dumps({"kind": "checkpoint-write", "step": 6, "rank": armed_rank}))
    w = RankWorker(tmp_path, Rank(1, 3), handle_signals=False, sleep=_never)
    assert w.save_part(6, b"0123456789") == PartDigest.of(b"0123456789")


@pytest.mark.parametrize(("steps", "problem"), [
    ([10, 10], None),
    ([-1, -1, -1], None),
    ([7], None),
    ([10, 5], "the ranks resumed from different checkpoints: rank 0 from step 10, rank 1 from step 5"),
    ([5, 5, 10], "rank 2 from step 10"),
    ([-1, 5], "rank 0 from no checkpoint, rank 1 from step 5"),
])
def test_the_ranks_must_resume_from_the_same_checkpoint(steps: list[int], problem: str | None) -> None:
    got = resumed_apart(steps)
    assert (got is None) if problem is None else (got is not None and problem in got)


def test_a_rank_that_does_not_take_rank_0s_choice_would_load_an_older_checkpoint(tmp_path: Path) -> None:
    """``--break-resume rank-step``: the step such a rank loads, which the ranks' check must refuse."""
    w = RankWorker(tmp_path, Rank(1, 2), handle_signals=False)
    for step in (3, 6, 9):
        _committed(tmp_path, step, {1: w.save_part(step, b"part")}, 2)
    assert [w.older(s) for s in (9, 6, 3)] == [6, 3, 3]
    assert resumed_apart([9, w.older(9)]) is not None
