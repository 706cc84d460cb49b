"""The Paddle side of a checkpoint, as a job uses it: the readers of its live state, and the way back.

:class:`LiveArrays` gives zero-copy views of a model's and an optimizer's tensors; :class:`RngSnapshots`
takes Paddle's, NumPy's and Python's RNG states, and :func:`set_rng_states` puts them back. Both
readers run at every checkpoint and keep what they read while it does not move, so that an every-step
checkpoint costs little and the writer copies only what changed. What they build on has modules of
its own: the lean tensor walks and views (:mod:`checkpoint.paddle_tensors`), the generator-memory
readers (:mod:`checkpoint.rng_memory`), and the state-dict conversions that copy
(:mod:`checkpoint.paddle_dicts`), re-exported here so that a job imports this one module.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import paddle

from .paddle_dicts import (
    SCHEDULER_KEY,
    export_paddle,
    load_model,
    load_optimizer,
    model_arrays,
    optimizer_arrays,
    scheduler_state,
)
from .paddle_tensors import model_tensors as _model_tensors
from .paddle_tensors import optimizer_tensors as _optimizer_tensors
from .paddle_tensors import tensor_view
from .rng_memory import MT_BYTES, mt19937_raw, python_internal_from_raw, python_raw
from .rng_memory import paddle_listed as _paddle_listed
from .rng_memory import paddle_printed as _paddle_printed
from .rng_memory import paddle_raw as _paddle_raw
from .rng_memory import paddle_raw_ok as _paddle_raw_ok
from .rng_memory import read_memory as _read_memory  # noqa: F401 - the readers' tests reach it here
from .state import RngState

# LiveArrays and RngSnapshots call the walks and readers above by these names at each call, so that a
# test may replace one of them here.

_framework: Any
try:  # where the expected place lives; without it every snapshot asks paddle.get_rng_state()
    import paddle.base.framework as _framework
except ImportError:  # pragma: no cover - another Paddle layout
    _framework = None

__all__ = [
    "model_arrays",
    "optimizer_arrays",
    "scheduler_state",
    "LiveArrays",
    "load_model",
    "load_optimizer",
    "rng_snapshot",
    "RngSnapshots",
    "set_rng_states",
    "set_paddle_rng",
    "set_numpy_rng",
    "set_python_rng",
    "export_paddle",
]

_data_ptr = paddle.Tensor.data_ptr


class LiveArrays:
    """Zero-copy NumPy views of a model's and an optimizer's tensors, for a checkpoint taken every step.

    ``Tensor.numpy()`` allocates and copies each tensor; an every-step checkpoint copies them once
    more into the writer's buffer. These views let that be the only copy. They are valid only until
    the next training step: read them at once. Each call walks the model and the optimizer again and
    checks that every tensor is still the same object at the same address; while all are, it returns
    the same dict of the same views (read it, do not change it). Tensors off the CPU are copied.

    The walks are :mod:`checkpoint.paddle_tensors`' where they agree with ``state_dict()`` (checked at
    first use, and again wherever they cannot tell, such as state-dict hooks): Paddle's cost three times
    as much.
    """

    def __init__(self, model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self._views: dict[int, tuple[paddle.Tensor, int, np.ndarray]] = {}
        self._lean: dict[str, bool | None] = {"model": None, "optimizer": None}  # None: not checked yet
        # By part: the names, the tensors (held, so that their ids stay theirs), their ids and addresses,
        # and the views made of them.
        self._last: dict[str, tuple[list[str], list[paddle.Tensor], list[int], list[int], dict[str, np.ndarray]]] = {}

    def _view(self, t: paddle.Tensor) -> tuple[np.ndarray, bool]:
        """A view of ``t``'s memory (True), or a copy where there is none to make (False)."""
        hit = self._views.get(id(t))  # only CPU tensors are kept; holding t keeps its id unique
        if hit is not None and hit[0] is t and hit[1] == t.data_ptr():
            return hit[2], True
        view, ptr = tensor_view(t)
        if ptr:
            self._views[id(t)] = (t, ptr, view)
        return view, bool(ptr)

    def _paddle_walk(self, part: str) -> dict[str, Any]:
        if part == "model":
            return dict(self.model.state_dict())
        return {k: v for k, v in self.optimizer.state_dict().items() if k != SCHEDULER_KEY}

    def _tensors(self, part: str) -> dict[str, Any]:
        lean = self._lean[part]
        if lean is not False:
            mine = _model_tensors(self.model) if part == "model" else _optimizer_tensors(self.optimizer)
            if mine is not None:
                if lean:
                    return mine
                theirs = self._paddle_walk(part)
                same = list(mine) == list(theirs) and all(a is b for a, b in zip(mine.values(), theirs.values()))
                self._lean[part] = same
                return theirs
        return self._paddle_walk(part)

    def _arrays(self, part: str) -> dict[str, np.ndarray]:
        found = self._tensors(part)
        for k, v in found.items():
            if not isinstance(v, paddle.Tensor):
                raise TypeError(f"unexpected {part} state entry {k!r} of type {type(v).__name__}")
        names, tensors = list(found), list(found.values())
        ids, ptrs = list(map(id, tensors)), list(map(_data_ptr, tensors))
        last = self._last.get(part)
        if last is not None and last[0] == names and last[2] == ids and last[3] == ptrs:
            return last[4]
        views: dict[str, np.ndarray] = {}
        all_views = True
        for k, t in zip(names, tensors):
            views[k], is_view = self._view(t)
            all_views = all_views and is_view
        if all_views:
            self._last[part] = (names, tensors, ids, ptrs, views)
        else:
            self._last.pop(part, None)  # copies are made again every time
        return views

    def model_arrays(self) -> dict[str, np.ndarray]:
        return self._arrays("model")

    def optimizer_tensor_arrays(self) -> dict[str, np.ndarray]:
        """The optimizer's arrays as :meth:`optimizer_arrays` gives them, without the scheduler."""
        return self._arrays("optimizer")

    def optimizer_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self._arrays("optimizer"), self.scheduler_state()

    def scheduler_state(self) -> dict[str, Any]:
        """The LR scheduler's state, as :meth:`optimizer_arrays` gives it, without the tensors."""
        return scheduler_state(self.optimizer)


