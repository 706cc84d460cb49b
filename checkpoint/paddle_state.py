"""The Paddle side of a checkpoint: state dicts and RNG states to plain arrays and JSON, and back."""

from __future__ import annotations

import ctypes
import random
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from .state import RngState, TrainState

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
    "export_paddle",
]

_SCHEDULER_KEY = "LR_Scheduler"


def _copy(t: paddle.Tensor) -> np.ndarray:
    # Tensor.numpy() copies on the CPU, so these arrays stay as they are while training goes on
    # (tests/test_worker_async.py checks it).
    return t.numpy()


def model_arrays(
    model: paddle.nn.Layer, to_array: Callable[[paddle.Tensor], np.ndarray] = _copy
) -> dict[str, np.ndarray]:
    return {k: to_array(v) for k, v in model.state_dict().items()}


def optimizer_arrays(
    optimizer: paddle.optimizer.Optimizer, to_array: Callable[[paddle.Tensor], np.ndarray] = _copy
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Adam's moments and beta powers as arrays, and the LR scheduler's state apart from them."""
    arrays: dict[str, np.ndarray] = {}
    scheduler: dict[str, Any] = {}
    for k, v in optimizer.state_dict().items():
        if k == _SCHEDULER_KEY:
            scheduler = dict(v)
        elif isinstance(v, paddle.Tensor):
            arrays[k] = to_array(v)
        else:
            raise TypeError(f"unexpected optimizer state entry {k!r} of type {type(v).__name__}")
    return arrays, scheduler


_xpu: bool | None = None


def _model_tensors(model: paddle.nn.Layer) -> dict[str, paddle.Tensor] | None:
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


def _optimizer_tensors(optimizer: paddle.optimizer.Optimizer) -> dict[str, paddle.Tensor] | None:
    """The tensors of ``optimizer.state_dict()`` (its accumulators by name), or None where that holds
    anything else: no accumulators yet, master weights, or an XPU build's scale values."""
    global _xpu
    if _xpu is None:
        _xpu = bool(paddle.base.core.is_compiled_with_xpu())
    accumulators = getattr(optimizer, "_accumulators", None)
    if _xpu or not isinstance(accumulators, dict) or not accumulators or getattr(optimizer, "_master_weights", None):
        return None
    return {t.name: t for acc in accumulators.values() for t in acc.values()}


_data_ptr = paddle.Tensor.data_ptr


class LiveArrays:
    """Zero-copy NumPy views of a model's and an optimizer's tensors, for a checkpoint taken every step.

    ``Tensor.numpy()`` allocates and copies each tensor; an every-step checkpoint copies them once
    more into the writer's buffer. These views let that be the only copy. They are valid only until
    the next training step: read them at once. Each call walks the model and the optimizer again and
    checks that every tensor is still the same object at the same address; while all are, it returns
    the same dict of the same views (read it, do not change it). Tensors off the CPU are copied.

    The walks are this module's own where they agree with ``state_dict()`` (checked at first use, and
    again wherever they cannot tell, such as state-dict hooks): Paddle's cost three times as much.
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
        ptr = t.data_ptr() if t.place.is_cpu_place() else 0
        copy = t.numpy()
        if not ptr or not copy.flags.c_contiguous or copy.nbytes == 0:
            return copy, False
        raw = (ctypes.c_char * copy.nbytes).from_address(ptr)
        view = np.frombuffer(memoryview(raw), dtype=copy.dtype).reshape(copy.shape)
        if not np.array_equal(view, copy, equal_nan=copy.dtype.kind == "f"):
            return copy, False  # not a dense buffer we understand: copy it every time
        self._views[id(t)] = (t, ptr, view)
        return view, True

    def _paddle_walk(self, part: str) -> dict[str, Any]:
        if part == "model":
            return dict(self.model.state_dict())
        return {k: v for k, v in self.optimizer.state_dict().items() if k != _SCHEDULER_KEY}

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


def scheduler_state(optimizer: paddle.optimizer.Optimizer) -> dict[str, Any]:
    lr = optimizer._learning_rate
    return dict(lr.state_dict()) if isinstance(lr, paddle.optimizer.lr.LRScheduler) else {}


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


_MT_KEYS = 624
_MT_BYTES = _MT_KEYS * 4 + 4  # the key, then the position
_join = b"".join
_numpy_restores = 0  # set_rng_states() calls: one may put back a cached Gaussian without moving MT19937


def _mt19937_raw() -> tuple[Any, np.ndarray] | None:
    """The global NumPy RandomState's bit generator and a view of its MT19937 key and position, or
    None if that memory does not read back as ``np.random.get_state()`` says (then every snapshot
    asks NumPy). The view does not keep the bit generator alive: hold it as long as the view."""
    try:
        bitgen = np.random.mtrand.get_bit_generator()
        mem = (ctypes.c_char * _MT_BYTES).from_address(bitgen.ctypes.state_address)
        raw = np.frombuffer(memoryview(mem), dtype=np.uint8)
    except (AttributeError, TypeError, ValueError):
        return None
    _, keys, pos, _, _ = np.random.get_state(legacy=True)
    ok = np.array_equal(raw[: _MT_KEYS * 4].view(np.uint32), keys) and int(raw[_MT_KEYS * 4 :].view(np.int32)[0]) == pos
    return (bitgen, raw) if ok else None


_PY_WORDS = 624


def _python_raw() -> tuple[random.Random, np.ndarray] | None:
    """The instance behind the ``random`` module's functions and a view of its Mersenne Twister
    index and key (CPython's ``RandomObject``: the object header, ``int index``, ``uint32_t
    state[624]``), or None if that memory does not read back as ``getstate()`` says (then every
    snapshot asks ``getstate()``). Reading it is a 2.5 kB copy instead of a tuple of 625 ints."""
    inst = getattr(random.getstate, "__self__", None)
    if not isinstance(inst, random.Random):
        return None
    try:
        mem = (ctypes.c_char * (4 + _PY_WORDS * 4)).from_address(id(inst) + object.__basicsize__)
        raw = np.frombuffer(memoryview(mem), dtype=np.uint8)
    except (TypeError, ValueError):
        return None
    _, internal, _ = inst.getstate()
    ok = (len(internal) == _PY_WORDS + 1 and int(raw[:4].view(np.int32)[0]) == internal[-1]
          and np.array_equal(raw[4:].view(np.uint32), np.asarray(internal[:-1], dtype=np.uint32)))
    return (inst, raw) if ok else None


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
        self._np = _mt19937_raw()
        self._np_last: tuple[bytes, int, tuple[Any, ...]] | None = None
        self._py_last: tuple[tuple[int, ...], np.ndarray] | None = None
        self._py = _python_raw()
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
        arr = np.empty(_PY_WORDS + 1, dtype=np.uint32)  # as getstate() gives it: the key, then the index
        arr[:_PY_WORDS] = np.frombuffer(raw, dtype=np.uint32, offset=4)
        arr[_PY_WORDS] = np.frombuffer(raw, dtype=np.int32, count=1)[0]
        arr.flags.writeable = False
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
                np_raw, py_raw = both[:_MT_BYTES], both[_MT_BYTES:]
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


def _paddle_listed(state: Any) -> tuple[list[int], np.ndarray]:
    """A generator state through its pickle state: ``(device, seed, offset, the engine's state as a
    list of character codes)``."""
    device, seed, offset, chars = state.__getstate__()
    try:
        arr = np.frombuffer(bytes(chars), dtype=np.uint8)  # text: 40x faster than int64
    except ValueError:
        arr = np.asarray(chars, dtype=np.int64)
    return [device, seed, offset], arr


_MT64_WORDS = 312  # std::mt19937_64: the words, then the position


def _paddle_raw(state: Any) -> bytes | None:
    """A generator state's ``device, seed, offset`` and its engine's memory, as bytes (None if it has
    no engine). The state is a pybind11 object whose value is Paddle's ``GeneratorState {int64 device;
    uint64 seed; uint64 offset; shared_ptr<mt19937_64> cpu_engine}``; use only where
    :func:`_paddle_raw_ok` said so for the same generator."""
    value = ctypes.c_void_p.from_address(id(state) + object.__basicsize__).value
    if not value:
        return None
    head = ctypes.string_at(value, 32)
    engine = int.from_bytes(head[24:], "little")
    return head[:24] + ctypes.string_at(engine, (_MT64_WORDS + 1) * 8) if engine else None


def _read_memory(addr: int, n: int) -> bytes | None:
    """``n`` bytes of this process's memory at ``addr``, or None where nothing is mapped there
    (read through /proc/self/mem: a wrong guess is an error, not a crash)."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as f:
            f.seek(addr)
            data = f.read(n)
    except (OSError, ValueError, OverflowError):
        return None
    return data if len(data) == n else None


