"""A ``paddle.io.DataLoader`` that resumes at the exact sample: :class:`ResumableLoader`.

At the start of each epoch it draws the whole epoch's batches of sample indices from the loader's
batch sampler at once (shuffled or not, a user's ``Sampler`` or ``BatchSampler``, a
``DistributedBatchSampler``), then yields the batches from that list, counting them. A checkpoint
holds the list, the count (the *position*) and the samplers' own state after the draw, so a resume
rebuilds the epoch's order from the checkpoint and yields from the position on: nothing is read
twice, nothing skipped.

Where the randomness lives:

* ``RandomSampler`` (``shuffle=True``) and the other stock samplers draw from NumPy's global
  generator, which the job's checkpoint holds; ``DistributedBatchSampler`` counts epochs in
  ``epoch``. A sampler's own state is saved through its ``state_dict()``/``set_state_dict()`` if it
  has them, else its NumPy ``Generator``, ``RandomState`` and ``random.Random`` attributes and an
  integer ``epoch`` are (:func:`sampler_state`). A ``RandomSampler(generator=...)`` draws from a
  Python generator, whose state cannot be saved: it is refused.
* With ``num_workers=0`` the batches are read and collated on the training thread, not on
  Paddle's prefetching thread, so anything the dataset draws from the global generators happens at
  a fixed point between steps and is in the checkpoint.
* With ``num_workers > 0`` the batches left in the epoch go to a new ``DataLoader`` over exactly
  those indices. Its worker processes draw from generators of their own, which no checkpoint can
  hold, and which batch lands on which worker changes on a resume: augmentation in the dataset must
  seed itself from the sample and the epoch, which :func:`sample_rng` does. Making
  the loader, which draws its workers' base seed from NumPy's global generator, leaves that
  generator as it was, and the workers ignore SIGTERM: a preemption notice is the training
  process's to act on. So a loader still iterating is closed (its workers told to leave) by
  :meth:`ResumableLoader.close`, and at the latest when the process exits.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import paddle
from paddle.io.dataloader.collate import default_collate_fn

__all__ = ["ResumableLoader", "sample_rng", "pack_batches", "unpack_batches", "check_position", "to_json", "from_json",
           "sampler_state", "set_sampler_state", "close_fds_of"]


# -- pure parts ------------------------------------------------------------------------------------------


def pack_batches(batches: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """An epoch's batches of sample indices as two read-only int64 arrays: every index in order, and
    each batch's length."""
    lengths = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
    flat = np.fromiter((int(i) for b in batches for i in b), dtype=np.int64, count=int(lengths.sum()))
    for a in (flat, lengths):
        a.flags.writeable = False
    return flat, lengths


def unpack_batches(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """The batches :func:`pack_batches` packed; ValueError if the two arrays do not fit together."""
    if flat.ndim != 1 or lengths.ndim != 1 or (lengths < 0).any() or int(lengths.sum()) != len(flat):
        raise ValueError(f"batches do not fit: {len(flat)} indices, lengths summing to {int(lengths.sum())}")
    ends = np.cumsum(lengths)
    return [flat[e - n : e].tolist() for e, n in zip(ends.tolist(), lengths.tolist())]


def check_position(position: int, batches: int) -> int:
    """A saved position (batches of the epoch already yielded), checked against the epoch's length."""
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= batches:
        raise ValueError(f"position {position!r} is outside an epoch of {batches} batches")
    return position


_ARRAY = "__ndarray__"


def to_json(value: Any) -> Any:
    """``value`` as JSON: NumPy arrays as ``{"__ndarray__": [...], "dtype": ...}``, NumPy scalars as
    Python numbers, tuples as lists."""
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} as JSON")


