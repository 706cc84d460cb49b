"""What one training checkpoint holds, as plain NumPy arrays and JSON, with no framework in sight.

Tensors go to safetensors files (no pickle anywhere); everything else - the position in the data,
the RNG states, the LR scheduler - goes to the manifest's metadata as JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .store import Checkpoint

__all__ = ["TrainState", "params_digest"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
DATA_FILE = "data.safetensors"


def params_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in name order: equal iff bit-equal."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


@dataclass(frozen=True)
class TrainState:
    """Everything the next step needs to be bit-identical to an uninterrupted run.

    ``step`` counts completed steps; ``epoch`` and ``batch`` say where the next step reads, in the
    epoch's sample ``order``.
    """

    step: int
    epoch: int
    batch: int
    model: Mapping[str, np.ndarray]
    optimizer: Mapping[str, np.ndarray]
    lr_scheduler: Mapping[str, Any]
    rng: Mapping[str, Any]
    order: np.ndarray
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files = {
            MODEL_FILE: _pack(self.model),
            OPTIMIZER_FILE: _pack(self.optimizer),
            DATA_FILE: _pack({"order": self.order.astype(np.int64)}),
        }
        meta = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "lr_scheduler": dict(self.lr_scheduler),
            "rng": dict(self.rng),
            "params_sha256": params_digest(self.model),
            "extra": dict(self.extra),
        }
        return files, meta

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> TrainState:
        meta = ckpt.meta
        return cls(
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            batch=int(meta["batch"]),
            model=st_load(ckpt.files[MODEL_FILE]),
            optimizer=st_load(ckpt.files[OPTIMIZER_FILE]),
            lr_scheduler=meta["lr_scheduler"],
            rng=meta["rng"],
            order=st_load(ckpt.files[DATA_FILE])["order"],
            extra=meta.get("extra", {}),
        )
