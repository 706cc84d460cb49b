"""A model's and an optimizer's tensors found without ``state_dict()``, and NumPy views of their memory.

``state_dict()`` walks a model through generic machinery that costs three times as much as looking
at each layer's own dicts; a checkpoint taken every step pays that each time. These walks find the
same tensors where they can tell they do, and say None where they cannot (state-dict hooks, master
weights): :class:`checkpoint.paddle_state.LiveArrays` then checks them against Paddle's at first use.
"""

from __future__ import annotations

import ctypes

import numpy as np
import paddle

__all__ = ["SAMPLED_FROM", "model_tensors", "optimizer_tensors", "tensor_view"]

_xpu: bool | None = None  # whether this Paddle was built for XPU, asked once


def model_tensors(model: paddle.nn.Layer) -> dict[str, paddle.Tensor] | None:
    """What ``model.state_dict()`` gives (parameters and persistable buffers by structured name, the
    tensors themselves), walked without its generic machinery; None where a layer has state-dict
    hooks, which only Paddle's own walk applies."""
    out: dict[str, paddle.Tensor] = {}

    def visit(layer: paddle.nn.Layer, prefix: str) -> bool:
        if layer._state_dict_hooks:
            return False
        for name, p in layer._parameters.items():
            if p is not None:
                out[prefix + name] = p
        skip = layer._non_persistable_buffer_names_set
        for name, b in layer._buffers.items():
            if b is not None and name not in skip:
                out[prefix + name] = b
        return all(visit(sub, f"{prefix}{name}.") for name, sub in layer._sub_layers.items() if sub is not None)

    try:
        return out if visit(model, "") else None
    except AttributeError:  # a Paddle whose layers keep their state otherwise
        return None


def optimizer_tensors(optimizer: paddle.optimizer.Optimizer) -> dict[str, paddle.Tensor] | None:
    """The tensors of ``optimizer.state_dict()`` (its accumulators by name), or None where that holds
    anything else: no accumulators yet, master weights, or an XPU build's scale values."""
    global _xpu
    if _xpu is None:
        _xpu = bool(paddle.base.core.is_compiled_with_xpu())
    accumulators = getattr(optimizer, "_accumulators", None)
    if _xpu or not isinstance(accumulators, dict) or not accumulators or getattr(optimizer, "_master_weights", None):
        return None
    return {t.name: t for acc in accumulators.values() for t in acc.values()}


#: From this many elements on, a view is checked against values Paddle reads at sampled positions rather
#: than against a whole copy: at a GB of state, copying and comparing everything took seconds of the
#: first checkpoint of every attempt (and a transient copy of each tensor).
SAMPLED_FROM = 1 << 16
_PROBES = 1024


def _gather(flat: paddle.Tensor, idx: np.ndarray) -> np.ndarray:
    """Paddle's own reading of ``flat`` at ``idx`` (a test may replace it)."""
    with paddle.no_grad():
        return paddle.gather(flat, paddle.to_tensor(idx)).numpy()


def _sampled_view(t: paddle.Tensor, ptr: int) -> np.ndarray | None:
    """A view of a large dense tensor's memory, if it reads back as Paddle's values at evenly spread
    positions (the first and the last among them); None where it does not or cannot be checked so."""
    try:
        if not t.is_contiguous():
            return None
        idx = np.unique(np.linspace(0, t.size - 1, _PROBES).astype(np.int64))
        sample = _gather(t.reshape([-1]), idx)
    except (AttributeError, RuntimeError, TypeError, ValueError):  # a dtype gather does not take, say
        return None
    raw = (ctypes.c_char * (t.size * sample.dtype.itemsize)).from_address(ptr)
    view = np.frombuffer(memoryview(raw), dtype=sample.dtype).reshape(t.shape)
    return view if np.array_equal(view.reshape(-1)[idx], sample, equal_nan=sample.dtype.kind == "f") else None


def tensor_view(t: paddle.Tensor) -> tuple[np.ndarray, int]:
    """A NumPy view of ``t``'s memory and its address, or a copy of ``t`` and 0 where there is no view
    to make: off the CPU, not dense, empty, or memory that does not read back as ``t.numpy()`` (for a
    large tensor: as Paddle reads it at sampled positions)."""
    ptr = t.data_ptr() if t.place.is_cpu_place() else 0
    if ptr and t.size >= SAMPLED_FROM:
        view = _sampled_view(t, ptr)
        if view is not None:
            return view, ptr
    copy = t.numpy()
    if not ptr or not copy.flags.c_contiguous or copy.nbytes == 0:
        return copy, 0
    raw = (ctypes.c_char * copy.nbytes).from_address(ptr)
    view = np.frombuffer(memoryview(raw), dtype=copy.dtype).reshape(copy.shape)
    if not np.array_equal(view, copy, equal_nan=copy.dtype.kind == "f"):
        return copy, 0  # not a dense buffer we understand: copy it every time
    return view, ptr
