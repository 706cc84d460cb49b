"""safetensors files written straight from arrays, without copying them first.

``safetensors.numpy.save`` builds the whole file in memory, which costs more Python than the copy
itself for a checkpoint of many small tensors taken every step. Here a file is a header - made once
for a set of names, dtypes and shapes, and reused while they stay the same - followed by the arrays'
own memory as buffers, which :class:`~checkpoint.storage.LocalStorage` hands to one ``writev``.
The files are plain safetensors: ``safetensors.numpy.load`` reads them (tests/test_tensorfile.py).

Tensors are laid out by decreasing item size, so each starts aligned to its own size, as the
safetensors library lays them out; the header is padded with spaces to a multiple of 8 bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Chunks", "chunks", "serialize", "chunks_sha256", "chunks_size", "load_views"]

#: A file as buffers, written one after another.
Chunks = Sequence[memoryview]

_DTYPES = {
    "b1": "BOOL", "u1": "U8", "i1": "I8", "u2": "U16", "i2": "I16", "f2": "F16", "u4": "U32", "i4": "I32",
    "f4": "F32", "u8": "U64", "i8": "I64", "f8": "F64",
}

_CODES = {code: np.dtype(f"<{short}") for short, code in _DTYPES.items()}

_Key = tuple[tuple[str, str, tuple[int, ...]], ...]
_headers: dict[_Key, tuple[memoryview, tuple[int, ...]]] = {}
_MAX_HEADERS = 64


def _code(dtype: np.dtype[Any]) -> str:
    code = _DTYPES.get(dtype.str[1:])
    if code is None or dtype.byteorder == ">":
        raise TypeError(f"no safetensors dtype for {dtype} (little-endian bool, ints and floats only)")
    return code


def _header(key: _Key) -> tuple[memoryview, tuple[int, ...]]:
    """The header for these (name, dtype, shape) entries, and the order their data follows in."""
    hit = _headers.get(key)
    if hit is not None:
        return hit
    order = sorted(range(len(key)), key=lambda i: -np.dtype(key[i][1]).itemsize)  # stable: ties keep order
    entries, offset = {}, 0
    for i in order:
        name, dtype, shape = key[i]
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        entries[name] = {"dtype": _code(dt), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    hit = (memoryview(struct.pack("<Q", len(text)) + text), tuple(order))
    if len(_headers) >= _MAX_HEADERS:
        _headers.clear()
    _headers[key] = hit
    return hit


def _raw(a: np.ndarray) -> memoryview:
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a.reshape(-1).view(np.uint8).data


def chunks(arrays: Mapping[str, np.ndarray]) -> list[memoryview]:
    """The file as buffers: the header, then each array's memory (copied only if not contiguous).
    The buffers are views: write them before the arrays change."""
    items = list(arrays.items())
    header, order = _header(tuple((k, v.dtype.str, v.shape) for k, v in items))
    return [header, *(_raw(items[i][1]) for i in order)]


def serialize(arrays: Mapping[str, np.ndarray]) -> bytes:
    return b"".join(chunks(arrays))


def chunks_sha256(parts: Chunks) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def chunks_size(parts: Chunks) -> int:
    return sum(p.nbytes for p in parts)


def load_views(data: bytes) -> dict[str, np.ndarray]:
    """A safetensors file's arrays as read-only views of ``data``, copying nothing: restoring a large
    checkpoint then holds its bytes once, not once more as arrays. The views keep ``data`` alive:
    copy those that outlive the restore. Raises ``ValueError`` for a file that is not safetensors
    or whose tensors lie outside it, and for a dtype these files do not use."""
    try:
        (n,) = struct.unpack_from("<Q", data)
        header = json.loads(bytes(memoryview(data)[8 : 8 + n]))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: the header is not a JSON object")
    start, out = 8 + n, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _CODES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            lo, hi = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"safetensors entry {name!r}: {entry!r} is not a tensor this store writes") from None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= lo <= hi <= len(data) - start or hi - lo != count * dtype.itemsize:
            raise ValueError(f"safetensors entry {name!r}: bytes {lo}..{hi} do not hold {shape} {dtype}")
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=start + lo).reshape(shape)
    return out
