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


# -- large tensors: checked at sampled positions, not against a whole copy ------------------------------------

BIG = 257 * 256  # more elements than SAMPLED_FROM


def copies_of_the_whole(t: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records each ``numpy()`` copy of a tensor as large as ``t`` (the sample Paddle reads is smaller)."""
    made: list[int] = []
    numpy = type(t).numpy

    def recorded(self: Any, *args: Any, **kw: Any) -> np.ndarray:
        if self.size >= t.size:
            made.append(self.size)
        return numpy(self, *args, **kw)

    monkeypatch.setattr(type(t), "numpy", recorded)
    return made


def test_a_large_tensor_is_viewed_without_a_whole_copy(paddle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from checkpoint import paddle_tensors

    assert BIG > paddle_tensors.SAMPLED_FROM
    value = np.random.default_rng(0).standard_normal((257, 256)).astype(np.float32)
    t = paddle.to_tensor(value, place=paddle.CPUPlace())
    whole = copies_of_the_whole(t, monkeypatch)
    arr, ptr = tensor_view(t)
    assert ptr == t.data_ptr() and np.array_equal(arr, value)
    assert not whole


def test_a_large_tensor_whose_memory_does_not_read_back_is_checked_whole(
        paddle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paddle's values at the sampled positions differ from the memory's (as they would for a layout the
    view misreads): the whole comparison decides, and here finds the memory right after all."""
    from checkpoint import paddle_tensors

    real = paddle_tensors._gather
    monkeypatch.setattr(paddle_tensors, "_gather", lambda flat, idx: real(flat, idx) + 1)
    value = np.arange(BIG, dtype=np.float32)
    t = paddle.to_tensor(value, place=paddle.CPUPlace())
    whole = copies_of_the_whole(t, monkeypatch)
    arr, ptr = tensor_view(t)
    assert whole and ptr == t.data_ptr() and np.array_equal(arr, value)


def test_a_large_strided_tensor_is_copied(paddle: Any) -> None:
    value = np.arange(BIG, dtype=np.float32).reshape(257, 256)
    t = paddle.to_tensor(value, place=paddle.CPUPlace()).T  # a view of the same memory, not dense in this order
    arr, ptr = tensor_view(t)
    assert ptr == 0 and np.array_equal(arr, value.T)