def from_json(value: Any) -> Any:
    """What :func:`to_json` wrote, arrays back as arrays (tuples stay lists)."""
    if isinstance(value, dict):
        if set(value) == {_ARRAY, "dtype"}:
            return np.asarray(value[_ARRAY], dtype=np.dtype(value["dtype"]))
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def _attr_state(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in sorted(vars(obj).items()):
        if isinstance(v, np.random.Generator):
            out[name] = {"generator": to_json(v.bit_generator.state)}
        elif isinstance(v, np.random.RandomState):
            out[name] = {"random_state": to_json(v.get_state(legacy=True))}
        elif isinstance(v, random.Random):
            out[name] = {"random": to_json(v.getstate())}
        elif name == "epoch" and isinstance(v, int) and not isinstance(v, bool):
            out[name] = {"int": v}
    return out


def sampler_state(obj: object) -> dict[str, Any]:
    """A sampler's own state, as JSON: its ``state_dict()`` where it has one and a way back, else its
    generator attributes and an integer ``epoch`` (see the module's docstring)."""
    if callable(getattr(obj, "state_dict", None)) and _setter(obj) is not None:
        return {"state_dict": to_json(obj.state_dict())}  # type: ignore[attr-defined]
    return {"attrs": _attr_state(obj)} if hasattr(obj, "__dict__") else {}


def _setter(obj: object) -> Callable[[Any], Any] | None:
    for name in ("set_state_dict", "load_state_dict"):
        f = getattr(obj, name, None)
        if callable(f):
            return f  # type: ignore[no-any-return]
    return None


def set_sampler_state(obj: object, state: Mapping[str, Any]) -> None:
    """Put back what :func:`sampler_state` took."""
    if "state_dict" in state:
        setter = _setter(obj)
        if setter is None:
            raise ValueError(f"{type(obj).__name__} has no set_state_dict() to put its state back with")
        setter(from_json(state["state_dict"]))
        return
    for name, saved in state.get("attrs", {}).items():
        if "generator" in saved:
            getattr(obj, name).bit_generator.state = from_json(saved["generator"])
        elif "random_state" in saved:
            getattr(obj, name).set_state(tuple(from_json(saved["random_state"])))
        elif "random" in saved:
            version, internal, gauss = from_json(saved["random"])
            getattr(obj, name).setstate((version, tuple(internal), gauss))
        elif "int" in saved:
            setattr(obj, name, int(saved["int"]))


# -- the loader ------------------------------------------------------------------------------------------

_epoch_now = 0  # the epoch a resumable loader last began (or resumed) reading; loader processes inherit it


def sample_rng(index: int, seed: int = 0) -> np.random.Generator:
    """A NumPy generator for sample ``index`` of the epoch being read: the same draws wherever the
    sample is read (on the training thread or in any loader process) and however often (a resume
    reads the rest of an epoch with new processes). Use it in a dataset's ``__getitem__`` for random
    augmentation; with two resumable loaders, the epoch is that of the one that began last."""
    return np.random.default_rng((seed, _epoch_now, int(index)))


def _to_tensors(batch: Any) -> Any:
    """A collated batch as the DataLoader gives it: each NumPy array a Tensor, the structure kept."""
    if isinstance(batch, np.ndarray):
        return paddle.to_tensor(batch)
    if isinstance(batch, list | tuple):
        return type(batch)(_to_tensors(b) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_tensors(v) for k, v in batch.items()}
    return batch


class _Batches:
    """A batch sampler over a fixed list of batches: what is left of an epoch."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Sequence[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def close_fds_of(paths: Sequence[str], fd_dir: str = "/proc/self/fd") -> list[int]:
    """Close this process's descriptors of ``paths``; the ones closed."""
    want = {os.path.abspath(p) for p in paths}
    closed: list[int] = []
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return closed
    for name in fds:
        try:
            if os.readlink(os.path.join(fd_dir, name)) in want:
                os.close(int(name))
                closed.append(int(name))
        except OSError:
            continue
    return closed


class _WorkerInit:
    """A loader process's start: it lets go of ``held``, files of the training process's that it
    inherited by fork (the run directory's worker lock: held by a loader process that outlives a
    killed worker for a moment, it would keep the next attempt out); SIGTERM is the training
    process's to act on (the supervisor sends it to the whole process group); then the user's
    ``worker_init_fn``."""

    def __init__(self, user: Callable[[int], Any] | None, held: Sequence[str] = ()) -> None:
        self.user, self.held = user, tuple(held)

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        close_fds_of(self.held)
        if self.user is not None:
            self.user(worker_id)


def _samplers(loader: paddle.io.DataLoader) -> list[object]:
    """The loader's batch sampler, and the sampler it draws from if it has one."""
    bs = loader.batch_sampler
    inner = getattr(bs, "sampler", None)
    return [bs] if inner is None or inner is bs else [bs, inner]


def _check_loader(loader: object) -> paddle.io.DataLoader:
    if not isinstance(loader, paddle.io.DataLoader):
        raise TypeError(f"job.resumable() takes a paddle.io.DataLoader, not a {type(loader).__name__}")
    if isinstance(loader.dataset, paddle.io.IterableDataset) or loader.batch_sampler is None:
        raise TypeError("job.resumable() needs a map-style dataset read in batches (an IterableDataset, or "
                        "batch_size=None, has no sample index to resume at)")
    for s in _samplers(loader):
        if isinstance(s, paddle.io.RandomSampler) and s.generator is not None:
            raise TypeError("RandomSampler(generator=...) draws from a Python generator, whose state cannot be "
                            "saved: leave it out (NumPy's global generator is saved) or give the sampler a NumPy "
                            "Generator attribute")
    return loader


_open: weakref.WeakSet[ResumableLoader] = weakref.WeakSet()
_atexit_registered = False


def _close_open_loaders() -> None:
    # Registered after multiprocessing's own exit handler, so it runs first: workers that ignore
    # SIGTERM would not leave on that handler's terminate(), and its join would wait for ever.
    for loader in list(_open):
        loader.close()


def _track(loader: ResumableLoader) -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_close_open_loaders)
        _atexit_registered = True
    _open.add(loader)


