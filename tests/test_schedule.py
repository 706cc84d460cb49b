"""Drawing chaos schedules: pure, seeded, spread out, on checkpoints where they must be; saved as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.faults import (
    CHECKPOINT_KINDS,
    DEFAULT_KINDS,
    NOTICE_CLOUDS,
    NOTICE_WINDOW_S,
    RANK_KINDS,
    Fault,
    FaultKind,
)
from chaos.schedule import (
    CORRUPT_FILES,
    MIN_GAP,
    Schedule,
    ScheduleError,
    checkpoint_steps,
    draw_schedule,
    fault_problem,
)

ALL = list(DEFAULT_KINDS)  # what a chaos run draws from unless told otherwise
PER_EPOCH = 15


def draw(seed: int = 0, n: int = 6, kinds=ALL, epochs: int = 5, every: int = 5) -> Schedule:
    total = PER_EPOCH * epochs
    return draw_schedule(seed, n, kinds, total, checkpoint_steps(total, PER_EPOCH, every))


def summary(s: Schedule) -> list[tuple[str, int, dict]]:
    return [(f.kind.value, f.step, dict(f.detail)) for f in s.faults]


# -- checkpoint_steps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "per_epoch", "every", "want"),
    [
        (30, 15, 5, [5, 10, 15, 20, 25, 30]),
        (30, 15, 0, [15, 30]),  # 0: epoch ends only
        (45, 15, 4, [4, 8, 12, 15, 16, 20, 24, 28, 30, 32, 36, 40, 44, 45]),
        (10, 4, 0, [4, 8]),  # a short last epoch is not a full one
        (10, 4, 3, [3, 4, 6, 8, 9]),
        (3, 15, 0, []),
        (0, 15, 5, []),
    ],
)
def test_checkpoint_steps(total: int, per_epoch: int, every: int, want: list[int]) -> None:
    assert checkpoint_steps(total, per_epoch, every) == want


# -- drawing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_the_same_seed_draws_the_same_schedule(seed: int) -> None:
    a, b = draw(seed), draw(seed)
    assert a == b
    assert a.seed == seed and a.total_steps == 75 and len(a.faults) == 6


@pytest.mark.parametrize("seed", range(10))
def test_a_gangs_schedule_aims_every_default_kind_at_a_rank_and_a_single_process_draws_as_before(seed: int) -> None:
    kinds = list(DEFAULT_KINDS)
    one = draw_schedule(seed, 6, kinds, 75, checkpoint_steps(75, 15, 5))
    assert draw_schedule(seed, 6, kinds, 75, checkpoint_steps(75, 15, 5), ranks=1) == one  # as it always drew
    assert not any("rank" in f.detail for f in one.faults)
    gang = draw_schedule(seed, 6, kinds, 75, checkpoint_steps(75, 15, 5), ranks=3)
    assert set(DEFAULT_KINDS) <= RANK_KINDS
    for f in gang.faults:
        assert f.detail["rank"] in range(3) and fault_problem(f) is None
        if f.kind is not FaultKind.CORRUPT_CHECKPOINT:
            assert f.detail.keys() == {"rank"}
        elif f.detail["rank"] == 0:  # one of rank 0's files
            assert f.detail.keys() == {"mode", "file", "position", "rank"} and f.detail["file"] in CORRUPT_FILES
        else:  # rank R's part: no file to name
            assert f.detail.keys() == {"mode", "position", "rank"}


def test_a_gangs_corrupt_checkpoints_damage_rank_0s_files_and_the_other_ranks_parts() -> None:
    targets = {(f.detail["rank"], f.detail.get("file")) for seed in range(40)
               for f in draw_schedule(seed, 3, [FaultKind.CORRUPT_CHECKPOINT], 75, checkpoint_steps(75, 15, 5),
                                      ranks=2).faults}
    assert targets == {(0, name) for name in CORRUPT_FILES} | {(1, None)}


def test_different_seeds_draw_different_schedules() -> None:
    assert summary(draw(0)) != summary(draw(1))
    schedules = {json.dumps(draw(seed).to_json()["faults"]) for seed in range(20)}
    assert len(schedules) >= 15, "twenty seeds should give (nearly) twenty schedules"


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(("n", "epochs"), [(6, 3), (6, 4), (6, 5), (8, 5), (10, 6)])
def test_every_kind_appears_when_there_are_enough_faults(seed: int, n: int, epochs: int) -> None:
    s = draw(seed, n, epochs=epochs)
    assert len(s.faults) == n
    assert {f.kind for f in s.faults} == set(ALL)


@pytest.mark.parametrize("seed", range(10))
def test_fewer_faults_than_kinds_draw_only_from_the_kinds_given(seed: int) -> None:
    kinds = [FaultKind.SIGKILL, FaultKind.HANG, FaultKind.CRASH]
    s = draw(seed, 2, kinds)
    assert len(s.faults) == 2
    assert {f.kind for f in s.faults} <= set(kinds)
    assert len({f.kind for f in s.faults}) == 2  # distinct: n < len(kinds) takes kinds without repeats


def assert_well_placed(s: Schedule, total: int, ckpts: list[int]) -> None:
    steps = [f.step for f in s.faults]
    assert all(b - a >= MIN_GAP for a, b in zip(steps, steps[1:])), steps  # strictly increasing, too
    # The first and the last steps are left alone, so every fault hits a run that has work left.
    assert all(2 <= st < total - 1 for st in steps), steps
    for f in s.faults:
        if f.kind in CHECKPOINT_KINDS:
            assert f.step in ckpts, f"{f.kind.value} at {f.step} is not on a checkpoint step {ckpts}"


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("n", "epochs", "every"), [(6, 3, 5), (6, 5, 5), (3, 2, 5), (1, 2, 5), (2, 3, 0),
                                                    (10, 6, 4)])
def test_targets_increase_at_least_min_gap_apart_inside_the_run(seed: int, n: int, epochs: int, every: int) -> None:
    total = PER_EPOCH * epochs
    ckpts = checkpoint_steps(total, PER_EPOCH, every)
    s = draw_schedule(seed, n, ALL, total, ckpts)
    assert len(s.faults) == n
    assert_well_placed(s, total, ckpts)


@pytest.mark.parametrize("every", [0, 3, 5, 7])
@pytest.mark.parametrize("epochs", [1, 2, 3, 4])
def test_a_tight_job_gets_a_well_placed_schedule_or_a_schedule_error(epochs: int, every: int) -> None:
    """Never a schedule that breaks the rules: drawing refuses (ScheduleError) instead."""
    total = PER_EPOCH * epochs
    ckpts = checkpoint_steps(total, PER_EPOCH, every)
    for seed in range(15):
        for n in range(1, 12):
            try:
                s = draw_schedule(seed, n, ALL, total, ckpts)
            except ScheduleError as exc:
                assert "cannot fit" in str(exc)
                continue
            assert len(s.faults) == n
            assert_well_placed(s, total, ckpts)


@pytest.mark.parametrize("seed", range(10))
def test_corrupt_checkpoint_faults_say_how_to_corrupt(seed: int) -> None:
    s = draw(seed, 12, [FaultKind.CORRUPT_CHECKPOINT, FaultKind.SIGKILL], epochs=10)
    corrupt = [f for f in s.faults if f.kind is FaultKind.CORRUPT_CHECKPOINT]
    assert corrupt
    for f in corrupt:
        assert f.detail["mode"] in ("truncate", "flip-byte")
        assert f.detail["file"] in CORRUPT_FILES
        assert 0.0 <= f.detail["position"] <= 1.0
    assert all(not f.detail for f in s.faults if f.kind is not FaultKind.CORRUPT_CHECKPOINT)


def test_notice_faults_name_a_cloud_drawn_from_the_seed() -> None:
    clouds = []
    for seed in range(10):
        s = draw(seed, 8, [*ALL, FaultKind.NOTICE], epochs=6)
        assert {f.kind for f in s.faults} == {*ALL, FaultKind.NOTICE}
        for f in s.faults:
            if f.kind is FaultKind.NOTICE:
                assert f.detail["window_s"] == NOTICE_WINDOW_S
                clouds.append(f.detail["cloud"])
        assert s == draw(seed, 8, [*ALL, FaultKind.NOTICE], epochs=6)
    assert set(clouds) == set(NOTICE_CLOUDS)


def test_a_schedule_without_notices_draws_as_before() -> None:
    # the notice's cloud is drawn only for a notice fault: the other kinds' schedules did not move
    assert summary(draw(0))[:2] == [("crash", 10, {}), ("corrupt-checkpoint", 15, {
        "mode": "flip-byte", "file": "model.safetensors", "position": 0.755804})]  # as before notices existed


@pytest.mark.parametrize("seed", range(10))
def test_store_outages_say_how_and_for_how_long(seed: int) -> None:
    s = draw(seed, 8, [FaultKind.STORE_OUTAGE, FaultKind.INSTANCE_LOSS], epochs=6)
    outages = [f for f in s.faults if f.kind is FaultKind.STORE_OUTAGE]
    assert outages and all(f.detail["mode"] in ("refuse", "hang") and 1.0 <= f.detail["seconds"] <= 3.0
                           for f in outages)
    assert all(not f.detail for f in s.faults if f.kind is FaultKind.INSTANCE_LOSS)
    assert [fault_problem(f) for f in s.faults] == [None] * 8


def test_a_single_kind_fills_every_slot() -> None:
    s = draw(3, 5, [FaultKind.SIGTERM])
    assert [f.kind for f in s.faults] == [FaultKind.SIGTERM] * 5


def test_no_faults_is_an_empty_schedule() -> None:
    s = draw(0, 0)
    assert s.faults == ()
    assert draw_schedule(0, 0, [], 75, []).faults == ()


@pytest.mark.parametrize(
    ("n", "kinds", "total", "every", "match"),
    [
        (20, ALL, 45, 5, "cannot fit 20 faults into 45 steps"),
        (6, ALL, 15, 5, "cannot fit 6 faults"),
        (2, [FaultKind.SIGKILL], 6, 0, "cannot fit 2 faults"),
        # a checkpoint fault with no checkpoint to land on
        (1, [FaultKind.CHECKPOINT_WRITE], 45, 0, "cannot fit 1 faults"),
        (-1, ALL, 45, 5, "0 or more"),
        (1, [], 45, 5, "no fault kinds"),
    ],
)
def test_schedule_error_when_the_faults_do_not_fit(n, kinds, total, every, match) -> None:
    ckpts = checkpoint_steps(total, PER_EPOCH, every) if every else []
    with pytest.raises(ScheduleError, match=match):
        draw_schedule(0, n, kinds, total, ckpts)


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


# -- JSON ----------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    s = draw(5, 8, epochs=6)
    path = tmp_path / "chaos-schedule.json"
    s.save(path)
    assert Schedule.load(path) == s
    d = json.loads(path.read_text())
    assert d["format"] == 1 and d["seed"] == 5 and d["total_steps"] == 90
    assert [f["kind"] for f in d["faults"]] == [f.kind.value for f in s.faults]
    # Saving what was loaded gives the same bytes: a replayed run's schedule file equals the original.
    again = tmp_path / "again.json"
    Schedule.load(path).save(again)
    assert again.read_text() == path.read_text()


def test_a_replayed_schedule_without_a_seed_round_trips(tmp_path: Path) -> None:
    s = Schedule(None, 30, (Fault(FaultKind.HANG, 7), Fault(FaultKind.CORRUPT_CHECKPOINT, 15,
                                                           {"mode": "truncate", "file": "model.safetensors",
                                                            "position": 0.25})))
    s.save(tmp_path / "s.json")
    assert Schedule.load(tmp_path / "s.json") == s


def test_fault_json_round_trip() -> None:
    f = Fault(FaultKind.CHECKPOINT_WRITE, 10)
    assert f.to_json() == {"kind": "checkpoint-write", "step": 10, "detail": {}}
    assert Fault.from_json(f.to_json()) == f
    assert Fault.from_json({"kind": "crash", "step": "12"}) == Fault(FaultKind.CRASH, 12)


def test_load_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="no such file"):
        Schedule.load(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        '{"seed": 0, "faults": []}',  # no total_steps
        '{"seed": 0, "total_steps": 30}',  # no faults
        '{"total_steps": 30, "faults": [{"kind": "meteor", "step": 3}]}',
        '{"total_steps": 30, "faults": [{"kind": "sigkill"}]}',
        '{"total_steps": 30, "faults": [{"kind": "sigkill", "step": "three"}]}',
        '{"total_steps": 30, "faults": [7]}',
        '{"total_steps": 30, "faults": [{"kind": "sigkill", "step": 3, "detail": "x"}]}',
        '{"total_steps": "many", "faults": []}',
        "[]",
        "null",
        '"a string"',
        "42",
    ],
    ids=lambda t: t[:30] or "empty",
)
def test_load_a_garbled_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "chaos-schedule.json"
    path.write_text(text)
    with pytest.raises(ScheduleError, match="not a valid schedule"):
        Schedule.load(path)


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="cannot read it"):
        Schedule.load(tmp_path)


# -- a loaded schedule is checked before anything runs ---------------------------------------------------------


def corrupt(**detail: object) -> dict:
    return {"kind": "corrupt-checkpoint", "step": 10,
            "detail": {"mode": "flip-byte", "file": "model.safetensors", "position": 0.5, **detail}}


def outage(**detail: object) -> dict:
    return {"kind": "store-outage", "step": 10, "detail": {"mode": "refuse", "seconds": 2.0, **detail}}


BAD_FAULTS = [
    pytest.param(corrupt(file="/tmp/x/victim.txt"), "its file '/tmp/x/victim.txt' is an absolute path", id="absolute"),
    pytest.param(corrupt(file="../../../x"), "its file '../../../x' climbs out of its directory", id="dotdot"),
    pytest.param(corrupt(file="a/../../b"), "climbs out of its directory", id="a-dotdot-dotdot"),
    pytest.param(corrupt(file=""), "its file '' is an empty file name", id="empty"),
    pytest.param(corrupt(file="a\u0000b"), "contains a NUL byte", id="nul"),
    pytest.param(corrupt(file=5), "its file 5 is not a file name", id="a-number"),
    pytest.param(corrupt(file=None), "its file None is not a file name", id="null"),
    pytest.param(corrupt(mode="shred"), "its mode 'shred' is not one of truncate, flip-byte", id="mode"),
    pytest.param(corrupt(position=1.5), "its position 1.5 is not a number from 0 to 1", id="position-too-big"),
    pytest.param(corrupt(position=-0.1), "is not a number from 0 to 1", id="position-negative"),
    pytest.param(corrupt(position="half"), "its position 'half' is not a number", id="position-a-string"),
    pytest.param(corrupt(position=True), "its position True is not a number", id="position-a-bool"),
    pytest.param(outage(mode="flood"), "its mode 'flood' is not one of refuse, hang", id="outage-mode"),
    pytest.param(outage(seconds=0), "its seconds 0 is not a number above 0 and at most 600", id="outage-zero"),
    pytest.param(outage(seconds=601), "its seconds 601 is not a number above 0", id="outage-too-long"),
    pytest.param(outage(seconds="long"), "its seconds 'long' is not a number", id="outage-a-string"),
    pytest.param(outage(seconds=True), "its seconds True is not a number", id="outage-a-bool"),
    pytest.param({"kind": "sigkill", "step": -3}, "its step is negative", id="negative-step"),
    pytest.param({"kind": "notice", "step": 3, "detail": {"cloud": "ibm"}},
                 "its cloud 'ibm' is not one of aws, gcp, azure", id="notice-unknown-cloud"),
    pytest.param({"kind": "notice", "step": 3}, "its cloud None is not one of", id="notice-no-cloud"),
    pytest.param({"kind": "notice", "step": 3, "detail": {"cloud": "aws", "window_s": 0}},
                 "its window_s 0 is not a number of seconds in (0, 600]", id="notice-no-window"),
    pytest.param({"kind": "notice", "step": 3, "detail": {"cloud": "aws", "window_s": "5"}},
                 "its window_s '5' is not a number", id="notice-window-a-string"),
    pytest.param({"kind": "sigkill", "step": 3, "detail": {"rank": -1}}, "its rank -1 is not a rank",
                 id="rank-negative"),
    pytest.param({"kind": "crash", "step": 3, "detail": {"rank": "1"}}, "its rank '1' is not a rank",
                 id="rank-a-string"),
    pytest.param({"kind": "sigterm", "step": 3, "detail": {"rank": True}}, "its rank True is not a rank",
                 id="rank-a-bool"),
    pytest.param({"kind": "sigkill", "step": 3, "detail": [1, 2]}, "is not an object with an object 'detail'",
                 id="detail-a-list"),
]


@pytest.mark.parametrize(("fault", "problem"), BAD_FAULTS)
def test_a_schedule_with_a_bad_fault_is_refused_with_one_line(tmp_path: Path, fault: dict, problem: str) -> None:
    path = tmp_path / "s.json"
    ok = {"kind": "hang", "step": 4, "detail": {}}
    path.write_text(json.dumps({"seed": None, "total_steps": 30, "faults": [ok, fault]}))
    with pytest.raises(ScheduleError) as exc:
        Schedule.load(path)
    msg = str(exc.value)
    assert msg.startswith(f"chaos schedule {path}: not a valid schedule: fault 2 ") and "\n" not in msg
    assert problem in msg, msg


@pytest.mark.parametrize("file", [*CORRUPT_FILES, "optimizer.safetensors", "sub/file.bin", "./model.safetensors"])
def test_any_file_inside_the_checkpoint_may_be_corrupted(tmp_path: Path, file: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"seed": 1, "total_steps": 30, "faults": [corrupt(file=file)]}))
    assert Schedule.load(path).faults[0].detail["file"] == file


@pytest.mark.parametrize("seed", range(20))
def test_every_drawn_schedule_checks_out(seed: int) -> None:
    assert [fault_problem(f) for f in draw(seed, 8, epochs=6).faults] == [None] * 8
    assert [fault_problem(f) for f in draw(seed, 8, list(FaultKind), epochs=6).faults] == [None] * 8


def test_a_check_that_let_every_fault_through_would_be_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import chaos.schedule as schedule_mod

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"seed": 1, "total_steps": 30, "faults": [corrupt(file="/tmp/x/victim.txt")]}))
    monkeypatch.setattr(schedule_mod, "fault_problem", lambda f: None)
    assert Schedule.load(path).faults[0].detail["file"] == "/tmp/x/victim.txt"  # what the table above refuses
