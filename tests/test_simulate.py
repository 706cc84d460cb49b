"""chaos/simulate.py: the options every chaos command shares (the fault kinds, the simulation's own
defaults) and what ``--simulate-preemption`` refuses before it runs anything. Real runs:
tests/e2e/test_simulate.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from chaos.faults import DEFAULT_KINDS, FaultKind, gang_refusal
from chaos.simulate import SIMULATION_DEFAULTS, chaos_parser, chosen_kinds, simulate_main
from model.job import BUILTIN
from rundir.exitcodes import ExitCode, UserError


def parse(*argv: str) -> argparse.Namespace:
    return chaos_parser(BUILTIN, "p", "d").parse_args(list(argv))


@pytest.mark.parametrize(("argv", "want"), [
    ((), list(DEFAULT_KINDS)),  # disk-full is opt-in: it needs root and a mount
    (("--fault-kinds", "disk-full"), [FaultKind.DISK_FULL]),
    (("--fault-kinds", "hang"), [FaultKind.HANG]),
    (("--fault-kinds", "sigkill,hang"), [FaultKind.SIGKILL, FaultKind.HANG]),
    (("--fault-kinds", "crash", "sigkill, crash"), [FaultKind.CRASH, FaultKind.SIGKILL]),  # each once, in order
    (("--fault-kinds", "sigterm,,corrupt-checkpoint,"), [FaultKind.SIGTERM, FaultKind.CORRUPT_CHECKPOINT]),
])
def test_chosen_kinds(argv: tuple[str, ...], want: list[FaultKind]) -> None:
    assert chosen_kinds(parse(*argv)) == want


@pytest.mark.parametrize(("argv", "want"), [
    (("--store", "file:///s"), [*DEFAULT_KINDS, FaultKind.INSTANCE_LOSS, FaultKind.STORE_OUTAGE]),
    (("--store", "file:///s", "--nproc-per-node", "2"), [*DEFAULT_KINDS, FaultKind.STORE_OUTAGE]),
    (("--nproc-per-node", "2"), list(DEFAULT_KINDS)),  # every default kind is for a gang
])
def test_a_gangs_default_kinds_leave_out_what_it_does_not_take(argv: tuple[str, ...], want: list[FaultKind]) -> None:
    assert chosen_kinds(parse(*argv)) == want


@pytest.mark.parametrize(("kinds", "ranks", "refused"), [
    ([FaultKind.INSTANCE_LOSS], 2, True),
    ([FaultKind.SIGKILL, FaultKind.INSTANCE_LOSS], 4, True),
    ([FaultKind.INSTANCE_LOSS], 1, False),  # a single process takes every kind
    ([*DEFAULT_KINDS, FaultKind.STORE_OUTAGE, FaultKind.NOTICE, FaultKind.DISK_FULL], 2, False),
])
def test_gang_refusal(kinds: list[FaultKind], ranks: int, refused: bool) -> None:
    problem = gang_refusal(kinds, ranks)
    assert (problem is not None) is refused
    if refused:
        assert problem is not None and "instance-loss is not for a gang of ranks" in problem


def test_instance_loss_for_a_gang_is_exit_78_before_the_reference_runs(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chaos.simulate.ensure_reference", lambda *a, **k: pytest.fail("the reference ran"))
    with pytest.raises(UserError) as exc:
        simulate_main(["--nproc-per-node", "2", "--fault-kinds", "instance-loss", "--run-dir", str(tmp_path / "r")],
                      BUILTIN)
    assert exc.value.code is ExitCode.BAD_CONFIG and "parts" in str(exc.value)


@pytest.mark.parametrize(("value", "named"), [("meteor", "'meteor'"), ("sigkill,meteor", "'meteor'"), (",", "','")])
def test_an_unknown_kind_exits_2_naming_it_and_the_choices(value: str, named: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--fault-kinds", value)
    assert exc.value.code == ExitCode.USAGE
    kinds = ", ".join(k.value for k in FaultKind)
    assert f"unknown fault kind {named}; choose from {kinds}" in capsys.readouterr().err


def test_the_simulations_defaults_replace_the_supervisors_and_a_flag_wins() -> None:
    ns = parse()
    assert {k: getattr(ns, k) for k in SIMULATION_DEFAULTS} == SIMULATION_DEFAULTS
    assert (ns.chaos_seed, ns.reference_cache) == (0, Path("runs/references"))
    assert parse("--hang-timeout", "9", "--checkpoint-every-steps", "3").hang_timeout == 9.0


def test_negative_faults_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        simulate_main(["--faults", "-1"], BUILTIN)
    assert exc.value.code == 2 and "--faults must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "not json", '{"format": 1, "seed": 0, "total_steps": 75, "faults": '
                                                       '[{"kind": "meteor", "step": 3}]}'])
def test_a_bad_replay_is_exit_78_before_the_reference_runs(tmp_path: Path, content: str | None) -> None:
    schedule = tmp_path / "schedule.json"
    if content is not None:
        schedule.write_text(content)
    refs = tmp_path / "refs"
    with pytest.raises(UserError) as exc:
        simulate_main(["--chaos-replay", str(schedule), "--reference-cache", str(refs),
                       "--run-dir", str(tmp_path / "run")], BUILTIN)
    assert exc.value.code == ExitCode.BAD_CONFIG == 78
    assert not refs.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("nproc", "refused"), [(2, True), (3, False)])
def test_a_replay_aimed_at_a_rank_the_gang_lacks_is_exit_78(nproc: int, refused: bool) -> None:
    from chaos.faults import Fault
    from chaos.schedule import Schedule
    from chaos.simulate import _schedule

    replay = Schedule(None, 30, (Fault(FaultKind.SIGKILL, 5, {"rank": 2}),))
    ns = parse("--nproc-per-node", str(nproc))
    ns.chaos_replay = Path("s.json")
    if not refused:
        assert _schedule(ns, replay, 30, 15) == replay
        return
    with pytest.raises(UserError) as exc:
        _schedule(ns, replay, 30, 15)
    assert exc.value.code == ExitCode.BAD_CONFIG and "aims at rank 2; this gang has 2" in str(exc.value)
