"""runner/adapter.py: the JobAdapter protocol, and the built-in job (model.job.BUILTIN) that keeps it:
the same methods, with the same parameters."""

from __future__ import annotations

import inspect

import pytest

from model.job import BUILTIN
from runner.adapter import JobAdapter

METHODS = [name for name, v in vars(JobAdapter).items() if inspect.isfunction(v) and not name.startswith("_")]


def test_the_protocol_names_what_the_front_door_uses() -> None:
    assert sorted(METHODS) == ["add_arguments", "argv", "cache_key", "command", "env", "identity", "prepared",
                               "total_steps"]
    assert "preload" in JobAdapter.__annotations__


@pytest.mark.parametrize("name", METHODS)
def test_the_built_in_job_keeps_the_protocol(name: str) -> None:
    want = inspect.signature(getattr(JobAdapter, name))
    got = inspect.signature(getattr(type(BUILTIN), name))
    assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == [
        (p.name, p.kind, p.default) for p in want.parameters.values()]


def test_the_built_in_job_preloads_its_training_module() -> None:
    assert BUILTIN.preload == ("model.train",)
    assert all(part.isidentifier() for m in BUILTIN.preload for part in m.split("."))
