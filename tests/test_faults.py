"""chaos/faults.py: the fault kinds, their JSON (what ``chaos-schedule.json`` holds), and the two sets
that say how a kind hits; every kind is described where a person looks for it."""

from __future__ import annotations

import re
from typing import Any

import pytest

import chaos.faults
from chaos.faults import ARMED_KINDS, CHECKPOINT_KINDS, Fault, FaultKind
from rundir.contract import ARM_CHECKPOINT_WRITE, ARM_CRASH
from tests.helpers import REPO

DETAIL = {"mode": "flip-byte", "file": "model.safetensors", "position": 0.5}


@pytest.mark.parametrize("fault", [Fault(k, 3 * i) for i, k in enumerate(FaultKind)]
                         + [Fault(FaultKind.CORRUPT_CHECKPOINT, 15, DETAIL)], ids=str)
def test_a_fault_round_trips_through_json(fault: Fault) -> None:
    d = fault.to_json()
    assert d == {"kind": fault.kind.value, "step": fault.step, "detail": dict(fault.detail)}
    assert Fault.from_json(d) == fault


@pytest.mark.parametrize(("d", "want"), [
    ({"kind": "hang", "step": 4}, Fault(FaultKind.HANG, 4)),  # no detail
    ({"kind": "sigkill", "step": "9", "detail": {}}, Fault(FaultKind.SIGKILL, 9)),
])
def test_from_json_fills_in_and_converts(d: dict[str, Any], want: Fault) -> None:
    assert Fault.from_json(d) == want


@pytest.mark.parametrize(("d", "error"), [
    ({"kind": "meteor", "step": 1}, ValueError),
    ({"kind": "hang"}, KeyError),
    ({"kind": "hang", "step": "soon"}, ValueError),
])
def test_from_json_refuses_what_is_not_a_fault(d: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Fault.from_json(d)


def test_the_armed_kinds_are_the_ones_the_worker_can_be_armed_for() -> None:
    assert {k.value for k in ARMED_KINDS} == {ARM_CRASH, ARM_CHECKPOINT_WRITE}
    assert set(CHECKPOINT_KINDS) == {FaultKind.CHECKPOINT_WRITE, FaultKind.CORRUPT_CHECKPOINT}


@pytest.mark.parametrize("where", ["module docstring", "docs/design.md"])
def test_every_kind_is_described(where: str) -> None:
    text = (chaos.faults.__doc__ or "") if where == "module docstring" else (REPO / where).read_text()
    rows = set(re.findall(r"^\|? ?`?([a-z-]+)`? +\|? ", text, flags=re.M))
    assert [k.value for k in FaultKind if k.value not in rows] == []
