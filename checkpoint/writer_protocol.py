"""The messages between a training process and its checkpoint writer process, packed and unpacked.

One message each way per checkpoint, over a ``SOCK_SEQPACKET`` socket pair:

- training process -> writer: a :class:`Request`, pickled as ``{"step", "layout", "meta", "digests",
  "event", "pause", "durable"}``, with a memfd attached when the buffer is new. ``layout`` (see
  :mod:`checkpoint.snapshot_buffer`) is sent when it changes and is None otherwise.
- writer -> training process: a :class:`ReplyKind`, the step, the seconds the persist took and an
  errno (0: none), packed; then the checkpoint's name, or for a failure the error message - or,
  when the failure has an errno (a full disk), the path it was writing, so that the training process
  can say which file found no space - or, for a refused non-finite snapshot, what is not finite.

Both ends' encodings are plain functions here, so that they are tested without a process.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from .snapshot_buffer import Layout

__all__ = ["MAX_MESSAGE", "ReplyKind", "Request", "Saved", "WriterError", "NonFiniteState", "pack_reply",
           "pack_request", "unpack_reply", "unpack_request"]

#: The largest message either end reads: a request holds no arrays, only their layout and metadata.
MAX_MESSAGE = 1 << 20


class WriterError(RuntimeError):
    """The writer process failed a checkpoint, or is gone; the message says why. ``errno`` and
    ``filename``: the ``OSError`` it met, if any, as in the writer's process (``ENOSPC`` and the file
    it was writing, for a full disk)."""

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, filename


class NonFiniteState(WriterError):
    """The writer refused a snapshot whose arrays hold a NaN or an infinity; nothing was written.
    ``what`` names the file and the array (``"model.safetensors: fc.weight holds nan"``)."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"checkpoint after step {step}: {what}")
        self.step, self.what = step, what


class Saved(NamedTuple):
    """The writer's answer for a checkpoint that is committed, or paused as asked."""

    step: int
    name: str
    seconds: float  # from the message's arrival to the commit, in the writer
    paused: bool = False  # the writer stopped between the files as asked, and stays stopped


class ReplyKind(IntEnum):
    """How the writer ended a checkpoint: committed it, stopped between its files for good (chaos
    testing's torn checkpoint; the name is empty), failed it (an error message follows), or refused
    it because its arrays are not finite (what is not follows)."""

    SAVED = 0
    PAUSED = 1
    FAILED = 2
    NON_FINITE = 3


_REPLY = struct.Struct("<Bqdi")


def pack_reply(kind: ReplyKind, step: int, seconds: float = 0.0, text: str = "", err: int = 0) -> bytes:
    """The writer's answer: ``text`` is the checkpoint's name; for a failure the error message, or
    with an ``err`` (an errno), the path being written; for a non-finite snapshot what is not finite."""
    return _REPLY.pack(kind, step, seconds, err) + text.encode("utf-8")


def unpack_reply(data: bytes) -> Saved:
    """The answer :func:`pack_reply` made; raises :class:`WriterError` for a failure (with its errno
    and file name, if it had one), :class:`NonFiniteState` for a refused snapshot, and
    :class:`WriterError` for an answer that is not one."""
    try:
        raw_kind, step, seconds, err = _REPLY.unpack_from(data)
        kind = ReplyKind(raw_kind)
    except (struct.error, ValueError):
        raise WriterError(f"the checkpoint writer answered {bytes(data[:_REPLY.size])!r}, not a reply") from None
    text = data[_REPLY.size :].decode("utf-8", "replace")
    if kind is ReplyKind.FAILED and err:
        raise WriterError(f"checkpoint after step {step}: {os.strerror(err)} writing {text or 'a file'}",
                          errno=err, filename=text or None)
    if kind is ReplyKind.FAILED:
        raise WriterError(text)
    if kind is ReplyKind.NON_FINITE:
        raise NonFiniteState(step, text)
    return Saved(step, text, seconds, kind is ReplyKind.PAUSED)


@dataclass(frozen=True)
class Request:
    """What the writer needs to persist one snapshot; the arrays are in the shared buffer.

    ``layout``: the buffer's layout if it changed since the last request, else None. ``event``: the
    fields of the ``checkpoint-saved`` record the writer appends. ``pause``: a record to append
    before stopping between the files for good. ``durable``: see :meth:`CheckpointStore.save`."""

    step: int
    layout: Layout | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    digests: Mapping[str, str] = field(default_factory=dict)
    event: Mapping[str, Any] = field(default_factory=dict)
    pause: Mapping[str, Any] | None = None
    durable: bool = True


def pack_request(req: Request) -> bytes:
    return pickle.dumps({"step": req.step, "layout": req.layout, "meta": dict(req.meta),
                         "digests": dict(req.digests), "event": req.event, "pause": req.pause,
                         "durable": req.durable}, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_request(msg: bytes) -> Request:
    """The request :func:`pack_request` made (unpickled: it comes from the process that started the
    writer, over a private socket pair). ``pause`` and ``durable`` may be left out."""
    d = pickle.loads(msg)
    return Request(step=int(d["step"]), layout=d["layout"], meta=d["meta"], digests=d["digests"],
                   event=d["event"], pause=d.get("pause"), durable=bool(d.get("durable", True)))
