"""The Paddle side of a checkpoint: state dicts and RNG states to plain arrays and JSON, and back."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from .state import RngState, TrainState

__all__ = [
    "model_arrays",
    "optimizer_arrays",
    "load_model",
    "load_optimizer",
    "rng_snapshot",
    "set_rng_states",
    "export_paddle",
]

_SCHEDULER_KEY = "LR_Scheduler"


def model_arrays(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    # Tensor.numpy() copies on the CPU, so these arrays stay as they are while training goes on;
    # asynchronous checkpoints rely on that (tests/test_worker_async.py checks it).
    return {k: v.numpy() for k, v in model.state_dict().items()}


def optimizer_arrays(optimizer: paddle.optimizer.Optimizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Adam's moments and beta powers as arrays, and the LR scheduler's state apart from them."""
    arrays: dict[str, np.ndarray] = {}
    scheduler: dict[str, Any] = {}
    for k, v in optimizer.state_dict().items():
        if k == _SCHEDULER_KEY:
            scheduler = dict(v)
        elif isinstance(v, paddle.Tensor):
            arrays[k] = v.numpy()
        else:
            raise TypeError(f"unexpected optimizer state entry {k!r} of type {type(v).__name__}")
    return arrays, scheduler


def load_model(model: paddle.nn.Layer, arrays: Mapping[str, np.ndarray]) -> None:
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")


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
        state[_SCHEDULER_KEY] = lr.state_dict()
        optimizer.set_state_dict(state)
    if scheduler is not None:
        lr.set_state_dict(dict(scheduler))  # type: ignore[arg-type]


def rng_snapshot() -> Callable[[], RngState]:
    """Take Paddle's, NumPy's global and Python's RNG states now (cheap copies); the returned callable
    encodes them later, off the training thread: the big parts as arrays, the rest as JSON."""
    paddle_states = paddle.get_rng_state()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()

    def encode() -> RngState:
        arrays: dict[str, np.ndarray] = {
            "numpy/keys": np.asarray(keys, dtype=np.uint32),
            "python/internal": np.asarray(internal, dtype=np.uint32),
        }
        meta: dict[str, Any] = {"paddle": [], "numpy": [name, pos, has_gauss, cached], "python": [version, gauss]}
        for i, s in enumerate(paddle_states):
            # pybind11's pickle state: (device, seed, offset, the engine's state as character codes)
            device, seed, offset, chars = s.__getstate__()
            arrays[f"paddle/{i}"] = np.asarray(chars, dtype=np.int64)
            meta["paddle"].append([device, seed, offset])
        return arrays, meta

    return encode


def set_rng_states(state: RngState) -> None:
    arrays, meta = state
    restored = []
    for i, (s, (device, seed, offset)) in enumerate(zip(paddle.get_rng_state(), meta["paddle"])):
        cls = type(s)
        obj = cls.__new__(cls)
        obj.__setstate__((device, seed, offset, arrays[f"paddle/{i}"].tolist()))
        restored.append(obj)
    paddle.set_rng_state(restored)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(arrays["numpy/keys"], dtype=np.uint32), pos, has_gauss, cached))
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(x) for x in arrays["python/internal"]), gauss))


def export_paddle(state: TrainState, prefix: Path) -> tuple[Path, Path]:
    """Write ``PREFIX.pdparams`` and ``PREFIX.pdopt`` that ``paddle.load`` + ``set_state_dict`` read."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    params = prefix.with_name(prefix.name + ".pdparams")
    opt = prefix.with_name(prefix.name + ".pdopt")
    paddle.save({k: paddle.to_tensor(v) for k, v in state.model.items()}, str(params))
    opt_dict: dict[str, Any] = {k: paddle.to_tensor(v) for k, v in state.optimizer.items()}
    opt_dict[_SCHEDULER_KEY] = dict(state.lr_scheduler)
    paddle.save(opt_dict, str(opt))
    return params, opt
