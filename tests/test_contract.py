"""rundir/contract.py: what chaos arms inside a worker travels through its environment and back, and
fires at the first point of its kind at or after its step; the values chaos and the supervisor pass
are frozen."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rundir.contract import (
    ARM_CHECKPOINT_WRITE,
    ARM_CRASH,
    ENV_CHAOS_ARM,
    Arm,
    FileEffect,
    Observation,
    SendSignal,
)


@pytest.mark.parametrize("arm", [Arm(ARM_CRASH, 0), Arm(ARM_CRASH, 17), Arm(ARM_CHECKPOINT_WRITE, 40)])
def test_an_arm_round_trips_through_the_environment(arm: Arm) -> None:
    env = arm.to_env()
    assert list(env) == [ENV_CHAOS_ARM]
    assert json.loads(env[ENV_CHAOS_ARM]) == {"kind": arm.kind, "step": arm.step}
    assert Arm.from_env({"PATH": "/bin", **env}) == arm


@pytest.mark.parametrize("env", [{}, {ENV_CHAOS_ARM: ""}, {"OTHER": "x"}])
def test_no_arm_in_the_environment_is_none(env: dict[str, str]) -> None:
    assert Arm.from_env(env) is None


def test_an_arm_written_by_hand_is_read_with_its_types() -> None:
    assert Arm.from_env({ENV_CHAOS_ARM: '{"kind": "crash", "step": "12"}'}) == Arm("crash", 12)


@pytest.mark.parametrize(("env_rank", "rank", "armed"), [
    (None, 0, True),  # a single process's arm: rank 0, the only one
    (None, 1, False),
    (1, 1, True),
    (1, 0, False),  # aimed at another rank of the gang
    (0, 0, True),
])
def test_an_arm_aimed_at_a_rank_is_armed_in_that_rank_alone(env_rank: int | None, rank: int, armed: bool) -> None:
    env = Arm(ARM_CRASH, 7, env_rank).to_env()
    assert ("rank" in json.loads(env[ENV_CHAOS_ARM])) is (env_rank is not None)  # unchanged for one process
    assert Arm.from_env(env, rank) == (Arm(ARM_CRASH, 7, env_rank) if armed else None)


@pytest.mark.parametrize(("arm", "kind", "step", "fires"), [
    (Arm(ARM_CRASH, 10), ARM_CRASH, 9, False),
    (Arm(ARM_CRASH, 10), ARM_CRASH, 10, True),
    (Arm(ARM_CRASH, 10), ARM_CRASH, 11, True),  # the first point at or after its step (a skipped step)
    (Arm(ARM_CRASH, 10), ARM_CHECKPOINT_WRITE, 10, False),  # another kind's point
    (Arm(ARM_CHECKPOINT_WRITE, 0), ARM_CHECKPOINT_WRITE, 0, True),
    (Arm(ARM_CHECKPOINT_WRITE, 5), ARM_CRASH, 50, False),
])
def test_fires(arm: Arm, kind: str, step: int, fires: bool) -> None:
    assert arm.fires(kind, step) is fires


@pytest.mark.parametrize("value", [
    Arm(ARM_CRASH, 1),
    SendSignal(9),
    FileEffect(lambda: "done"),
    Observation(attempt=1, pid=2, new_steps=[], new_events=[], last_step=None, phase=None),
])
def test_the_contracts_values_are_frozen(value: object) -> None:
    field = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)
