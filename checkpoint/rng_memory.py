"""RNG states read straight from the generators' memory, where that memory checks out.

Asking NumPy, Python and Paddle for their RNG states through their APIs costs tens of microseconds
each, at every checkpoint; their Mersenne Twisters' memory is a few kilobytes to copy.
:class:`checkpoint.paddle_state.RngSnapshots` reads that memory to tell whether a state moved, and
its encoding from the API's answer otherwise. Each reader here is used only where its check against
the API's answer passed; each check reads as False/None on a layout it does not know.
"""

from __future__ import annotations

import ctypes
import random
import struct
import sys
from typing import Any

import numpy as np

__all__ = ["MT_BYTES", "PY_WORDS", "mt19937_raw", "paddle_listed", "paddle_printed", "paddle_raw", "paddle_raw_ok",
           "python_internal_from_raw", "python_raw", "read_memory"]

_MT_KEYS = 624
MT_BYTES = _MT_KEYS * 4 + 4  # NumPy's MT19937: the key, then the position
PY_WORDS = 624  # Python's Mersenne Twister key
_MT64_WORDS = 312  # Paddle's std::mt19937_64: the words, then the position


def mt19937_raw() -> tuple[Any, np.ndarray] | None:
    """The global NumPy RandomState's bit generator and a view of its MT19937 key and position, or
    None if that memory does not read back as ``np.random.get_state()`` says (then every snapshot
    asks NumPy). The view does not keep the bit generator alive: hold it as long as the view."""
    try:
        bitgen = np.random.mtrand.get_bit_generator()
        mem = (ctypes.c_char * MT_BYTES).from_address(bitgen.ctypes.state_address)
        raw = np.frombuffer(memoryview(mem), dtype=np.uint8)
    except (AttributeError, TypeError, ValueError):
        return None
    _, keys, pos, _, _ = np.random.get_state(legacy=True)
    ok = np.array_equal(raw[: _MT_KEYS * 4].view(np.uint32), keys) and int(raw[_MT_KEYS * 4 :].view(np.int32)[0]) == pos
    return (bitgen, raw) if ok else None


def python_raw() -> tuple[random.Random, np.ndarray] | None:
    """The instance behind the ``random`` module's functions and a view of its Mersenne Twister
    index and key (CPython's ``RandomObject``: the object header, ``int index``, ``uint32_t
    state[624]``), or None if that memory does not read back as ``getstate()`` says (then every
    snapshot asks ``getstate()``). Reading it is a 2.5 kB copy instead of a tuple of 625 ints."""
    inst = getattr(random.getstate, "__self__", None)
    if not isinstance(inst, random.Random):
        return None
    try:
        mem = (ctypes.c_char * (4 + PY_WORDS * 4)).from_address(id(inst) + object.__basicsize__)
        raw = np.frombuffer(memoryview(mem), dtype=np.uint8)
    except (TypeError, ValueError):
        return None
    _, internal, _ = inst.getstate()
    ok = (len(internal) == PY_WORDS + 1 and int(raw[:4].view(np.int32)[0]) == internal[-1]
          and np.array_equal(raw[4:].view(np.uint32), np.asarray(internal[:-1], dtype=np.uint32)))
    return (inst, raw) if ok else None


def python_internal_from_raw(raw: bytes) -> np.ndarray:
    """The internal state ``random.getstate()`` gives (the key, then the index), as a read-only
    uint32 array, from the bytes :func:`python_raw`'s view held."""
    arr = np.empty(PY_WORDS + 1, dtype=np.uint32)
    arr[:PY_WORDS] = np.frombuffer(raw, dtype=np.uint32, offset=4)
    arr[PY_WORDS] = np.frombuffer(raw, dtype=np.int32, count=1)[0]
    arr.flags.writeable = False
    return arr


def paddle_listed(state: Any) -> tuple[list[int], np.ndarray]:
    """A generator state through its pickle state: ``(device, seed, offset, the engine's state as a
    list of character codes)``."""
    device, seed, offset, chars = state.__getstate__()
    try:
        arr = np.frombuffer(bytes(chars), dtype=np.uint8)  # text: 40x faster than int64
    except ValueError:
        arr = np.asarray(chars, dtype=np.int64)
    return [device, seed, offset], arr


def paddle_printed(state: Any) -> tuple[list[int], bytes] | None:
    """A generator state through ``str()``: ``device seed offset 0x<engine address> <engine state>``,
    the same text as the pickle state's list, ~2x faster. None if it does not read that way."""
    parts = str(state).split(" ", 4)
    if len(parts) != 5 or not parts[3].startswith("0x"):
        return None
    try:
        return [int(parts[0]), int(parts[1]), int(parts[2])], parts[4].encode("ascii")
    except (ValueError, UnicodeEncodeError):
        return None


def paddle_raw(state: Any) -> bytes | None:
    """A generator state's ``device, seed, offset`` and its engine's memory, as bytes (None if it has
    no engine). The state is a pybind11 object whose value is Paddle's ``GeneratorState {int64 device;
    uint64 seed; uint64 offset; shared_ptr<mt19937_64> cpu_engine}``; use only where
    :func:`paddle_raw_ok` said so for the same generator."""
    value = ctypes.c_void_p.from_address(id(state) + object.__basicsize__).value
    if not value:
        return None
    head = ctypes.string_at(value, 32)
    engine = int.from_bytes(head[24:], "little")
    return head[:24] + ctypes.string_at(engine, (_MT64_WORDS + 1) * 8) if engine else None


def read_memory(addr: int, n: int) -> bytes | None:
    """``n`` bytes of this process's memory at ``addr``, or None where nothing is mapped there
    (read through /proc/self/mem: a wrong guess is an error, not a crash)."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as f:
            f.seek(addr)
            data = f.read(n)
    except (OSError, ValueError, OverflowError):
        return None
    return data if len(data) == n else None


def paddle_raw_ok(state: Any) -> bool:
    """Whether :func:`paddle_raw` reads this Paddle's generator states: the memory it would read
    must hold what ``str(state)`` prints (``device seed offset 0x<engine> <words> <position>``)."""
    parts = str(state).split(" ")
    if sys.byteorder != "little" or len(parts) != 4 + _MT64_WORDS + 1 or not parts[3].startswith("0x"):
        return False
    ptr = read_memory(id(state) + object.__basicsize__, 8)
    head = read_memory(int.from_bytes(ptr, "little"), 32) if ptr else None
    if head is None:
        return False
    try:
        want_head = struct.pack("<qQQQ", *(int(p, 0) for p in parts[:4]))
        words = struct.pack(f"<{_MT64_WORDS + 1}Q", *(int(p) for p in parts[4:]))
    except (ValueError, struct.error):
        return False
    if head != want_head:
        return False
    mem = read_memory(int(parts[3], 16), len(words))
    return mem == words and paddle_raw(state) == head[:24] + mem
