"""Paddle state dicts to plain NumPy arrays and JSON, and back: what a checkpoint holds of a model, an
Adam optimizer and its LR scheduler, and the ``.pdparams``/``.pdopt`` files Paddle itself reads.

These copy every tensor; :class:`checkpoint.paddle_state.LiveArrays` is the zero-copy way for a
checkpoint taken every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from .state import TrainState

__all__ = ["SCHEDULER_KEY", "export_paddle", "load_model", "load_optimizer", "model_arrays", "optimizer_arrays",
           "scheduler_state"]

#: Where ``optimizer.state_dict()`` keeps the LR scheduler's state, beside the tensors.
SCHEDULER_KEY = "LR_Scheduler"


def _copy(t: paddle.Tensor) -> np.ndarray:
    # Tensor.numpy() copies on the CPU, so these arrays stay as they are while training goes on
    # (tests/test_worker_async.py checks it).
    return t.numpy()


def model_arrays(
    model: paddle.nn.Layer, to_array: Callable[[paddle.Tensor], np.ndarray] = _copy
) -> dict[str, np.ndarray]:
    """The model's state dict (parameters and persistable buffers) as arrays, copied by default."""
    return {k: to_array(v) for k, v in model.state_dict().items()}


def optimizer_arrays(
    optimizer: paddle.optimizer.Optimizer, to_array: Callable[[paddle.Tensor], np.ndarray] = _copy
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Adam's moments and beta powers as arrays, and the LR scheduler's state apart from them."""
    arrays: dict[str, np.ndarray] = {}
    scheduler: dict[str, Any] = {}
    for k, v in optimizer.state_dict().items():
        if k == SCHEDULER_KEY:
            scheduler = dict(v)
        elif isinstance(v, paddle.Tensor):
            arrays[k] = to_array(v)
        else:
            raise TypeError(f"unexpected optimizer state entry {k!r} of type {type(v).__name__}")
    return arrays, scheduler


def scheduler_state(optimizer: paddle.optimizer.Optimizer) -> dict[str, Any]:
    """The LR scheduler's state alone ({} for a constant learning rate)."""
    lr = optimizer._learning_rate
    return dict(lr.state_dict()) if isinstance(lr, paddle.optimizer.lr.LRScheduler) else {}


def load_model(model: paddle.nn.Layer, arrays: Mapping[str, np.ndarray]) -> None:
    """Set the model's state from ``arrays``; raises unless they fit it exactly (the same names and
    shapes). Each tensor is set from its array in place, one at a time: no copy of the whole state is
    made on the way, as converting them all to tensors first would."""
    own = model.state_dict()
    missing = [k for k in own if k not in arrays]
    unexpected = [k for k in arrays if k not in own]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
    for k, t in own.items():
        if list(arrays[k].shape) != list(t.shape):
            raise ValueError(f"checkpoint does not fit the model: {k} has shape {list(arrays[k].shape)}, "
                             f"the model's is {list(t.shape)}")
    for k, t in own.items():
        t.set_value(arrays[k])


def load_optimizer(
    optimizer: paddle.optimizer.Optimizer,
    arrays: Mapping[str, np.ndarray] | None,
    scheduler: Mapping[str, Any] | None,
) -> None:
    """Restore Adam's state and/or the LR scheduler; ``None`` leaves that part fresh."""
    lr = optimizer._learning_rate
    if not isinstance(lr, paddle.optimizer.lr.LRScheduler):
        raise TypeError("the optimizer has no LR scheduler to restore")
    if arrays is not None:
        state: dict[str, Any] = {k: paddle.to_tensor(v) for k, v in arrays.items()}
        # Paddle insists on a scheduler entry here; give it the current one and set ours below.
        state[SCHEDULER_KEY] = lr.state_dict()
        optimizer.set_state_dict(state)
    if scheduler is not None:
        lr.set_state_dict(dict(scheduler))  # type: ignore[arg-type]


def export_paddle(state: TrainState, prefix: Path) -> tuple[Path, Path]:
    """Write ``PREFIX.pdparams`` and ``PREFIX.pdopt`` that ``paddle.load`` + ``set_state_dict`` read."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    params = prefix.with_name(prefix.name + ".pdparams")
    opt = prefix.with_name(prefix.name + ".pdopt")
    paddle.save({k: paddle.to_tensor(v) for k, v in state.model.items()}, str(params))
    opt_dict: dict[str, Any] = {k: paddle.to_tensor(v) for k, v in state.optimizer.items()}
    opt_dict[SCHEDULER_KEY] = dict(state.lr_scheduler)
    paddle.save(opt_dict, str(opt))
    return params, opt
