"""checkpoint/state.py: the digest is equal iff the arrays are bit-equal; a state's late part is merged in
when it is packed; a TrainState survives its files and the checkpoint they make; the finiteness check that
stops a NaN from ever being committed."""

from __future__ import annotations

import numpy as np
import pytest

from checkpoint import state as state_mod
from checkpoint.state import (
    MODEL_FILE,
    TRAIN_FILE,
    StateArrays,
    TrainState,
    non_finite,
    pack,
    pack_chunks,
    params_digest,
    scan,
)
from checkpoint.store import Checkpoint

A = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}


@pytest.mark.parametrize(("other", "equal"), [
    ({"b": np.zeros(3, np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}, True),  # name order
    ({**A, "w": np.asfortranarray(A["w"])}, True),  # memory layout
    ({**A, "b": np.array([0.0, -0.0, 0.0], np.float32)}, False),  # -0.0 == 0.0, but not bit-equal
    ({**A, "w": A["w"].reshape(3, 2)}, False),  # shape
    ({**A, "w": A["w"].astype(np.float64)}, False),  # dtype
    ({"w2": A["w"], "b": A["b"]}, False),  # name
    ({"w": A["w"]}, False),  # a missing array
])
def test_params_digest(other: dict[str, np.ndarray], equal: bool) -> None:
    assert (params_digest(other) == params_digest(A)) is equal


def test_a_late_part_is_merged_when_packed_and_its_digest_filled_in() -> None:
    calls = []

    def late() -> StateArrays:
        calls.append(1)
        return StateArrays({TRAIN_FILE: {"rng/x": np.ones(2, np.uint32)}}, {"rng": {"seed": 1}})

    state = StateArrays({MODEL_FILE: A, TRAIN_FILE: {"order": np.arange(4)}}, {"step": 3},
                        {"params_sha256": MODEL_FILE}, late=late)
    assert calls == []  # nothing happens before it is packed
    files, meta = pack(state)
    assert calls == [1]
    assert meta == {"step": 3, "rng": {"seed": 1}, "params_sha256": params_digest(A)}
    assert set(files) == {MODEL_FILE, TRAIN_FILE}
    chunked, meta2 = pack_chunks(state)
    assert {k: b"".join(v) for k, v in chunked.items()} == files and meta2 == meta


def train_state() -> TrainState:
    rng = ({"mt": np.arange(5, dtype=np.uint32)}, {"pos": 3})
    return TrainState(step=12, epoch=1, batch=2, model=A, optimizer={"w_moment1": np.full(3, 0.5, np.float32)},
                      lr_scheduler={"last_epoch": 12}, rng=lambda: rng, order=np.array([3, 1, 0, 2], np.int32),
                      extra={"note": "x"})


@pytest.mark.parametrize("rng_late", [True, False])
def test_a_train_state_round_trips_through_its_checkpoint(rng_late: bool) -> None:
    state = train_state()
    files, meta = pack(state.arrays(rng_late=rng_late))
    back = TrainState.from_checkpoint(Checkpoint(step=12, name="step-000000012", files=files, meta=meta))
    assert (back.step, back.epoch, back.batch, back.lr_scheduler, back.extra) == (12, 1, 2, {"last_epoch": 12},
                                                                                   {"note": "x"})
    assert params_digest(back.model) == params_digest(A) == meta["params_sha256"]
    assert back.order.dtype == np.int64 and back.order.tolist() == [3, 1, 0, 2]  # stored as int64
    arrays, small = back.rng_state()
    assert arrays["mt"].tolist() == [0, 1, 2, 3, 4] and small == {"pos": 3}
    assert back.optimizer["w_moment1"].tolist() == [0.5, 0.5, 0.5]


F32 = np.ones((4, 5), np.float32)


def with_value(dtype: type, at: int, value: float, n: int = 20) -> np.ndarray:
    a = np.ones(n, dtype)
    a[at] = value
    return a


@pytest.mark.parametrize(("files", "found"), [
    ({}, None),
    ({"model.safetensors": {"w": F32, "b": np.zeros(3, np.float64)}}, None),
    ({"model.safetensors": {"w": with_value(np.float32, 7, np.nan)}}, "model.safetensors: w holds nan"),
    ({"model.safetensors": {"w": with_value(np.float64, 0, np.inf)}}, "model.safetensors: w holds inf"),
    ({"model.safetensors": {"w": with_value(np.float16, 19, -np.inf)}}, "model.safetensors: w holds -inf"),
    ({"train.safetensors": {"optimizer/m": F32.reshape(2, 10), "optimizer/v": with_value(np.float32, 3, np.nan)}},
     "train.safetensors: optimizer/v holds nan"),  # the optimizer's state counts too
    ({"train.safetensors": {"z": np.array([1 + 1j, complex(np.nan, 0)])}}, "train.safetensors: z holds (nan+0j)"),
    ({"train.safetensors": {"order": np.arange(10), "rng/keys": np.arange(5, dtype=np.uint32)}}, None),  # integers
    ({"model.safetensors": {"s": np.float32(np.nan)}}, "model.safetensors: s holds nan"),  # a 0-d array
    # the first in file and name order: what the message names does not depend on dict order
    ({"z.st": {"a": with_value(np.float32, 1, np.nan)}, "a.st": {"b": F32, "a": with_value(np.float32, 2, np.inf)}},
     "a.st: a holds inf"),
])
def test_non_finite_names_the_first_bad_array(files: dict, found: str | None) -> None:
    assert non_finite(files) == found


def test_a_nan_past_the_first_block_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "_FINITE_BLOCK", 8)
    a = np.ones(100, np.float32)
    a[99] = np.nan
    assert non_finite({"m": {"w": a}}) == "m: w holds nan"
    a[99] = 1.0
    assert non_finite({"m": {"w": a}}) is None