_join = b"".join
_numpy_restores = 0  # set_rng_states() calls: one may put back a cached Gaussian without moving MT19937


class RngSnapshots:
    """Takes Paddle's, NumPy's global and Python's RNG states at each checkpoint.

    ``snapshot()`` copies the states now and returns a callable that encodes them: the big parts as
    arrays, the rest as JSON. NumPy's global state costs ~70 us to read through its API; when its
    raw key and position have not moved since the last snapshot, and no cached Gaussian was pending
    then (a pending one can be used up without moving them), the last reading is reused: exact, as
    long as the bit generator is the same one and any state put back since went through
    :func:`set_rng_states` (a direct ``np.random.set_state`` is not seen). Python's state is copied
    from the generator's memory (checked against ``getstate()`` when this object is made), Paddle's
    is read as text; both are encoded into arrays that stay the same objects while the state does
    not change, so the checkpoint writer copies them only when they move."""

    def __init__(self) -> None:
        self._np = mt19937_raw()
        self._np_last: tuple[bytes, int, tuple[Any, ...]] | None = None
        self._py_last: tuple[tuple[int, ...], np.ndarray] | None = None
        self._py = python_raw()
        self._py_raw_last: tuple[bytes, np.ndarray] | None = None
        self._paddle_by_text: bool | None = None  # decided at the first snapshot
        self._paddle_by_raw: dict[int, bool] = {}  # by generator, decided at its first snapshot
        self._paddle_last: dict[int, tuple[bytes, list[int], np.ndarray]] = {}
        self._paddle_cpu: tuple[Any, Any] | None = None  # (the CPU place in use, its generator)
        # NumPy's and Python's generator memory, read in one copy where both can be read that way.
        self._mems = (self._np[1].data, self._py[1].data) if self._np and self._py else None
        # The last such copy, with the NumPy state and Python memory read from it, while reusable.
        self._both_last: tuple[bytes, int, tuple[Any, ...], bytes] | None = None

    def _paddle_states(self) -> list[Any]:
        """``paddle.get_rng_state()``, with the CPU generator kept while the expected place is the
        same CPU place: at every checkpoint, the lookup costs more than the copy."""
        place = getattr(_framework, "_global_expected_place_", None)
        cpu = self._paddle_cpu
        if cpu is not None and cpu[0] is place:
            return [cpu[1].get_state()]
        states = paddle.get_rng_state()
        place = getattr(_framework, "_global_expected_place_", None)
        cpu_generator = getattr(paddle.framework.core, "default_cpu_generator", None)
        self._paddle_cpu = ((place, cpu_generator()) if isinstance(place, paddle.CPUPlace) and cpu_generator
                            and len(states) == 1 else None)
        return states

    def _numpy_state(self, raw: bytes | None) -> tuple[Any, ...]:
        """NumPy's global state; ``raw``: its generator's memory, if read from there."""
        if raw is None:
            return tuple(np.random.get_state(legacy=True))
        last = self._np_last
        if last is not None and last[0] == raw and last[1] == _numpy_restores and not last[2][3]:
            return last[2]
        state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
        state[1].flags.writeable = False  # a copy of NumPy's: reused while unchanged, copied once
        self._np_last = (raw, _numpy_restores, state)
        return state

    def _python_internal(self, internal: tuple[int, ...]) -> np.ndarray:
        last = self._py_last
        if last is not None and last[0] == internal:
            return last[1]
        arr = np.asarray(internal, dtype=np.uint32)
        arr.flags.writeable = False  # unchanged, it need not be copied again
        self._py_last = (internal, arr)
        return arr

    def _paddle_state(self, i: int, state: Any) -> tuple[list[int], np.ndarray]:
        """Paddle generator ``i``'s ``[device, seed, offset]``, and its engine's state as text in a
        read-only uint8 array that is the same object while that state does not change. Whether it
        changed is read from the engine's memory (2.5 kB) where that checks out against the text:
        making the text takes 30 us."""
        by_raw = self._paddle_by_raw.get(i)
        if by_raw is None:
            by_raw = self._paddle_by_raw[i] = _paddle_raw_ok(state)
        last = self._paddle_last.get(i)
        raw = _paddle_raw(state) if by_raw else None
        if raw is not None and last is not None and last[0] == raw:
            return last[1], last[2]
        if self._paddle_by_text is None:  # first use: does the printed state agree with the pickled one?
            listed, printed = _paddle_listed(state), _paddle_printed(state)
            self._paddle_by_text = printed is not None and printed[0] == listed[0] and printed[1] == listed[1].tobytes()
        read = _paddle_printed(state) if self._paddle_by_text else None
        if read is None:
            head, arr = _paddle_listed(state)
            if arr.dtype != np.uint8:
                return head, arr
            read = head, arr.tobytes()
        head, text = read
        key = raw if raw is not None else text
        if last is None or last[0] != key:
            arr = np.frombuffer(text, dtype=np.uint8).copy()
            arr.flags.writeable = False
            last = self._paddle_last[i] = (key, head, arr)
        return head, last[2]

    def _python_state(self, raw: bytes | None) -> tuple[int, Callable[[], np.ndarray], Any]:
        """``random``'s (version, a callable giving its internal state as uint32, gauss_next);
        ``raw``: its generator's memory, if read from there."""
        if raw is None:
            version, internal, gauss = random.getstate()
            return version, lambda: self._python_internal(internal), gauss
        assert self._py is not None  # raw was read from its memory
        inst = self._py[0]
        return inst.VERSION, lambda: self._python_from_raw(raw), inst.gauss_next  # type: ignore[attr-defined]

    def _python_from_raw(self, raw: bytes) -> np.ndarray:
        last = self._py_raw_last
        if last is not None and last[0] == raw:
            return last[1]
        arr = python_internal_from_raw(raw)
        self._py_raw_last = (raw, arr)
        return arr

    def snapshot(self) -> Callable[[], RngState]:
        paddle_states = self._paddle_states()
        npr, pyr = self._np, self._py
        np_mem = npr[1] if npr is not None and np.random.mtrand.get_bit_generator() is npr[0] else None
        py_mem = pyr[1] if pyr is not None and getattr(random.getstate, "__self__", None) is pyr[0] else None
        both = _join(self._mems) if np_mem is not None and py_mem is not None and self._mems else None
        last = self._both_last
        np_raw: bytes | None
        py_raw: bytes | None
        if both is not None and last is not None and last[0] == both and last[1] == _numpy_restores:
            np_state, py_raw = last[2], last[3]  # neither moved, and no Gaussian was pending then
        else:
            if both is not None:
                np_raw, py_raw = both[:MT_BYTES], both[MT_BYTES:]
            else:
                np_raw = np_mem.tobytes() if np_mem is not None else None
                py_raw = py_mem.tobytes() if py_mem is not None else None
            np_state = self._numpy_state(np_raw)
            self._both_last = ((both, _numpy_restores, np_state, py_raw)
                               if both is not None and py_raw is not None and not np_state[3] else None)
        version, internal, gauss = self._python_state(py_raw)
        name, keys, pos, has_gauss, cached = np_state

        def encode() -> RngState:
            arrays: dict[str, np.ndarray] = {"numpy/keys": keys, "python/internal": internal()}
            meta: dict[str, Any] = {"paddle": [], "numpy": [name, pos, has_gauss, cached], "python": [version, gauss]}
            for i, s in enumerate(paddle_states):
                head, arrays[f"paddle/{i}"] = self._paddle_state(i, s)
                meta["paddle"].append(head)
            return arrays, meta

        return encode