def _paddle_raw_ok(state: Any) -> bool:
    """Whether :func:`_paddle_raw` reads this Paddle's generator states: the memory it would read
    must hold what ``str(state)`` prints (``device seed offset 0x<engine> <words> <position>``)."""
    parts = str(state).split(" ")
    if sys.byteorder != "little" or len(parts) != 4 + _MT64_WORDS + 1 or not parts[3].startswith("0x"):
        return False
    ptr = _read_memory(id(state) + object.__basicsize__, 8)
    head = _read_memory(int.from_bytes(ptr, "little"), 32) if ptr else None
    if head is None:
        return False
    try:
        want_head = struct.pack("<qQQQ", *(int(p, 0) for p in parts[:4]))
        words = struct.pack(f"<{_MT64_WORDS + 1}Q", *(int(p) for p in parts[4:]))
    except (ValueError, struct.error):
        return False
    if head != want_head:
        return False
    mem = _read_memory(int(parts[3], 16), len(words))
    return mem == words and _paddle_raw(state) == head[:24] + mem


def _paddle_printed(state: Any) -> tuple[list[int], bytes] | None:
    """A generator state through ``str()``: ``device seed offset 0x<engine address> <engine state>``,
    the same text as the pickle state's list, ~2x faster. None if it does not read that way."""
    parts = str(state).split(" ", 4)
    if len(parts) != 5 or not parts[3].startswith("0x"):
        return None
    try:
        return [int(parts[0]), int(parts[1]), int(parts[2])], parts[4].encode("ascii")
    except (ValueError, UnicodeEncodeError):
        return None


def rng_snapshot() -> Callable[[], RngState]:
    """The RNG states now, encoded by the returned callable (see :class:`RngSnapshots`)."""
    return RngSnapshots().snapshot()


def set_rng_states(state: RngState) -> None:
    global _numpy_restores
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
    _numpy_restores += 1
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
