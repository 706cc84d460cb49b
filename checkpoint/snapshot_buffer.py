"""The shared-memory buffer a snapshot's arrays are copied into for the checkpoint writer process.

The training process copies its arrays into one memfd-backed mapping; the writer maps the same
memory read-only and packs the files from views of it, so a snapshot crosses the process boundary
without being pickled. Where each array lies is the :data:`Layout`; how the arrays get there is a
:class:`CopyPlan`, made once and reused while the same array objects come back (the live views of
training tensors do, every step), so that a copy costs a few ``np.concatenate`` calls, not one per
tensor.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .state import StateArrays

__all__ = ["ALIGN", "CopyPlan", "Layout", "SnapshotBuffer", "aligned", "buffer_files", "is_static", "plan_layout",
           "views"]

#: Every array starts at a multiple of this many bytes.
ALIGN = 64

#: Where each array lies in the buffer: ``[[file, name, dtype (its .str), shape, offset], ...]``, plain
#: lists, so that it pickles small and reads back in the writer without NumPy objects.
Layout = list[list[Any]]

#: What a layout is made from: ``(file, name, dtype, shape)`` of each array, in the state's order.
_Key = tuple[tuple[str, str, np.dtype[Any], tuple[int, ...]], ...]


def _nbytes(dtype: np.dtype[Any], shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def aligned(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def is_static(a: np.ndarray) -> bool:
    """A read-only array that owns its memory cannot change (unless made writable again, which
    :meth:`CopyPlan.copy` checks each time): once in the buffer, it need not be copied again."""
    return not a.flags.writeable and a.base is None


def plan_layout(key: _Key, static: Sequence[bool]) -> tuple[Layout, int]:
    """The layout of the arrays ``key`` describes, and the bytes it takes. The arrays that change
    (not ``static``) go first, back to back in the state's order, so that they copy in one run; each
    array starts aligned."""
    offsets, offset = [0] * len(key), 0
    for i in sorted(range(len(key)), key=static.__getitem__):
        offsets[i] = offset
        offset += aligned(_nbytes(key[i][2], key[i][3]))
    layout = [[f, n, dt.str, list(shape), off] for (f, n, dt, shape), off in zip(key, offsets)]
    return layout, offset


def views(mm: mmap.mmap, layout: Layout) -> list[np.ndarray]:
    """Views of the buffer's arrays, in the layout's order."""
    buf = np.frombuffer(mm, dtype=np.uint8)
    return [buf[off : off + _nbytes(np.dtype(dt), shape)].view(dt).reshape(shape)
            for _, _, dt, shape, off in layout]


def buffer_files(mm: mmap.mmap, layout: Layout) -> dict[str, dict[str, np.ndarray]]:
    """The buffer's arrays by file and name: what the writer packs."""
    files: dict[str, dict[str, np.ndarray]] = {}
    for (fname, name, *_), view in zip(layout, views(mm, layout)):
        files.setdefault(fname, {})[name] = view
    return files


