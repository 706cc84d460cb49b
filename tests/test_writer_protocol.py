"""The messages between the training process and its writer: each side reads exactly what the other
packed, the request's wire form stays the pickled dict both sides know, and anything that is not a
reply is refused. No process, no socket."""

from __future__ import annotations

import errno
import pickle
from typing import Any

import pytest

from checkpoint.writer_protocol import (
    MAX_MESSAGE,
    NonFiniteState,
    ReplyKind,
    Request,
    Saved,
    WriterError,
    pack_reply,
    pack_request,
    unpack_reply,
    unpack_request,
)

REPLIES: dict[str, tuple[tuple[Any, ...], Saved]] = {
    # name: (pack_reply's arguments, what unpack_reply gives)
    "saved": ((ReplyKind.SAVED, 12, 0.25, "ckpt-000000012"), Saved(12, "ckpt-000000012", 0.25)),
    "saved at step 0": ((ReplyKind.SAVED, 0, 0.0, "ckpt-000000000"), Saved(0, "ckpt-000000000", 0.0)),
    "a name beyond ASCII": ((ReplyKind.SAVED, 3, 1.5, "schritt-\u00fc"), Saved(3, "schritt-\u00fc", 1.5)),
    "a large step": ((ReplyKind.SAVED, 2**62, 1e-6, "n"), Saved(2**62, "n", 1e-6)),
    "paused": ((ReplyKind.PAUSED, 7), Saved(7, "", 0.0, paused=True)),
}


@pytest.mark.parametrize("case", list(REPLIES))
def test_a_reply_reads_back_as_packed(case: str) -> None:
    args, want = REPLIES[case]
    assert unpack_reply(pack_reply(*args)) == want


FAILURES: dict[str, tuple[bytes, str]] = {
    # name: (the bytes received, what the WriterError says)
    "a failed checkpoint": (pack_reply(ReplyKind.FAILED, 4, text="checkpoint after step 4: disk full"),
                            "checkpoint after step 4: disk full"),
    "a failure with a broken message": (pack_reply(ReplyKind.FAILED, 4) + b"\xff", "\ufffd"),
    "an unknown kind": (bytes([9]) + pack_reply(ReplyKind.SAVED, 1)[1:], "not a reply"),
    "a reply cut short": (pack_reply(ReplyKind.SAVED, 1)[:5], "not a reply"),
    "nothing": (b"", "not a reply"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failure_or_a_garbled_reply_raises_writer_error(case: str) -> None:
    data, message = FAILURES[case]
    with pytest.raises(WriterError, match=message) as got:
        unpack_reply(data)
    assert (got.value.errno, got.value.filename) == (None, None)


@pytest.mark.parametrize(("err", "path", "message"), [
    (errno.ENOSPC, "/run/checkpoints/step-000000025/train.safetensors",
     "checkpoint after step 25: No space left on device writing /run/checkpoints/step-000000025/train.safetensors"),
    (errno.EDQUOT, "/run/events.jsonl", "checkpoint after step 25: Disk quota exceeded writing /run/events.jsonl"),
    (errno.EIO, "", "checkpoint after step 25: Input/output error writing a file"),
])
def test_a_failure_with_an_errno_carries_it_and_the_path_back(err: int, path: str, message: str) -> None:
    with pytest.raises(WriterError) as got:
        unpack_reply(pack_reply(ReplyKind.FAILED, 25, text=path, err=err))
    assert str(got.value) == message
    assert (got.value.errno, got.value.filename) == (err, path or None)


def test_a_refused_non_finite_snapshot_says_what_is_not_finite() -> None:
    with pytest.raises(NonFiniteState) as got:
        unpack_reply(pack_reply(ReplyKind.NON_FINITE, 15, text="model.safetensors: fc.weight holds nan"))
    assert (got.value.step, got.value.what) == (15, "model.safetensors: fc.weight holds nan")
    assert isinstance(got.value, WriterError) and got.value.errno is None


REQUESTS: dict[str, Request] = {
    "a new layout": Request(5, [["model.safetensors", "w", "<f4", [2, 3], 0]], {"step": 5}, {"params_sha256": "m"},
                            {"source": "worker", "stall_s": 0.001}),
    "the layout unchanged": Request(6, None, {"step": 6}),
    "a pause, not durable": Request(7, None, event={"asynchronous": True}, pause={"event": "paused", "step": 7},
                                    durable=False),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_a_request_reads_back_as_packed(case: str) -> None:
    req = REQUESTS[case]
    msg = pack_request(req)
    assert unpack_request(msg) == req
    assert len(msg) < MAX_MESSAGE


def test_the_request_goes_as_the_pickled_dict_both_sides_know() -> None:
    req = Request(5, None, {"a": 1}, {"d": "f"}, {"e": 2}, None, True)
    assert pickle.loads(pack_request(req)) == {"step": 5, "layout": None, "meta": {"a": 1}, "digests": {"d": "f"},
                                                "event": {"e": 2}, "pause": None, "durable": True}


def test_a_request_without_pause_or_durable_is_a_durable_one_without_pause() -> None:
    msg = pickle.dumps({"step": "3", "layout": None, "meta": {}, "digests": {}, "event": {}})
    assert unpack_request(msg) == Request(3, None)
