"""The messages between a training process and its checkpoint writer process, packed and unpacked.

One message each way per checkpoint, over a ``SOCK_SEQPACKET`` socket pair:

- training process -> writer: a :class:`Request`, pickled as ``{"step", "layout", "meta", "digests",
  "event", "pause", "durable"}``, with a memfd attached when the buffer is new. ``layout`` (see
  :mod:`checkpoint.snapshot_buffer`) is sent when it changes and is None otherwise.
- writer -> training process: a :class:`ReplyKind`, the step and the seconds the persist took,
  packed; then the checkpoint's name, or for a failure the error message.

Both ends' encodings are plain functions here, so that they are tested without a process.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from .snapshot_buffer import Layout

__all__ = ["MAX_MESSAGE", "ReplyKind", "Request", "Saved", "WriterError", "pack_reply", "pack_request",
           "unpack_reply", "unpack_request"]

#: The largest message either end reads: a request holds no arrays, only their layout and metadata.
MAX_MESSAGE = 1 << 20


class WriterError(RuntimeError):
    """The writer process failed a checkpoint, or is gone; the message says why."""


class Saved(NamedTuple):
    """The writer's answer for a checkpoint that is committed, or paused as asked."""

    step: int
    name: str
    seconds: float  # from the message's arrival to the commit, in the writer
    paused: bool = False  # the writer stopped between the files as asked, and stays stopped


class ReplyKind(IntEnum):
    """How the writer ended a checkpoint: committed it, stopped between its files for good (chaos
    testing's torn checkpoint; the name is empty), or failed it (an error message follows)."""

    SAVED = 0
    PAUSED = 1
    FAILED = 2


_REPLY = struct.Struct("<Bqd")


def pack_reply(kind: ReplyKind, step: int, seconds: float = 0.0, text: str = "") -> bytes:
    """The writer's answer: ``text`` is the checkpoint's name, or for a failure the error message."""
    return _REPLY.pack(kind, step, seconds) + text.encode("utf-8")


def unpack_reply(data: bytes) -> Saved:
    """The answer :func:`pack_reply` made; raises :class:`WriterError` for a failure, or for an answer
    that is not one."""
    try:
        raw_kind, step, seconds = _REPLY.unpack_from(data)
        kind = ReplyKind(raw_kind)
    except (struct.error, ValueError):
        raise WriterError(f"the checkpoint writer answered {bytes(data[:_REPLY.size])!r}, not a reply") from None
    text = data[_REPLY.size :].decode("utf-8", "replace")
    if kind is ReplyKind.FAILED:
        raise WriterError(text)
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
