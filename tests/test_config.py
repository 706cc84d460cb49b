"""model/config.py: what makes two runs comparable (the identity leaves out how the job checkpoints),
and how many steps an epoch has."""

from __future__ import annotations

import dataclasses

import pytest

from model.config import AUTO, TrainConfig, steps_per_epoch

CADENCE = {"checkpoint_every_steps": AUTO, "break_resume": "data-rng", "sync_checkpoints": True, "mtbf_s": 60.0,
           "durable_every_s": 0.0}


def test_the_identity_is_every_field_but_the_checkpoint_cadence() -> None:
    cfg = TrainConfig()
    assert cfg.identity() == {"epochs": 5, "seed": 0, "batch_size": 100, "lr": 0.01, "end_lr": 0.001}
    rng_draws = {"dropout", "jitter"}  # named only when used, so that older run directories still match
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(cfg.identity()) | set(CADENCE) | rng_draws
    assert TrainConfig(dropout=0.25, jitter=0.05).identity() == {**cfg.identity(), "dropout": 0.25, "jitter": 0.05}


@pytest.mark.parametrize(("field", "value"), list(CADENCE.items()))
def test_the_cadence_does_not_change_the_identity(field: str, value: object) -> None:
    assert TrainConfig(**{field: value}).identity() == TrainConfig().identity()  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), [("epochs", 6), ("seed", 1), ("batch_size", 50), ("lr", 0.02),
                                              ("end_lr", 0.0)])
def test_what_changes_the_trace_changes_the_identity(field: str, value: object) -> None:
    assert TrainConfig(**{field: value}).identity() != TrainConfig().identity()  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "batch", "want"), [(1500, 100, 15), (1501, 100, 16), (1, 100, 1), (100, 100, 1),
                                                  (0, 100, 0), (60000, 64, 938)])
def test_steps_per_epoch_counts_a_short_last_batch(n: int, batch: int, want: int) -> None:
    assert steps_per_epoch(n, batch) == want
