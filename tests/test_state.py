"""What one checkpoint holds (checkpoint/state.py): here, the check that its arrays are finite, which
stops a NaN from ever being committed. The round trips are in test_store and test_paddle_state."""

from __future__ import annotations

import time

import numpy as np
import pytest

from checkpoint import state as state_mod
from checkpoint.state import non_finite

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


def test_the_check_is_cheap() -> None:
    # The built-in job's checkpoint is ~40 k parameters and ~80 k optimizer values; a million takes
    # well under a millisecond on an idle core. A generous bound, for a shared, busy machine.
    arrays = {"model.safetensors": {f"w{i}": np.ones(100_000, np.float32) for i in range(10)}}
    t0 = time.perf_counter()
    for _ in range(10):
        assert non_finite(arrays) is None
    assert (time.perf_counter() - t0) / 10 < 0.05
