"""``auto``: which cloud this is, found cheaply and silently, and the sources that watch it.

The three metadata servers are probed in parallel, each with the protocol's own request, under one
short budget (0.3 s) and without retries; a connect timeout keeps an unreachable 169.254.169.254 from
hanging. The first to answer with its protocol's signature wins; with none, the environment says
whether Slurm or Kubernetes will signal; otherwise there is nothing to watch.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import aws, azure, gcp
from .base import NoticeChoice, NoticeSource, Source, resolve_endpoint
from .transport import HttpTransport, Response, Transport, TransportError

__all__ = ["Detection", "detect", "probe_signature", "choice_from_env", "sources_for", "PROBE_BUDGET_S"]

PROBE_BUDGET_S = 0.3

_CLOUDS = (NoticeChoice.AWS, NoticeChoice.GCP, NoticeChoice.AZURE)


@dataclass(frozen=True)
class Detection:
    """What ``auto`` found, for the caller to log once."""

    choice: NoticeChoice
    endpoint: str | None
    reason: str
    elapsed_s: float

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"notice source: {self.choice.value}{where} ({self.reason}, {self.elapsed_s * 1000:.0f} ms)"


def _probe_request(cloud: NoticeChoice, base: str) -> tuple[str, str, dict[str, str]]:
    """The request that makes each server sign its answer: method, URL, headers."""
    if cloud is NoticeChoice.AWS:
        return "PUT", base + aws.TOKEN_PATH, {aws.TTL_HEADER: "60"}
    if cloud is NoticeChoice.GCP:
        return "GET", base + gcp.INSTANCE_PATH + gcp.PREEMPTED, {gcp.FLAVOR_HEADER: gcp.FLAVOR}
    return "GET", base + "/metadata/versions", {azure.METADATA_HEADER: "true"}


def probe_signature(cloud: NoticeChoice, resp: Response) -> bool:
    """Whether an answer is that cloud's metadata server: AWS echoes the token's lifetime with a token,
    GCP signs with ``Metadata-Flavor: Google``, Azure lists its API versions."""
    if cloud is NoticeChoice.AWS:
        return resp.status == 200 and resp.header(aws.TTL_HEADER) is not None and bool(resp.body.strip())
    if cloud is NoticeChoice.GCP:
        return resp.header(gcp.FLAVOR_HEADER) == gcp.FLAVOR
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return False
    return resp.status == 200 and isinstance(doc, dict) and isinstance(doc.get("apiVersions"), list)


def choice_from_env(environ: Mapping[str, str]) -> NoticeChoice:
    """Without a metadata server: Slurm if this is a Slurm job (its nodes may be pods), else Kubernetes
    if this is a pod, else none."""
    if environ.get("SLURM_JOB_ID"):
        return NoticeChoice.SLURM
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return NoticeChoice.K8S
    return NoticeChoice.NONE


def _endpoint(cloud: NoticeChoice, metadata_url: str | None, environ: Mapping[str, str]) -> str:
    return resolve_endpoint(NoticeSource(cloud.value), metadata_url, environ)


def detect(metadata_url: str | None = None, environ: Mapping[str, str] | None = None,
           budget_s: float = PROBE_BUDGET_S,
           transport_factory: Callable[[float], Transport] = HttpTransport) -> Detection:
    """Probe the three clouds at once for at most ``budget_s``; fall back on the environment."""
    env = os.environ if environ is None else environ
    start = time.monotonic()
    answers: queue.Queue[tuple[NoticeChoice, bool]] = queue.Queue()
    transports = {cloud: transport_factory(budget_s) for cloud in _CLOUDS}

    def probe(cloud: NoticeChoice) -> None:
        method, url, headers = _probe_request(cloud, _endpoint(cloud, metadata_url, env))
        try:
            ok = probe_signature(cloud, transports[cloud].request(method, url, headers, timeout_s=budget_s))
        except TransportError:
            ok = False
        answers.put((cloud, ok))

    for cloud in _CLOUDS:
        threading.Thread(target=probe, args=(cloud,), name=f"notice-probe-{cloud.value}", daemon=True).start()
    found, heard = None, 0
    while found is None and heard < len(_CLOUDS):
        try:
            cloud, ok = answers.get(timeout=max(0.0, start + budget_s - time.monotonic()))
        except queue.Empty:
            break
        heard += 1
        found = cloud if ok else None
    for t in transports.values():
        t.abort()  # the probes still out end now
    elapsed = time.monotonic() - start
    if found is not None:
        return Detection(found, _endpoint(found, metadata_url, env), "its metadata server answered", elapsed)
    choice = choice_from_env(env)
    reason = {NoticeChoice.SLURM: "SLURM_JOB_ID is set", NoticeChoice.K8S: "KUBERNETES_SERVICE_HOST is set"}.get(
        choice, "no metadata server answered and no scheduler is named in the environment")
    return Detection(choice, None, reason, elapsed)


def sources_for(choice: NoticeChoice, metadata_url: str | None = None,
                environ: Mapping[str, str] | None = None) -> list[Source]:
    """What to poll for a cloud; Kubernetes and Slurm notices are signals, and ``none`` is nothing."""
    env = os.environ if environ is None else environ
    if choice is NoticeChoice.AUTO:
        raise ValueError("detect() the cloud before asking for its sources")
    if choice is NoticeChoice.AWS:
        return [aws.AwsSource(metadata_url, environ=env)]
    if choice is NoticeChoice.GCP:
        return [gcp.GcpSource(key, metadata_url, environ=env) for key in (gcp.PREEMPTED, gcp.MAINTENANCE_EVENT)]
    if choice is NoticeChoice.AZURE:
        return [azure.AzureSource(metadata_url, environ=env)]
    return []
