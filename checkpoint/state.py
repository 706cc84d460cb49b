"""What one training checkpoint holds, as plain NumPy arrays and JSON, with no framework in sight.

Two tensor files, both safetensors (no pickle anywhere): ``model.safetensors`` holds the weights
alone, so users can take them out as they are; ``train.safetensors`` holds the optimizer state, the
epoch's sample order and the large RNG states. Small values - the position in the data, the LR
scheduler, the rest of the RNG states - go to the manifest's metadata as JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load

from .store import Checkpoint
from .tensorfile import Chunks, chunks, serialize

__all__ = ["MODEL_FILE", "TRAIN_FILE", "RngState", "StateArrays", "TrainState", "pack", "pack_chunks",
           "params_digest", "non_finite", "scan"]

MODEL_FILE = "model.safetensors"
TRAIN_FILE = "train.safetensors"

#: RNG states: large parts as arrays, small ones as JSON.
RngState = tuple[Mapping[str, np.ndarray], Mapping[str, Any]]


def params_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in name order: equal iff bit-equal."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])  # a 0-d array comes back 1-d, which the digest keeps
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8).data)  # the raw bytes, not copied
    return h.hexdigest()


#: Elements checked at a time by :func:`non_finite`: its temporary stays small for any array.
_FINITE_BLOCK = 1 << 20


def non_finite(files: Mapping[str, Mapping[str, np.ndarray]]) -> str | None:
    """The first floating-point array holding a NaN or an infinity, as ``"FILE: NAME holds nan"``,
    or None if all are finite. Integer arrays (RNG states, the sample order) cannot be non-finite.
    It reads each float once, in blocks: under 1 ms per million parameters."""
    return scan(files, {})[0]


def scan(files: Mapping[str, Mapping[str, np.ndarray]],
         digests: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """One read of the arrays for what a writer checks and records before writing them: the first
    non-finite value, as :func:`non_finite` words it (then no digests), and the :func:`params_digest`
    of each file ``digests`` names, by metadata key. Each block is checked and hashed while it is in
    the CPU's cache, instead of one pass over the state for each."""
    hashers = {fname: hashlib.sha256() for fname in set(digests.values())}
    for fname in sorted(files):
        arrays, h = files[fname], hashers.get(fname)
        for name in sorted(arrays):
            a = np.asarray(arrays[name])
            floats = a.dtype.kind in "fc"
            if h is None and not floats:
                continue
            a = np.ascontiguousarray(a)  # as params_digest has it, a 0-d array 1-d
            if h is not None:
                h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            flat = a.reshape(-1)
            for i in range(0, flat.size, _FINITE_BLOCK):
                block = flat[i : i + _FINITE_BLOCK]
                if floats and not np.isfinite(block).all():
                    return f"{fname}: {name} holds {block[~np.isfinite(block)][0]}", {}
                if h is not None:
                    h.update(block.view(np.uint8).data)
    return None, {key: hashers[fname].hexdigest() for key, fname in digests.items()}


@dataclass(frozen=True)
class StateArrays:
    """A checkpoint before serialisation: the arrays of each file, the manifest's metadata, and
    ``digests``: metadata keys to fill with the :func:`params_digest` of one file's arrays.

    The arrays may be live views of training tensors: whoever takes them must copy or pack them
    before training goes on (the worker does, before ``checkpoint()`` returns). ``late``, if set,
    gives more arrays and metadata from values already copied; it may run later, on another thread."""

    files: Mapping[str, Mapping[str, np.ndarray]]
    meta: Mapping[str, Any]
    digests: Mapping[str, str] = field(default_factory=dict)
    late: Callable[[], StateArrays] | None = None

    def merged(self, other: StateArrays) -> StateArrays:
        files = {f: dict(a) for f, a in self.files.items()}
        for f, arrays in other.files.items():
            files.setdefault(f, {}).update(arrays)
        return StateArrays(files, {**self.meta, **other.meta}, {**self.digests, **other.digests}, other.late)

    def complete(self) -> StateArrays:
        """This with its ``late`` part filled in."""
        return self if self.late is None else self.merged(self.late()).complete()


def pack(state: StateArrays) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The checkpoint's files as safetensors bytes, and its metadata with the digests filled in."""
    state = state.complete()
    return {name: serialize(arrays) for name, arrays in state.files.items()}, _meta(state)


def pack_chunks(state: StateArrays) -> tuple[dict[str, Chunks], dict[str, Any]]:
    """As :func:`pack`, with each file as buffers that view the arrays: the same bytes, not joined.
    Write them before the arrays change."""
    state = state.complete()
    return {name: chunks(arrays) for name, arrays in state.files.items()}, _meta(state)


def _meta(state: StateArrays) -> dict[str, Any]:
    meta = dict(state.meta)
    for key, fname in state.digests.items():
        meta[key] = params_digest(state.files[fname])
    return meta


def _section(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class TrainState:
    """Everything the next step needs to be bit-identical to an uninterrupted run.

    ``step`` counts completed steps; ``epoch`` and ``batch`` say where the next step reads, in the
    epoch's sample ``order``. ``rng`` may be a callable that encodes the RNG states when the files
    are made, so that an asynchronous checkpoint does that work off the training thread.
    """

    step: int
    epoch: int
    batch: int
    model: Mapping[str, np.ndarray]
    optimizer: Mapping[str, np.ndarray]
    lr_scheduler: Mapping[str, Any]
    rng: RngState | Callable[[], RngState]
    order: np.ndarray
    extra: Mapping[str, Any] = field(default_factory=dict)

    def rng_state(self) -> RngState:
        return self.rng() if callable(self.rng) else self.rng

    def arrays(self, *, rng_late: bool = True) -> StateArrays:
        """The model and optimizer arrays now; the RNG states (already copied) encoded ``late``, or
        now with ``rng_late=False``."""
        train = {f"optimizer/{k}": v for k, v in self.optimizer.items()}
        train["order"] = self.order if self.order.dtype == np.int64 else self.order.astype(np.int64)
        meta = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "lr_scheduler": dict(self.lr_scheduler),
            "extra": dict(self.extra),
        }
        if rng_late:
            return StateArrays({MODEL_FILE: self.model, TRAIN_FILE: train}, meta, {"params_sha256": MODEL_FILE},
                               late=self._rng_arrays)
        rng = self._rng_arrays()
        train.update(rng.files[TRAIN_FILE])
        meta.update(rng.meta)
        return StateArrays({MODEL_FILE: self.model, TRAIN_FILE: train}, meta, {"params_sha256": MODEL_FILE})

    def _rng_arrays(self) -> StateArrays:
        arrays, meta = self.rng_state()
        return StateArrays({TRAIN_FILE: {f"rng/{k}": v for k, v in arrays.items()}}, {"rng": dict(meta)})

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        return pack(self.arrays())

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> TrainState:
        meta = ckpt.meta
        train = st_load(ckpt.files[TRAIN_FILE])
        return cls(
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            batch=int(meta["batch"]),
            model=st_load(ckpt.files[MODEL_FILE]),
            optimizer=_section(train, "optimizer/"),
            lr_scheduler=meta["lr_scheduler"],
            rng=(_section(train, "rng/"), meta["rng"]),
            order=train["order"],
            extra=meta.get("extra", {}),
        )