def test_it_reads_a_non_contiguous_view() -> None:
    a = np.ones((10, 10), np.float32)
    a[3, 7] = np.inf
    assert non_finite({"m": {"w": a.T}}) == "m: w holds inf"
    assert non_finite({"m": {"w": a.T[::2]}}) is None  # column 7 of the transpose's even rows: row 7 is odd


SCANNED = {
    MODEL_FILE: {"w": np.arange(30, dtype=np.float32).reshape(3, 10), "b": np.float32(2.5),
                 "t": np.arange(12, dtype=np.float64).reshape(3, 4).T},  # 0-d; not contiguous
    TRAIN_FILE: {"order": np.arange(20), "optimizer/m": np.ones(7, np.float16)},
}


@pytest.mark.parametrize("block", [1 << 20, 8, 1])
def test_scan_gives_the_params_digest_of_each_file_asked_for_in_one_read(monkeypatch: pytest.MonkeyPatch,
                                                                         block: int) -> None:
    monkeypatch.setattr(state_mod, "_FINITE_BLOCK", block)  # blocks of 8 elements: the digest spans them
    bad, digests = scan(SCANNED, {"params_sha256": MODEL_FILE, "train_sha256": TRAIN_FILE})
    assert bad is None
    assert digests == {"params_sha256": params_digest(SCANNED[MODEL_FILE]),
                       "train_sha256": params_digest(SCANNED[TRAIN_FILE])}
    assert scan(SCANNED, {}) == (None, {})


def test_scan_stops_at_a_non_finite_value_and_gives_no_digests() -> None:
    t = SCANNED[TRAIN_FILE]["optimizer/m"].copy()
    t[6] = np.inf
    files = {MODEL_FILE: SCANNED[MODEL_FILE], TRAIN_FILE: {**SCANNED[TRAIN_FILE], "optimizer/m": t}}
    assert scan(files, {"params_sha256": MODEL_FILE}) == (f"{TRAIN_FILE}: optimizer/m holds inf", {})