class CopyPlan:
    """How one list of arrays goes into the buffer: each run of arrays that lie back to back in it is
    one ``np.concatenate`` (the gaps between them filled with zeros); static arrays are copied only
    when they are new; arrays that are not C-contiguous one by one."""

    def __init__(self, names: list[tuple[str, str]], arrays: list[np.ndarray], dsts: list[np.ndarray],
                 offsets: list[int], flat: np.ndarray) -> None:
        self.names = names
        static = [i for i, a in enumerate(arrays) if is_static(a)]
        self.static = [(i, dsts[i]) for i in static]
        self.static_key = [(arrays[i].dtype, arrays[i].shape) for i in static]
        self.copied: list[np.ndarray | None] = [None] * len(static)
        self.live = [i for i, a in enumerate(arrays) if not is_static(a)]
        self.held = [arrays[i] for i in self.live]  # held, so that their ids stay theirs
        self.live_key = [(id(a), a.shape) for a in self.held]
        self.runs: list[tuple[list[np.ndarray], np.ndarray]] = []
        self.singles: list[tuple[np.ndarray, np.ndarray]] = []
        run: list[np.ndarray] = []
        start = end = 0
        for i in sorted(self.live, key=offsets.__getitem__):
            a = arrays[i]
            if not a.flags.c_contiguous:
                self.singles.append((dsts[i], a))
                continue
            if run and offsets[i] != aligned(end):
                self.runs.append((run, flat[start:end]))
                run = []
            if not run:
                start = end = offsets[i]
            if offsets[i] > end:
                run.append(np.zeros(offsets[i] - end, dtype=np.uint8))
            run.append(a.reshape(-1).view(np.uint8))
            end = offsets[i] + a.nbytes
        if run:
            self.runs.append((run, flat[start:end]))

    def fits(self, names: list[tuple[str, str]], arrays: list[np.ndarray]) -> bool:
        """Whether these are the arrays the plan was made for: the same names, the same live objects
        in the same shapes, and static arrays of the same dtypes and shapes."""
        return (names == self.names and [(id(arrays[i]), arrays[i].shape) for i in self.live] == self.live_key
                and [(arrays[i].dtype, arrays[i].shape) for i, _ in self.static] == self.static_key)

    def copy(self, arrays: list[np.ndarray]) -> None:
        for srcs, dst in self.runs:
            np.concatenate(srcs, out=dst)
        for dst, src in self.singles:
            np.copyto(dst, src, casting="no")
        for k, (i, dst) in enumerate(self.static):
            src = arrays[i]
            if src is not self.copied[k] or not is_static(src):
                np.copyto(dst, src, casting="no")
                self.copied[k] = src if is_static(src) else None


class SnapshotBuffer:
    """The training process's side of the buffer: copies a state's arrays in, growing the buffer when
    they outgrow it, and keeps what the writer has not been told yet (a new buffer's descriptor, a
    new layout). Used by one thread at a time."""

    def __init__(self) -> None:
        self._mm: mmap.mmap | None = None
        self._fd_unsent: int | None = None  # a new buffer the writer has not been given yet
        self._key: _Key = ()
        self._layout: Layout = []  # of the arrays last copied
        self._plan: CopyPlan | None = None
        self._layout_unsent = True  # the writer has not been told the layout of the buffer yet

    def copy(self, state: StateArrays) -> StateArrays:
        """Copy ``state``'s arrays into the buffer; returns it completed (its ``late`` part merged)."""
        state = state.complete()
        arrays = [a for items in state.files.values() for a in items.values()]
        names = [(f, n) for f, items in state.files.items() for n in items]
        plan = self._plan
        if plan is None or not plan.fits(names, arrays):
            key = tuple((f, n, a.dtype, a.shape) for (f, n), a in zip(names, arrays))
            if key != self._key or self._mm is None:
                self._layout, size = plan_layout(key, [is_static(a) for a in arrays])
                self._grow(size)
                self._key = key
                self._layout_unsent = True
            assert self._mm is not None
            plan = self._plan = CopyPlan(names, arrays, views(self._mm, self._layout),
                                         [row[4] for row in self._layout], np.frombuffer(self._mm, dtype=np.uint8))
        plan.copy(arrays)
        return state

    def take_fd(self) -> int | None:
        """The descriptor of a buffer the writer has not been given yet (the caller sends, then closes
        it), or None."""
        fd, self._fd_unsent = self._fd_unsent, None
        return fd

    def take_layout(self) -> Layout | None:
        """The layout of the arrays last copied if the writer has not been told it yet, else None."""
        layout, self._layout_unsent = (self._layout if self._layout_unsent else None), False
        return layout

    def drop(self) -> None:
        """Forget the mapping and the plan made on it; the next copy makes a new buffer."""
        # Dropped, not closed: the mapping goes with the last view of it, and a view may outlive the
        # buffer (in the traceback of a WriterError the caller holds), where close() would raise.
        self._plan = None
        self._key = ()
        self._mm = None

    def _grow(self, size: int) -> None:
        """Make the buffer at least ``size`` bytes (half as much again, so that it seldom grows)."""
        if self._mm is not None and len(self._mm) >= size:
            return
        size = max(size + size // 2, mmap.PAGESIZE)
        fd = os.memfd_create("checkpoint-snapshot", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        self.drop()
        self._mm = mmap.mmap(fd, size)
        if self._fd_unsent is not None:
            os.close(self._fd_unsent)
        self._fd_unsent = fd
