"""NumPy views of Paddle tensors' memory: a view at the tensor's own address where one can be made,
a copy (and no address) where not. The lean walks that find the tensors are tested beside
``LiveArrays``, which checks them against ``state_dict()``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from checkpoint.paddle_tensors import tensor_view

TENSORS: dict[str, tuple[Any, bool]] = {
    # name: (the tensor's value, whether a view is made)
    "float32 matrix": (np.arange(12, dtype=np.float32).reshape(3, 4), True),
    "int64 vector": (np.arange(5, dtype=np.int64), True),
    "a NaN in it": (np.array([1.0, np.nan], dtype=np.float32), True),
    "empty": (np.zeros((0, 3), dtype=np.float32), False),
}


@pytest.fixture(scope="module")
def paddle() -> Any:
    return pytest.importorskip("paddle")


@pytest.mark.parametrize("case", list(TENSORS))
def test_a_cpu_tensor_is_viewed_where_it_can_be(paddle: Any, case: str) -> None:
    value, is_view = TENSORS[case]
    t = paddle.to_tensor(value, place=paddle.CPUPlace())
    arr, ptr = tensor_view(t)
    assert arr.dtype == value.dtype and arr.shape == value.shape
    assert np.array_equal(arr, value, equal_nan=True)
    assert bool(ptr) is is_view
    if is_view:
        assert ptr == t.data_ptr() == arr.__array_interface__["data"][0]
        paddle.assign(paddle.to_tensor(np.ones_like(value)), output=t)  # written in place: the view sees it
        assert np.array_equal(arr, np.ones_like(value))
