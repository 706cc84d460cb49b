"""The seed's CNN: two 5x5 conv + ReLU + 2x2 max-pool stages and a linear classifier."""

from __future__ import annotations

import paddle
from paddle import nn

__all__ = ["MnistCNN"]


class MnistCNN(nn.Layer):
    """conv(5x5, 20, pad 2)-ReLU-pool(2) twice, then (optionally dropout and) linear to ``num_classes``,
    for any square input."""

    def __init__(self, size: int = 28, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if size < 4:
            raise ValueError(f"input size {size} is too small for two 2x2 pools")
        self.conv1 = nn.Conv2D(1, 20, kernel_size=5, stride=1, padding=2)
        self.pool1 = nn.MaxPool2D(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2D(20, 20, kernel_size=5, stride=1, padding=2)
        self.pool2 = nn.MaxPool2D(kernel_size=2, stride=2)
        side = size // 2 // 2
        self.fc = nn.Linear(20 * side * side, num_classes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.pool1(nn.functional.relu(self.conv1(x)))
        x = self.pool2(nn.functional.relu(self.conv2(x)))
        x = paddle.flatten(x, 1)
        return self.fc(self.dropout(x) if self.dropout is not None else x)
