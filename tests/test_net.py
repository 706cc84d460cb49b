"""model/net.py: the seed's CNN takes any square input of 4 pixels or more and gives one score per class."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def paddle() -> Any:
    return pytest.importorskip("paddle")


@pytest.mark.parametrize(("size", "classes"), [(28, 10), (8, 10), (4, 3), (13, 2)])
def test_one_score_per_class_for_any_square_input(paddle: Any, size: int, classes: int) -> None:
    from model.net import MnistCNN

    paddle.seed(0)
    net = MnistCNN(size=size, num_classes=classes)
    x = paddle.to_tensor(np.zeros((5, 1, size, size), np.float32))
    assert net(x).shape == [5, classes]
    side = size // 4
    assert net.fc.weight.shape == [20 * side * side, classes]


def test_an_input_too_small_for_two_pools_is_refused(paddle: Any) -> None:
    from model.net import MnistCNN

    with pytest.raises(ValueError, match="input size 3 is too small for two 2x2 pools"):
        MnistCNN(size=3)


def test_the_same_seed_builds_the_same_weights(paddle: Any) -> None:
    from model.net import MnistCNN

    def weights() -> dict[str, np.ndarray]:
        paddle.seed(7)
        return {k: v.numpy() for k, v in MnistCNN().state_dict().items()}

    a, b = weights(), weights()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
