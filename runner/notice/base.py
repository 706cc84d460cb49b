"""What a preemption notice is, the choice of where to watch for one, and the pure helpers shared by
every cloud: time parsing, endpoint resolution and whether a checkpoint can beat a deadline."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "NoticeSource", "NoticeKind", "NoticeChoice", "Notice", "Source", "ProtocolError", "EARLY_KINDS",
    "NOTICE_WINDOW_S", "DEFAULT_ENDPOINT", "parse_choice", "resolve_endpoint", "parse_iso_time",
    "parse_http_date", "deadline_slack", "notice_deadline_ok",
]


class NoticeSource(StrEnum):
    """Who gave the notice: a cloud's metadata server, or the scheduler's signal."""

    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    K8S = "k8s"
    SLURM = "slurm"


class NoticeKind(StrEnum):
    """What is coming. ``terminate``, ``stop`` and ``preempt`` take the machine away at the deadline;
    ``rebalance`` (AWS) and ``maintenance`` are early warnings that it may go; ``signal`` is a
    scheduler's SIGTERM (or the signal it was told to send) reaching the supervisor."""

    TERMINATE = "terminate"
    STOP = "stop"
    PREEMPT = "preempt"
    REBALANCE = "rebalance"
    MAINTENANCE = "maintenance"
    SIGNAL = "signal"


#: Kinds that warn ahead of a reclaim rather than announce one.
EARLY_KINDS = frozenset({NoticeKind.REBALANCE, NoticeKind.MAINTENANCE})

#: How long each cloud documents between its notice and the reclaim, in seconds.
NOTICE_WINDOW_S: Mapping[NoticeSource, float] = {
    NoticeSource.AWS: 120.0,    # spot instance-action: two minutes
    NoticeSource.GCP: 30.0,     # preemptible and spot VMs: 30 s, the deadline is not in the protocol
    NoticeSource.AZURE: 30.0,   # Preempt events: at least 30 s (NotBefore says exactly)
}


class NoticeChoice(StrEnum):
    """Where ``--notice`` says to look; ``auto`` probes the metadata servers and the environment."""

    AUTO = "auto"
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    K8S = "k8s"
    SLURM = "slurm"
    NONE = "none"


@dataclass(frozen=True)
class Notice:
    """One warning that the machine will be taken away.

    ``deadline`` and ``received`` are seconds since the epoch (``deadline`` is None when the source does
    not say); ``detail`` holds what identifies the notice at its source (an Azure EventId, an AWS action
    and time), so two notices with the same source, kind and detail are the same notice. ``early`` is
    set for the kinds in :data:`EARLY_KINDS` whatever the caller passed.
    """

    source: NoticeSource
    kind: NoticeKind
    deadline: float | None
    received: float
    detail: Mapping[str, Any] = field(default_factory=dict)
    early: bool = False

    def __post_init__(self) -> None:
        if self.kind in EARLY_KINDS and not self.early:
            object.__setattr__(self, "early", True)

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """The notice's identity: the time it was received and the deadline derived from it do not count."""
        return (self.source.value, self.kind.value, tuple(sorted((k, str(v)) for k, v in self.detail.items())))

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source.value, "kind": self.kind.value, "deadline": self.deadline,
                "received": self.received, "detail": dict(self.detail), "early": self.early}


class ProtocolError(Exception):
    """A metadata server answered, but not in its protocol (a wrong status, a garbled body)."""


class Source(Protocol):
    """One thing to watch: ``poll`` makes one round of requests (a long poll may block for its timeout)
    and returns the notices in force now; ``close`` aborts a request in flight from another thread."""

    source: NoticeSource
    interval_s: float

    def poll(self) -> list[Notice]: ...

    def close(self) -> None: ...


def parse_choice(text: str) -> NoticeChoice:
    """``--notice``'s value, case and spaces aside; ValueError names the choices."""
    try:
        return NoticeChoice(text.strip().lower())
    except ValueError:
        names = ", ".join(c.value for c in NoticeChoice)
        raise ValueError(f"unknown notice source {text!r}: choose one of {names}") from None


#: The link-local address all three clouds serve their metadata on.
DEFAULT_ENDPOINT = "http://169.254.169.254"

# The variable each cloud's SDK reads to move its metadata server, and whether it holds a whole URL
# (AWS) or only host[:port] (GCP). Azure's SDKs define none.
_ENDPOINT_ENV: Mapping[NoticeSource, tuple[str, bool]] = {
    NoticeSource.AWS: ("AWS_EC2_METADATA_SERVICE_ENDPOINT", True),
    NoticeSource.GCP: ("GCE_METADATA_HOST", False),
}


def resolve_endpoint(source: NoticeSource, metadata_url: str | None, environ: Mapping[str, str]) -> str:
    """The metadata server's base URL: ``metadata_url`` if given, else the SDK's variable, else the default."""
    if metadata_url:
        return metadata_url.rstrip("/")
    name, is_url = _ENDPOINT_ENV.get(source, ("", True))
    value = environ.get(name, "").strip() if name else ""
    if not value:
        return DEFAULT_ENDPOINT
    if not is_url and "://" not in value:
        value = "http://" + value
    return value.rstrip("/")


def parse_iso_time(text: str) -> float:
    """``2026-12-01T10:00:00Z`` (AWS) as seconds since the epoch; a time without a zone is UTC."""
    try:
        t = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ProtocolError(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def parse_http_date(text: str) -> float:
    """``Mon, 19 Sep 2016 18:29:47 GMT`` (Azure's NotBefore) as seconds since the epoch."""
    try:
        t = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, AttributeError, IndexError):
        raise ProtocolError(f"not an HTTP date: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def deadline_slack(deadline: float | None, now: float, checkpoint_cost_s: float) -> float | None:
    """Seconds to spare if a checkpoint started now takes ``checkpoint_cost_s``; negative: it misses.
    None when the notice gave no deadline."""
    if deadline is None:
        return None
    return deadline - now - checkpoint_cost_s


def notice_deadline_ok(deadline: float | None, now: float, checkpoint_cost_s: float,
                       margin_s: float = 0.0) -> bool:
    """Whether a checkpoint started now commits before the deadline, ``margin_s`` to spare.
    A notice without a deadline cannot be missed by any known amount, so it is ok."""
    slack = deadline_slack(deadline, now, checkpoint_cost_s)
    return slack is None or slack >= margin_s
