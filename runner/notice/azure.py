"""Azure: Scheduled Events.

``GET /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true`` (400 without) answers
``{"DocumentIncarnation": n, "Events": [...]}``; each event names its ``EventId``, ``EventType``
(``Preempt``, ``Terminate``, ``Reboot``, ``Redeploy``, ``Freeze``), the VMs it hits (``Resources``) and
``NotBefore``, an HTTP date (blank once it started). A Preempt or Terminate event for this VM is a
notice with NotBefore as its deadline; Reboot and Redeploy are maintenance warnings; Freeze (a pause of
seconds) is not a notice. POSTing ``{"StartRequests": [{"EventId": id}]}`` to the same URL approves an
event, so it starts without waiting out its NotBefore. Azure suggests polling about once a second.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .base import Notice, NoticeKind, NoticeSource, ProtocolError, parse_http_date, resolve_endpoint
from .transport import HttpTransport, Response, Transport, TransportError

__all__ = [
    "AzureSource", "METADATA_HEADER", "EVENTS_PATH", "EVENTS_API", "NAME_PATH", "NAME_API",
    "parse_events", "event_notice", "approval_body",
]

METADATA_HEADER = "Metadata"
EVENTS_PATH = "/metadata/scheduledevents"
EVENTS_API = "2020-07-01"
NAME_PATH = "/metadata/instance/compute/name"
NAME_API = "2021-02-01"

# Azure's VM names: letters, digits, '-', '_' and '.', at most 80 (64 on Linux, 15 on Windows).
_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")

_KINDS: Mapping[str, NoticeKind] = {
    "Preempt": NoticeKind.PREEMPT, "Terminate": NoticeKind.TERMINATE,
    "Reboot": NoticeKind.MAINTENANCE, "Redeploy": NoticeKind.MAINTENANCE,
}


def event_notice(event: Mapping[str, Any], vm_name: str | None, now: float) -> Notice | None:
    """The notice one event gives this VM, if any; all VMs are this one while its name is unknown."""
    kind = _KINDS.get(str(event.get("EventType")))
    event_id, resources = event.get("EventId"), event.get("Resources", [])
    if not isinstance(event_id, str) or not event_id or not isinstance(resources, list):
        raise ProtocolError(f"not a scheduled event: {str(event)[:80]}")
    if kind is None or event.get("ResourceType", "VirtualMachine") != "VirtualMachine":
        return None
    if vm_name is not None and vm_name not in resources:
        return None
    not_before = str(event.get("NotBefore") or "").strip()
    deadline = parse_http_date(not_before) if not_before else None
    return Notice(NoticeSource.AZURE, kind, deadline, now,
                  {"EventId": event_id, "EventType": event["EventType"], "Resources": ",".join(map(str, resources))})


def parse_events(resp: Response, vm_name: str | None, now: float) -> list[Notice]:
    """Every notice for this VM in a Scheduled Events document."""
    if resp.status != 200:
        raise ProtocolError(f"scheduledevents answered {resp.status} {resp.body[:60]!r}")
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise ProtocolError(f"not JSON: {resp.body[:60]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Events"), list) or "DocumentIncarnation" not in doc:
        raise ProtocolError(f"not a Scheduled Events document: {resp.body[:80]!r}")
    found = []
    for event in doc["Events"]:
        if not isinstance(event, dict):
            raise ProtocolError(f"not an event: {str(event)[:80]}")
        notice = event_notice(event, vm_name, now)
        if notice is not None:
            found.append(notice)
    return found


def approval_body(event_ids: list[str]) -> bytes:
    return json.dumps({"StartRequests": [{"EventId": e} for e in event_ids]}).encode()


class AzureSource:
    """Polls Scheduled Events for this VM, whose name it asks the metadata server once."""

    source = NoticeSource.AZURE
    headers: Mapping[str, str] = {METADATA_HEADER: "true"}

    def __init__(self, endpoint: str | None = None, *, vm_name: str | None = None, interval_s: float = 1.0,
                 timeout_s: float = 2.0, transport: Transport | None = None,
                 clock: Callable[[], float] = time.time, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.base = resolve_endpoint(NoticeSource.AZURE, endpoint, env)
        self.vm_name = vm_name
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.transport: Transport = transport or HttpTransport()
        # Approving comes after the job saved its state, maybe after the watcher closed: its own edge.
        self.approve_transport: Transport = transport or HttpTransport()
        self.clock = clock

    @property
    def events_url(self) -> str:
        return f"{self.base}{EVENTS_PATH}?api-version={EVENTS_API}"

    def poll(self) -> list[Notice]:
        if self.vm_name is None:  # asked again each round until known; meanwhile every VM's events count
            self.vm_name = self._ask_name()
        resp = self.transport.request("GET", self.events_url, self.headers, timeout_s=self.timeout_s)
        return parse_events(resp, self.vm_name, self.clock())

    def approve(self, event_id: str) -> bool:
        """Let the event start now (the job has saved its state); True if the server took it."""
        try:
            resp = self.approve_transport.request("POST", self.events_url,
                                          {**self.headers, "Content-Type": "application/json"},
                                          body=approval_body([event_id]), timeout_s=self.timeout_s)
        except TransportError:
            return False
        return resp.status == 200

    def close(self) -> None:
        self.transport.abort()

    def _ask_name(self) -> str | None:
        """This VM's name, or None (watch every VM's events) if the server will not say."""
        url = f"{self.base}{NAME_PATH}?api-version={NAME_API}&format=text"
        try:
            resp = self.transport.request("GET", url, self.headers, timeout_s=self.timeout_s)
        except TransportError:
            return None
        name = resp.text().strip()
        return name if resp.status == 200 and _VM_NAME.fullmatch(name) else None