class ResumableLoader:
    """Iterates like ``loader``, and can say and restore exactly where it is (see the module's
    docstring). ``on_batch`` is called with this loader each time it yields a batch; ``held`` are
    files its loader processes let go of when they start."""

    def __init__(self, loader: paddle.io.DataLoader, on_batch: Callable[[ResumableLoader], None] | None = None,
                 held: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.loader = _check_loader(loader)
        self._on_batch = on_batch
        self._held = [os.fspath(p) for p in held]
        self.epoch = -1  # the epoch drawn last; -1: none yet
        self.position = 0  # batches of that epoch yielded
        self._batches: list[list[int]] = []
        self._packed: tuple[np.ndarray, np.ndarray] = pack_batches([])
        self._samplers_state: list[dict[str, Any]] = []
        self._pending_order: tuple[int, list[list[int]], list[dict[str, Any]]] | None = None
        self._pending_position: int | None = None
        self._iteration: Generator[Any, None, None] | None = None  # the generator of the epoch under way
        _track(self)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batches(self) -> list[list[int]]:
        """The current epoch's batches of sample indices."""
        return self._batches

    @property
    def exhausted(self) -> bool:
        """The current epoch's last batch has been yielded."""
        return self.epoch >= 0 and self.position >= len(self._batches)

    def __iter__(self) -> Iterator[Any]:
        position = self._pending_position or 0
        if self._pending_order is not None:
            self.epoch, batches, self._samplers_state = self._pending_order
        else:
            batches = [list(map(int, b)) for b in self.loader.batch_sampler]  # type: ignore[union-attr]
            self.epoch += 1
            self._samplers_state = [sampler_state(s) for s in _samplers(self.loader)]
        self._pending_order = self._pending_position = None
        self._batches, self._packed = batches, pack_batches(batches)
        self.position = check_position(position, len(batches))
        global _epoch_now
        _epoch_now = self.epoch
        self.close()
        gen = self._from_workers(position) if self.loader.num_workers > 0 else self._in_process(position)
        self._iteration = gen
        return gen

    def close(self) -> None:
        """Stop the epoch under way, if any: its loader processes leave."""
        gen, self._iteration = self._iteration, None
        if gen is not None:
            gen.close()

    def _yielded(self, k: int) -> None:
        self.position = k + 1
        if self._on_batch is not None:
            self._on_batch(self)

    def _in_process(self, start: int) -> Generator[Any, None, None]:
        dataset = self.loader.dataset
        collate = self.loader.collate_fn or default_collate_fn
        for k in range(start, len(self._batches)):
            batch = _to_tensors(collate([dataset[i] for i in self._batches[k]]))
            self._yielded(k)
            yield batch

    def _from_workers(self, start: int) -> Generator[Any, None, None]:
        ld = self.loader
        inner = paddle.io.DataLoader(
            ld.dataset, batch_sampler=_Batches(self._batches[start:]), num_workers=ld.num_workers,  # type: ignore[arg-type]
            collate_fn=ld.collate_fn, use_shared_memory=ld.use_shared_memory, timeout=ld.timeout,
            worker_init_fn=_WorkerInit(ld.worker_init_fn, self._held), return_list=ld.return_list,
            use_buffer_reader=ld.use_buffer_reader, prefetch_factor=ld.prefetch_factor)
        before = np.random.get_state()
        try:
            it = iter(inner)  # draws the workers' base seed from NumPy's global generator
        finally:
            np.random.set_state(before)
        try:
            for k, batch in enumerate(it, start=start):
                self._yielded(k)
                yield batch
        finally:
            it._try_shutdown_all()  # type: ignore[attr-defined] # the workers leave now, not at exit

    # -- checkpoints -------------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Where this loader is: the epoch's batches as arrays (the same read-only objects all epoch,
        so that a checkpoint writer copies them once), and the epoch, position and samplers' state."""
        flat, lengths = self._packed
        return ({"indices": flat, "lengths": lengths},
                {"epoch": self.epoch, "position": self.position, "samplers": self._samplers_state})

    def restore_order(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Take the saved epoch's batches and the samplers' state after drawing them: the next
        iteration goes on with that epoch instead of drawing a new one."""
        if int(meta["epoch"]) < 0:
            return  # saved before this loader was first iterated
        for s, st in zip(_samplers(self.loader), meta["samplers"]):
            set_sampler_state(s, st)
        batches = unpack_batches(np.asarray(arrays["indices"]), np.asarray(arrays["lengths"]))
        self._pending_order = (int(meta["epoch"]), batches, list(meta["samplers"]))
        self.epoch = int(meta["epoch"])

    def restore_position(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Take the saved position: the next iteration starts at that batch of the epoch."""
        if int(meta["epoch"]) < 0:
            return
        self._pending_position = check_position(meta["position"], len(arrays["lengths"]))

    def __repr__(self) -> str:
        return f"ResumableLoader(epoch={self.epoch}, position={self.position}/{len(self._batches)})"