def rng_snapshot() -> Callable[[], RngState]:
    """The RNG states now, encoded by the returned callable (see :class:`RngSnapshots`)."""
    return RngSnapshots().snapshot()


def set_rng_states(state: RngState, *, skip: frozenset[str] = frozenset()) -> None:
    """Put back the RNG states a snapshot encoded: Paddle's generators, NumPy's global state (with
    its cached Gaussian) and Python's ``random``. ``skip`` names generators to leave as they are
    ("paddle", "numpy", "python"): only a deliberately broken resume does that."""
    if "paddle" not in skip:
        set_paddle_rng(state)
    if "numpy" not in skip:
        set_numpy_rng(state)
    if "python" not in skip:
        set_python_rng(state)


def set_paddle_rng(state: RngState) -> None:
    """Put back the Paddle generators' states of a snapshot (those of the place in use)."""
    arrays, meta = state
    restored = []
    for i, (s, (device, seed, offset)) in enumerate(zip(paddle.get_rng_state(), meta["paddle"])):
        cls = type(s)
        obj = cls.__new__(cls)
        obj.__setstate__((device, seed, offset, arrays[f"paddle/{i}"].tolist()))
        restored.append(obj)
    paddle.set_rng_state(restored)


def set_numpy_rng(state: RngState) -> None:
    """Put back NumPy's global state of a snapshot, with its cached Gaussian."""
    global _numpy_restores
    arrays, meta = state
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(arrays["numpy/keys"], dtype=np.uint32), pos, has_gauss, cached))
    _numpy_restores += 1


def set_python_rng(state: RngState) -> None:
    """Put back Python's ``random`` state of a snapshot."""
    arrays, meta = state
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(x) for x in arrays["python/internal"]), gauss))
