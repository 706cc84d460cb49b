"""What went wrong with a call to an object store, sorted by what happens next: the caller decides
(a missing object, a taken key), a person must act (no bucket, denied, no credentials), or it is
retried (unreachable, transient). Errors come from fsspec, s3fs, botocore, aiohttp or the OS; they
are recognised by class name, so none of those libraries is needed to sort them."""

from __future__ import annotations

import errno
from enum import Enum

__all__ = ["RETRIED", "Trouble", "classify"]


class Trouble(Enum):
    """What went wrong with a call to the store, as far as what happens next is concerned."""

    MISSING = "missing"  # no such object: the caller decides
    EXISTS = "exists"  # a create-only write found the key taken: the caller decides
    NO_BUCKET = "no-bucket"
    DENIED = "denied"
    NO_CREDENTIALS = "no-credentials"
    UNREACHABLE = "unreachable"  # retried
    TRANSIENT = "transient"  # retried
    OTHER = "other"  # any other I/O error: reported, not retried
    NOT_IO = "not-io"  # not an I/O error at all (a bug): raised as it is


RETRIED = frozenset({Trouble.UNREACHABLE, Trouble.TRANSIENT})
# botocore's and aiohttp's connection errors, by class name: neither library is needed to name them.
_CONNECTION = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
})
_TIMEOUTS = frozenset({"ReadTimeoutError", "ClientPayloadError", "IncompleteReadError", "ResponseStreamingError"})
_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"})
_TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.EAGAIN, errno.ECONNRESET})


def _status(exc: BaseException) -> int:
    """The HTTP status behind an error translated by s3fs (its cause is botocore's ClientError)."""
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
    try:
        return int(response["ResponseMetadata"]["HTTPStatusCode"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return 0


def classify(exc: BaseException, *, missing_is_bucket: bool = False) -> Trouble:
    """Sort an exception from fsspec, s3fs, botocore or the OS. ``missing_is_bucket``: for calls
    on which "not found" can only mean the bucket (or root directory) itself, such as writes."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, FileExistsError):
        return Trouble.EXISTS
    if isinstance(exc, FileNotFoundError):
        bucket = missing_is_bucket or "bucket does not exist" in str(exc).lower()
        return Trouble.NO_BUCKET if bucket else Trouble.MISSING
    if isinstance(exc, PermissionError):
        return Trouble.DENIED
    if names & _CREDENTIALS:
        return Trouble.NO_CREDENTIALS
    if names & _CONNECTION or isinstance(exc, ConnectionRefusedError | ConnectionAbortedError):
        return Trouble.UNREACHABLE
    if names & _TIMEOUTS or isinstance(exc, TimeoutError | ConnectionError):
        return Trouble.TRANSIENT
    if isinstance(exc, OSError) and (exc.errno in _TRANSIENT_ERRNOS or _status(exc) in (409, 429)
                                     or _status(exc) >= 500):
        return Trouble.TRANSIENT  # 409: a conditional write met a concurrent one; S3 says to retry
    if isinstance(exc, OSError) or "BotoCoreError" in names or "ClientError" in names:
        return Trouble.OTHER
    return Trouble.NOT_IO
