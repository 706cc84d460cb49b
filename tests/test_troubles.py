"""checkpoint/troubles.py: errors from fsspec, s3fs, botocore and the OS sorted by what happens next, as
a table (the library classes are stood in for by classes of the same name)."""

from __future__ import annotations

import errno

import pytest

from checkpoint.troubles import RETRIED, Trouble, classify


class ClientError(Exception):
    """Shaped like botocore's: the status is in ``response``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = {"ResponseMetadata": {"HTTPStatusCode": status}}


def translated(status: int, err: int = errno.EIO) -> OSError:
    exc = OSError(err, "translated by s3fs")
    exc.__cause__ = ClientError(status)
    return exc


EndpointConnectionError = type("EndpointConnectionError", (Exception,), {})
NoCredentialsError = type("NoCredentialsError", (Exception,), {})
ReadTimeoutError = type("ReadTimeoutError", (Exception,), {})


@pytest.mark.parametrize(("exc", "missing_is_bucket", "trouble"), [
    (FileNotFoundError("bkt/key"), False, Trouble.MISSING),
    (FileNotFoundError("bkt/key"), True, Trouble.NO_BUCKET),
    (FileNotFoundError("The specified bucket does not exist"), False, Trouble.NO_BUCKET),
    (FileExistsError("taken"), False, Trouble.EXISTS),
    (PermissionError("Forbidden"), False, Trouble.DENIED),
    (NoCredentialsError("Unable to locate credentials"), False, Trouble.NO_CREDENTIALS),
    (EndpointConnectionError("Could not connect"), False, Trouble.UNREACHABLE),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), False, Trouble.UNREACHABLE),
    (ConnectionResetError(errno.ECONNRESET, "reset"), False, Trouble.TRANSIENT),
    (TimeoutError("timed out"), False, Trouble.TRANSIENT),
    (ReadTimeoutError("read timeout"), False, Trouble.TRANSIENT),
    (OSError(errno.EBUSY, "SlowDown"), False, Trouble.TRANSIENT),
    (OSError(errno.EREMOTEIO, "InternalError"), False, Trouble.TRANSIENT),
    (translated(503), False, Trouble.TRANSIENT),
    (translated(409), False, Trouble.TRANSIENT),
    (translated(400, errno.EINVAL), False, Trouble.OTHER),
    (OSError(errno.ENOSPC, "No space left"), False, Trouble.OTHER),
    (ValueError("a bug"), False, Trouble.NOT_IO),
])
def test_classify(exc: BaseException, missing_is_bucket: bool, trouble: Trouble) -> None:
    assert classify(exc, missing_is_bucket=missing_is_bucket) is trouble


def test_only_unreachable_and_transient_troubles_are_retried() -> None:
    assert {Trouble.UNREACHABLE, Trouble.TRANSIENT} == RETRIED
