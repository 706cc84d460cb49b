"""The fake metadata servers speak each cloud's protocol (checked with a bare HTTP client, not the
watcher's code): what they refuse, what they answer before and after the notice, the long poll, the
approval POST, the modes that make them hang or answer garbage, and the request log."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest

from chaos.cloudfake import GARBAGE_BODY, FakeAws, FakeAzure, FakeGcp, FakeMetadataServer, Mode


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def call(fake: FakeMetadataServer, method: str, path: str, headers: Mapping[str, str] | None = None,
         body: bytes | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    u = urlsplit(fake.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def aws(clock: Clock) -> Iterator[FakeAws]:
    with FakeAws(clock=clock) as f:
        yield f


@pytest.fixture
def gcp() -> Iterator[FakeGcp]:
    with FakeGcp(default_wait_s=2.0) as f:
        yield f


@pytest.fixture
def azure(clock: Clock) -> Iterator[FakeAzure]:
    with FakeAzure(vm_name="vm-7", clock=clock) as f:
        yield f


TTL = "X-aws-ec2-metadata-token-ttl-seconds"
ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"


def aws_token(fake: FakeAws, ttl: str = "21600") -> str:
    status, headers, body = call(fake, "PUT", "/latest/api/token", {TTL: ttl})
    assert status == 200 and headers[TTL.lower()] == ttl
    return body.decode()


# --- AWS -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {TTL: "0"}, {TTL: "21601"}, {TTL: "ten"}, {TTL: ""}],
                         ids=["no-ttl", "ttl-0", "ttl-over-6h", "ttl-not-a-number", "ttl-empty"])
def test_aws_token_put_needs_a_valid_ttl(aws: FakeAws, headers: dict[str, str]) -> None:
    assert call(aws, "PUT", "/latest/api/token", headers)[0] == 400


def test_aws_token_is_got_by_put_only(aws: FakeAws) -> None:
    assert call(aws, "GET", "/latest/api/token", {TTL: "60"})[0] == 405


@pytest.mark.parametrize("token", [None, "", "not-a-token"])
def test_aws_reads_without_a_live_token_are_401(aws: FakeAws, token: str | None) -> None:
    headers = {} if token is None else {"X-aws-ec2-metadata-token": token}
    aws.flip()
    assert call(aws, "GET", ACTION, headers)[0] == 401


def test_aws_instance_action_is_404_until_the_notice(aws: FakeAws, clock: Clock) -> None:
    auth = {"X-aws-ec2-metadata-token": aws_token(aws)}
    aws.preempt(after_s=10, window_s=5)
    assert call(aws, "GET", ACTION, auth)[0] == 404
    clock.t += 10
    status, headers, body = call(aws, "GET", ACTION, auth)
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc == {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.t + 5))}


def test_aws_rebalance_is_404_until_recommended(aws: FakeAws, clock: Clock) -> None:
    auth = {"X-aws-ec2-metadata-token": aws_token(aws)}
    assert call(aws, "GET", REBALANCE, auth)[0] == 404
    aws.rebalance()
    status, _, body = call(aws, "GET", REBALANCE, auth)
    assert status == 200 and set(json.loads(body)) == {"noticeTime"}
    assert call(aws, "GET", ACTION, auth)[0] == 404  # a recommendation is not an interruption


def test_aws_token_expires_after_its_ttl_and_can_be_revoked(aws: FakeAws, clock: Clock) -> None:
    auth = {"X-aws-ec2-metadata-token": aws_token(aws, ttl="60")}
    clock.t += 59
    assert call(aws, "GET", ACTION, auth)[0] == 404
    clock.t += 1
    assert call(aws, "GET", ACTION, auth)[0] == 401
    auth = {"X-aws-ec2-metadata-token": aws_token(aws)}
    aws.revoke_tokens()
    assert call(aws, "GET", ACTION, auth)[0] == 401


# --- GCP -------------------------------------------------------------------------------------------

PREEMPTED = "/computeMetadata/v1/instance/preempted"
FLAVOR = {"Metadata-Flavor": "Google"}


def test_gcp_refuses_a_request_without_the_flavor_header_and_signs_every_answer(gcp: FakeGcp) -> None:
    status, headers, _ = call(gcp, "GET", PREEMPTED)
    assert status == 403 and headers["metadata-flavor"] == "Google"
    assert call(gcp, "GET", PREEMPTED, {"Metadata-Flavor": "google"})[0] == 403
    status, headers, _ = call(gcp, "GET", "/computeMetadata/v1/instance/nothing-here", FLAVOR)
    assert status == 404 and headers["metadata-flavor"] == "Google"


def test_gcp_preempted_reads_false_then_true_with_a_new_etag(gcp: FakeGcp) -> None:
    status, headers, body = call(gcp, "GET", PREEMPTED, FLAVOR)
    assert (status, body) == (200, b"FALSE") and headers["metadata-flavor"] == "Google"
    gcp.flip()
    status, headers2, body = call(gcp, "GET", PREEMPTED, FLAVOR)
    assert (status, body) == (200, b"TRUE") and headers2["etag"] != headers["etag"]


def test_gcp_long_poll_waits_out_its_timeout_when_nothing_changes(gcp: FakeGcp) -> None:
    etag = call(gcp, "GET", PREEMPTED, FLAVOR)[1]["etag"]
    t = time.monotonic()
    status, _, body = call(gcp, "GET", f"{PREEMPTED}?wait_for_change=true&last_etag={etag}&timeout_sec=0.4", FLAVOR)
    waited = time.monotonic() - t
    assert (status, body) == (200, b"FALSE") and 0.35 <= waited < 2.0


def test_gcp_long_poll_returns_when_the_value_flips(gcp: FakeGcp) -> None:
    etag = call(gcp, "GET", PREEMPTED, FLAVOR)[1]["etag"]
    gcp.preempt(after_s=0.3)
    t = time.monotonic()
    status, _, body = call(gcp, "GET", f"{PREEMPTED}?wait_for_change=true&last_etag={etag}&timeout_sec=20", FLAVOR)
    assert (status, body) == (200, b"TRUE") and time.monotonic() - t < 5


def test_gcp_long_poll_on_a_stale_etag_answers_at_once(gcp: FakeGcp) -> None:
    t = time.monotonic()
    status, _, body = call(gcp, "GET", f"{PREEMPTED}?wait_for_change=true&last_etag=0000&timeout_sec=20", FLAVOR)
    assert (status, body) == (200, b"FALSE") and time.monotonic() - t < 2


def test_gcp_maintenance_event(gcp: FakeGcp) -> None:
    path = "/computeMetadata/v1/instance/maintenance-event"
    assert call(gcp, "GET", path, FLAVOR)[2] == b"NONE"
    gcp.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    assert call(gcp, "GET", path, FLAVOR)[2] == b"TERMINATE_ON_HOST_MAINTENANCE"


# --- Azure -----------------------------------------------------------------------------------------

EVENTS = "/metadata/scheduledevents?api-version=2020-07-01"
META = {"Metadata": "true"}


@pytest.mark.parametrize(("path", "headers"), [
    (EVENTS, {}), (EVENTS, {"Metadata": "True"}), ("/metadata/scheduledevents", META),
], ids=["no-metadata-header", "header-not-exactly-true", "no-api-version"])
def test_azure_refuses_with_400(azure: FakeAzure, path: str, headers: dict[str, str]) -> None:
    status, _, body = call(azure, "GET", path, headers)
    assert status == 400 and "error" in json.loads(body)


def test_azure_lists_a_preempt_event_for_this_vm_after_the_notice(azure: FakeAzure, clock: Clock) -> None:
    status, _, body = call(azure, "GET", EVENTS, META)
    assert status == 200 and json.loads(body) == {"DocumentIncarnation": 1, "Events": []}
    azure.preempt(after_s=0, window_s=30)
    doc = json.loads(call(azure, "GET", EVENTS, META)[2])
    assert doc["DocumentIncarnation"] == 2
    [event] = doc["Events"]
    assert event["EventType"] == "Preempt" and event["Resources"] == ["vm-7"]
    assert event["EventStatus"] == "Scheduled" and event["ResourceType"] == "VirtualMachine"
    assert parsedate_to_datetime(event["NotBefore"]).timestamp() == pytest.approx(clock.t + 30, abs=1)


def test_azure_records_an_approval_and_starts_the_event(azure: FakeAzure) -> None:
    event_id = azure.add_event("Terminate")
    body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
    assert call(azure, "POST", EVENTS, META, body)[0] == 200
    assert azure.approvals == [event_id]
    [event] = json.loads(call(azure, "GET", EVENTS, META)[2])["Events"]
    assert (event["EventStatus"], event["NotBefore"]) == ("Started", "")


@pytest.mark.parametrize("body", [b"", b"{}", b"not json", b'{"StartRequests": [{"EventId": "NO-SUCH"}]}'])
def test_azure_refuses_a_malformed_approval(azure: FakeAzure, body: bytes) -> None:
    azure.add_event("Preempt")
    assert call(azure, "POST", EVENTS, META, body)[0] == 400
    assert azure.approvals == []


def test_azure_tells_the_vm_name(azure: FakeAzure) -> None:
    path = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"
    assert call(azure, "GET", path, META)[:3:2] == (200, b"vm-7")


# --- modes and the request log ---------------------------------------------------------------------

def test_the_log_keeps_method_path_headers_and_body(azure: FakeAzure) -> None:
    call(azure, "POST", EVENTS, META, b'{"StartRequests": []}')
    [req] = azure.requests
    assert (req.method, req.path, req.route, req.query) == ("POST", EVENTS, "/metadata/scheduledevents",
                                                            {"api-version": "2020-07-01"})
    assert req.header("metadata") == "true" and req.body == b'{"StartRequests": []}'
    assert azure.statuses("/metadata/scheduledevents") == [400]


def test_hang_mode_takes_the_request_and_never_answers(gcp: FakeGcp) -> None:
    gcp.set_mode(Mode.HANG)
    with pytest.raises(TimeoutError):
        call(gcp, "GET", PREEMPTED, FLAVOR, timeout=0.3)
    assert len(gcp.requests) == 1 and gcp.replies == []
    gcp.set_mode(Mode.NORMAL)
    assert call(gcp, "GET", PREEMPTED, FLAVOR)[2] == b"FALSE"


def test_garbage_mode_answers_200_with_no_protocol_in_it(aws: FakeAws) -> None:
    aws.set_mode(Mode.GARBAGE)
    assert call(aws, "GET", ACTION)[::2] == (200, GARBAGE_BODY)


def test_not_http_mode_breaks_the_client(azure: FakeAzure) -> None:
    azure.set_mode(Mode.NOT_HTTP)
    with pytest.raises(http.client.HTTPException):
        call(azure, "GET", EVENTS, META)


def test_close_releases_a_hanging_request_at_once() -> None:
    fake = FakeGcp()
    fake.set_mode(Mode.HANG)
    u = urlsplit(fake.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=5)
    conn.request("GET", PREEMPTED, headers=FLAVOR)
    deadline = time.monotonic() + 5
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    t = time.monotonic()
    fake.close()
    assert time.monotonic() - t < 1.0
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.getresponse()
    conn.close()
