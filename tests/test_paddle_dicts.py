"""Paddle state dicts to arrays and back: a model, an Adam optimizer and its LR scheduler put into
fresh ones equal the originals, the arrays are copies, and what does not fit is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from checkpoint.paddle_dicts import (
    SCHEDULER_KEY,
    load_model,
    load_optimizer,
    model_arrays,
    optimizer_arrays,
    scheduler_state,
)


@pytest.fixture(scope="module")
def paddle() -> Any:
    return pytest.importorskip("paddle")


def trained(paddle: Any, seed: int, steps: int) -> tuple[Any, Any]:
    """A model and its optimizer after ``steps`` steps; the tensors' names are the same each time, as
    in a new process (the optimizer's state is keyed by them)."""
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        model = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.BatchNorm1D(3))
        sched = paddle.optimizer.lr.StepDecay(learning_rate=0.1, step_size=2)
        opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
        for _ in range(steps):
            model(paddle.randn([5, 4])).sum().backward()
            opt.step()
            opt.clear_grad()
            sched.step()
    return model, opt


def test_arrays_put_into_a_fresh_model_and_optimizer_equal_the_originals(paddle: Any) -> None:
    model, opt = trained(paddle, 0, 3)
    m, (o, s) = model_arrays(model), optimizer_arrays(opt)
    assert s == scheduler_state(opt) and s["last_epoch"] == 3 and SCHEDULER_KEY not in o
    fresh_model, fresh_opt = trained(paddle, 1, 1)
    load_model(fresh_model, m)
    load_optimizer(fresh_opt, o, s)
    assert {k: v.tolist() for k, v in model_arrays(fresh_model).items()} == {k: v.tolist() for k, v in m.items()}
    o2, s2 = optimizer_arrays(fresh_opt)
    assert sorted(o2) == sorted(o) and all(np.array_equal(o2[k], o[k]) for k in o) and s2 == s


def test_the_arrays_are_copies(paddle: Any) -> None:
    model, _ = trained(paddle, 0, 1)
    m = model_arrays(model)
    k = next(iter(m))
    m[k][...] = 7
    assert not np.array_equal(model_arrays(model)[k], m[k])


def test_none_leaves_that_part_of_the_optimizer_as_it_is(paddle: Any) -> None:
    model, opt = trained(paddle, 0, 3)
    before, _ = optimizer_arrays(opt)
    load_optimizer(opt, None, {"last_epoch": 10, "last_lr": 0.5})
    after, sched = optimizer_arrays(opt)
    assert sched["last_epoch"] == 10 and all(np.array_equal(before[k], after[k]) for k in before)


def test_what_does_not_fit_is_refused(paddle: Any) -> None:
    model, opt = trained(paddle, 0, 1)
    m = model_arrays(model)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_model(model, {k: v for k, v in m.items() if k != next(iter(m))})
    plain = paddle.optimizer.Adam(learning_rate=0.1, parameters=model.parameters())
    assert scheduler_state(plain) == {}
    with pytest.raises(TypeError, match="no LR scheduler"):
        load_optimizer(plain, None, {})

    class Odd:
        def state_dict(self) -> dict[str, Any]:
            return {"moment": [1, 2]}

    with pytest.raises(TypeError, match="unexpected optimizer state entry 'moment'"):
        optimizer_arrays(Odd())  # type: ignore[arg-type]
