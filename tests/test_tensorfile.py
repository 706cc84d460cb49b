"""safetensors files written from the arrays' own memory: the safetensors library reads them back
exactly, whatever the dtypes and shapes; headers are made once per layout; every tensor is aligned;
the buffers reach the disk through writev, more of them than one call takes included."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from checkpoint import tensorfile
from checkpoint.state import StateArrays, pack, pack_chunks, params_digest
from checkpoint.storage import LocalStorage
from checkpoint.tensorfile import chunks, chunks_sha256, chunks_size, serialize


def mixed(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "mask": rng.integers(0, 2, size=5).astype(bool),  # 1-byte items before 4- and 8-byte ones
        "count": np.array(7, dtype=np.int64),  # 0-d
        "empty": np.zeros((0, 4), dtype=np.float16),
        "t": rng.standard_normal((3, 4)).T,  # float64, not C-contiguous
        "keys": rng.integers(0, 2**32, size=9, dtype=np.uint32),
        "small": rng.integers(-100, 100, size=(2, 2, 2)).astype(np.int8),
        "u16": np.arange(3, dtype=np.uint16),
        "i16": np.arange(-3, 0, dtype=np.int16),
        "i32": np.arange(5, dtype=np.int32),
        "u64": np.arange(2, dtype=np.uint64),
        "half": np.linspace(0, 1, 6, dtype=np.float16),
        "bytes": np.frombuffer(b"abc", dtype=np.uint8),
    }


def header_of(data: bytes) -> dict:
    n = struct.unpack("<Q", data[:8])[0]
    assert (8 + n) % 8 == 0, "the data starts 8-byte aligned"
    return json.loads(data[8 : 8 + n])


def test_the_library_reads_back_every_dtype_and_shape_exactly() -> None:
    arrays = mixed()
    back = st_load(serialize(arrays))
    assert sorted(back) == sorted(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape, k
        assert back[k].tobytes() == np.ascontiguousarray(a).tobytes(), k


def test_every_tensor_starts_aligned_to_its_item_size_and_the_data_has_no_gaps() -> None:
    arrays = mixed()
    data = serialize(arrays)
    head = header_of(data)
    spans = sorted(tuple(e["data_offsets"]) for e in head.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == len(data) - 8 - struct.unpack("<Q", data[:8])[0]
    for name, e in head.items():
        assert e["data_offsets"][0] % arrays[name].dtype.itemsize == 0, name


def test_the_header_is_made_once_per_layout_and_the_data_are_views() -> None:
    a, b = mixed(1), mixed(2)  # same names, dtypes and shapes; other values
    ca, cb = chunks(a), chunks(b)
    assert ca[0] is cb[0]
    assert serialize(a) != serialize(b)
    a["keys"][0] ^= 1  # chunks view the arrays' memory: they see a change made after they were taken
    assert bytes(ca[1 + sorted(a, key=lambda k: -a[k].dtype.itemsize).index("keys")])[:4] == a["keys"][:1].tobytes()
    other = dict(a, w=np.zeros((4, 4), np.float32))
    assert chunks(other)[0] is not ca[0]


def test_digest_and_size_of_chunks_are_those_of_the_joined_bytes() -> None:
    parts = chunks(mixed())
    joined = b"".join(parts)
    assert chunks_sha256(parts) == hashlib.sha256(joined).hexdigest()
    assert chunks_size(parts) == len(joined)


def test_pack_and_pack_chunks_give_the_same_bytes_and_meta() -> None:
    state = StateArrays({"a.safetensors": mixed(3), "b.safetensors": {"x": np.arange(4.0)}}, {"step": 3},
                        {"digest": "a.safetensors"})
    files, meta = pack(state)
    parts, meta2 = pack_chunks(state)
    assert meta == meta2 and meta["digest"] == params_digest(state.files["a.safetensors"])
    assert {k: b"".join(v) for k, v in parts.items()} == files


@pytest.mark.parametrize("a", [np.arange(6, dtype=">f4"), np.array(["x"]), np.zeros(2, dtype=np.complex64)],
                         ids=["big-endian", "unicode", "complex"])
def test_a_dtype_safetensors_has_no_code_for_is_refused(a: np.ndarray) -> None:
    with pytest.raises(TypeError, match="no safetensors dtype"):
        serialize({"a": a})


def test_params_digest_hashes_names_dtypes_shapes_and_raw_bytes_in_name_order() -> None:
    arrays = mixed(4)
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    assert params_digest(arrays) == h.hexdigest()
    changed = dict(arrays, w=arrays["w"].copy())
    changed["w"][0, 0] = np.nextafter(changed["w"][0, 0], np.float32(1))
    assert params_digest(changed) != params_digest(arrays)


def test_local_storage_writes_more_buffers_than_one_writev_takes(tmp_path: Path) -> None:
    n = os.sysconf("SC_IOV_MAX") * 2 + 3
    parts = [memoryview(bytes([i % 251]) * (i % 7)) for i in range(n)]  # empty ones among them
    LocalStorage(tmp_path).put("big", parts)
    assert (tmp_path / "big").read_bytes() == b"".join(parts)


def test_header_cache_stays_bounded() -> None:
    for i in range(tensorfile._MAX_HEADERS * 2):
        chunks({f"x{i}": np.zeros(1, np.float32)})
    assert len(tensorfile._headers) <= tensorfile._MAX_HEADERS


# -- reading back without copying ------------------------------------------------------------------------------


def test_load_views_reads_what_the_library_reads_without_copying() -> None:
    from safetensors.numpy import save as st_save

    for data in (serialize(mixed()), st_save(mixed(1))):  # ours, and the library's own layout
        views, want = tensorfile.load_views(data), st_load(data)
        assert sorted(views) == sorted(want)
        for k, v in views.items():
            assert v.dtype == want[k].dtype and v.shape == want[k].shape and v.tobytes() == want[k].tobytes(), k
            assert not v.flags.writeable
            if v.nbytes:
                assert np.shares_memory(v, np.frombuffer(data, dtype=np.uint8)), k  # a view, not a copy


def _with_header(entries: dict, body: bytes = b"\0" * 16) -> bytes:
    text = json.dumps(entries).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize("data", [
    b"",  # no header length
    struct.pack("<Q", 10) + b"{not json}",
    _with_header([1, 2]),  # not an object
    _with_header({"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}),  # a dtype this store never writes
    _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}),  # too few bytes for the shape
    _with_header({"x": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}),  # past the end of the file
    _with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}),  # backwards
    _with_header({"x": {"dtype": "F32", "shape": [1]}}),  # no offsets
])
def test_load_views_refuses_what_is_not_a_file_it_can_view(data: bytes) -> None:
    with pytest.raises(ValueError):
        tensorfile.load_views(data)


def test_load_views_skips_the_metadata_entry() -> None:
    data = _with_header({"__metadata__": {"a": "b"}, "x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})
    assert tensorfile.load_views(data)["x"].tolist() == [0, 0]
