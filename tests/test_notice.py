"""Preemption notices: the pure parsers and decisions as tables, then each cloud's protocol spoken over
real HTTP on 127.0.0.1 to its fake (exact headers, the token flow, the long poll, the approval), the
watcher against servers that hang or answer garbage, ``auto`` without a metadata server, and sources
broken on purpose that the fakes refuse."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from chaos.cloudfake import FakeAws, FakeAzure, FakeGcp, FakeMetadataServer, Mode
from runner.notice import (
    AwsSource,
    AzureSource,
    GcpSource,
    HttpTransport,
    Notice,
    NoticeChoice,
    NoticeKind,
    NoticeSource,
    NoticeWatcher,
    ProtocolError,
    Response,
    Source,
    TransportError,
    aws,
    azure,
    deadline_slack,
    detect,
    gcp,
    notice_deadline_ok,
    parse_choice,
    parse_signal_name,
    signal_notice,
    sources_for,
)
from runner.notice.base import parse_http_date, parse_iso_time, resolve_endpoint
from runner.notice.detect import choice_from_env, probe_signature
from runner.notice.watcher import fresh_notices, next_pause

NOW = 1_800_000_000.0
T0 = parse_iso_time("2026-12-01T10:00:00Z")


def wait_for(done: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while not done() and time.monotonic() < end:
        time.sleep(0.01)
    return done()


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- pure: choices, signals, deadlines, times, endpoints -------------------------------------------

@pytest.mark.parametrize(("text", "choice"), [
    ("auto", NoticeChoice.AUTO), ("aws", NoticeChoice.AWS), ("GCP", NoticeChoice.GCP),
    (" azure ", NoticeChoice.AZURE), ("k8s", NoticeChoice.K8S), ("slurm", NoticeChoice.SLURM),
    ("none", NoticeChoice.NONE),
])
def test_parse_choice(text: str, choice: NoticeChoice) -> None:
    assert parse_choice(text) is choice


@pytest.mark.parametrize("text", ["", "ec2", "kubernetes", "off", "aws,gcp"])
def test_parse_choice_names_the_choices_when_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="auto, aws, gcp, azure, k8s, slurm, none"):
        parse_choice(text)


@pytest.mark.parametrize(("text", "sig"), [
    ("TERM", signal.SIGTERM), ("SIGTERM", signal.SIGTERM), ("usr1", signal.SIGUSR1), ("SIGUSR2", signal.SIGUSR2),
    (" int ", signal.SIGINT), ("15", signal.SIGTERM), (str(int(signal.SIGUSR1)), signal.SIGUSR1),
])
def test_parse_signal_name(text: str, sig: signal.Signals) -> None:
    assert parse_signal_name(text) is sig


@pytest.mark.parametrize("text", ["KILL", "SIGSTOP", "9", "NOPE", "", "-15", "999"])
def test_parse_signal_name_refuses_what_cannot_be_a_notice(text: str) -> None:
    with pytest.raises(ValueError):
        parse_signal_name(text)


@pytest.mark.parametrize(("env", "source", "detail"), [
    ({}, NoticeSource.K8S, {"signal": "SIGTERM"}),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, NoticeSource.K8S, {"signal": "SIGTERM"}),
    ({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "3"}, NoticeSource.SLURM,
     {"signal": "SIGTERM", "SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "3"}),
    ({"SLURM_JOB_ID": "42"}, NoticeSource.SLURM, {"signal": "SIGTERM", "SLURM_JOB_ID": "42"}),
])
def test_signal_notice(env: dict[str, str], source: NoticeSource, detail: dict[str, str]) -> None:
    n = signal_notice(signal.SIGTERM, env, NOW)
    assert (n.source, n.kind, n.deadline, n.received, dict(n.detail), n.early) == (
        source, NoticeKind.SIGNAL, None, NOW, detail, False)
    assert signal_notice(signal.SIGUSR1, env, NOW, grace_s=120).deadline == NOW + 120


@pytest.mark.parametrize(("deadline", "cost", "margin", "ok", "slack"), [
    (None, 1e9, 0.0, True, None),
    (NOW + 120, 30, 0.0, True, 90.0),
    (NOW + 120, 120, 0.0, True, 0.0),
    (NOW + 120, 121, 0.0, False, -1.0),
    (NOW + 120, 100, 30.0, False, 20.0),
    (NOW - 5, 0, 0.0, False, -5.0),
])
def test_notice_deadline_ok(deadline: float | None, cost: float, margin: float, ok: bool,
                            slack: float | None) -> None:
    assert notice_deadline_ok(deadline, NOW, cost, margin) is ok
    assert deadline_slack(deadline, NOW, cost) == slack


@pytest.mark.parametrize(("text", "epoch"), [
    ("2026-12-01T10:00:00Z", T0), ("2026-12-01T10:00:00+00:00", T0), ("2026-12-01T11:00:00+01:00", T0),
    ("2026-12-01T10:00:00", T0), ("2026-12-01T10:00:00.500Z", T0 + 0.5),
])
def test_parse_iso_time(text: str, epoch: float) -> None:
    assert parse_iso_time(text) == epoch


@pytest.mark.parametrize(("text", "epoch"), [
    ("Tue, 01 Dec 2026 10:00:00 GMT", T0), ("Tue, 01 Dec 2026 11:00:00 +0100", T0),
])
def test_parse_http_date(text: str, epoch: float) -> None:
    assert parse_http_date(text) == epoch


@pytest.mark.parametrize(("parse", "text"), [
    (parse_iso_time, ""), (parse_iso_time, "soon"), (parse_iso_time, "Tue, 01 Dec 2026 10:00:00 GMT"),
    (parse_http_date, ""), (parse_http_date, "soon"), (parse_http_date, "2026-12-01T10:00:00Z"),
])
def test_time_parsers_call_garbage_a_protocol_error(parse: Callable[[str], float], text: str) -> None:
    with pytest.raises(ProtocolError):
        parse(text)


@pytest.mark.parametrize(("source", "url", "env", "expected"), [
    (NoticeSource.AWS, None, {}, "http://169.254.169.254"),
    (NoticeSource.AWS, None, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[fd00:ec2::254]/"}, "http://[fd00:ec2::254]"),
    (NoticeSource.AWS, "http://127.0.0.1:9/", {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://x"}, "http://127.0.0.1:9"),
    (NoticeSource.GCP, None, {}, "http://169.254.169.254"),
    (NoticeSource.GCP, None, {"GCE_METADATA_HOST": "metadata.google.internal"}, "http://metadata.google.internal"),
    (NoticeSource.GCP, None, {"GCE_METADATA_HOST": "127.0.0.1:8080"}, "http://127.0.0.1:8080"),
    (NoticeSource.GCP, None, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://x"}, "http://169.254.169.254"),
    (NoticeSource.AZURE, None, {"GCE_METADATA_HOST": "x"}, "http://169.254.169.254"),
    (NoticeSource.AZURE, "http://127.0.0.1:7", {}, "http://127.0.0.1:7"),
])
def test_resolve_endpoint(source: NoticeSource, url: str | None, env: dict[str, str], expected: str) -> None:
    assert resolve_endpoint(source, url, env) == expected


def test_early_kinds_are_early_whatever_the_caller_passed_and_received_is_not_identity() -> None:
    a = Notice(NoticeSource.AWS, NoticeKind.REBALANCE, None, NOW, {"noticeTime": "x"})
    b = Notice(NoticeSource.AWS, NoticeKind.REBALANCE, None, NOW + 5, {"noticeTime": "x"})
    assert a.early and a.key == b.key and a != b
    assert not Notice(NoticeSource.AWS, NoticeKind.TERMINATE, NOW, NOW).early
    assert json.loads(json.dumps(a.to_json()))["kind"] == "rebalance"


# --- pure: each cloud's answers --------------------------------------------------------------------

def R(status: int, body: bytes | str = b"", **headers: str) -> Response:  # noqa: N802 - a table's shorthand
    raw = body.encode() if isinstance(body, str) else body
    return Response(status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, raw)


ACTION_JSON = '{"action": "terminate", "time": "2026-12-01T10:00:00Z"}'


@pytest.mark.parametrize(("resp", "kind", "deadline"), [
    (R(404, "Not Found"), None, None),
    (R(200, ACTION_JSON), NoticeKind.TERMINATE, T0),
    (R(200, '{"action": "stop", "time": "2026-12-01T10:00:00Z"}'), NoticeKind.STOP, T0),
    (R(200, '{"action": "hibernate", "time": "2026-12-01T10:00:00Z"}'), NoticeKind.STOP, T0),
])
def test_parse_instance_action(resp: Response, kind: NoticeKind | None, deadline: float | None) -> None:
    n = aws.parse_instance_action(resp, NOW)
    assert (n.kind, n.deadline, n.received, n.early) == (kind, deadline, NOW, False) if n else kind is None


@pytest.mark.parametrize("resp", [
    R(200, "garbage"), R(200, "[]"), R(200, '{"action": "explode", "time": "2026-12-01T10:00:00Z"}'),
    R(200, '{"action": "terminate"}'), R(200, '{"action": "terminate", "time": "soon"}'), R(500), R(401),
])
def test_parse_instance_action_garbage(resp: Response) -> None:
    with pytest.raises(ProtocolError):
        aws.parse_instance_action(resp, NOW)


def test_parse_rebalance() -> None:
    assert aws.parse_rebalance(R(404), NOW) is None
    n = aws.parse_rebalance(R(200, '{"noticeTime": "2026-12-01T10:00:00Z"}'), NOW)
    assert n is not None and (n.kind, n.deadline, n.early) == (NoticeKind.REBALANCE, None, True)
    for bad in (R(200, "{}"), R(200, '{"noticeTime": "x"}'), R(200, "\x00"), R(503)):
        with pytest.raises(ProtocolError):
            aws.parse_rebalance(bad, NOW)


@pytest.mark.parametrize(("resp", "expires"), [
    (R(200, "tok", **{aws.TTL_HEADER: "600"}), NOW + 600),
    (R(200, "tok\n"), NOW + 21600),
    (R(200, "tok", **{aws.TTL_HEADER: "junk"}), NOW + 21600),
])
def test_parse_token(resp: Response, expires: float) -> None:
    assert aws.parse_token(resp, NOW, 21600) == aws.Token("tok", expires)


@pytest.mark.parametrize("resp", [R(400), R(403, "tok"), R(200, ""), R(200, "two words"), R(200, "x" * 5000)])
def test_parse_token_garbage(resp: Response) -> None:
    with pytest.raises(ProtocolError):
        aws.parse_token(resp, NOW, 21600)


@pytest.mark.parametrize(("token", "now", "usable"), [
    (None, NOW, False), (aws.Token("t", NOW + 100), NOW, True), (aws.Token("t", NOW + 100), NOW + 74, True),
    (aws.Token("t", NOW + 100), NOW + 75, False), (aws.Token("t", NOW + 100), NOW + 200, False),
])
def test_token_usable_renews_a_quarter_before_expiry(token: aws.Token | None, now: float, usable: bool) -> None:
    assert aws.token_usable(token, now, aws.renew_margin_s(100)) is usable
    assert aws.renew_margin_s(21600) == 60


@pytest.mark.parametrize(("key", "value", "kind", "deadline"), [
    (gcp.PREEMPTED, "FALSE", None, None),
    (gcp.PREEMPTED, "TRUE", NoticeKind.PREEMPT, NOW + 30),
    (gcp.MAINTENANCE_EVENT, "NONE", None, None),
    (gcp.MAINTENANCE_EVENT, "TERMINATE_ON_HOST_MAINTENANCE", NoticeKind.MAINTENANCE, None),
    (gcp.MAINTENANCE_EVENT, "MIGRATE_ON_HOST_MAINTENANCE", NoticeKind.MAINTENANCE, None),
])
def test_gcp_interpret(key: str, value: str, kind: NoticeKind | None, deadline: float | None) -> None:
    n = gcp.interpret(key, value, NOW, 30)
    assert (n.kind, n.deadline, n.detail["value"]) == (kind, deadline, value) if n else kind is None


@pytest.mark.parametrize(("key", "value"), [
    (gcp.PREEMPTED, "true"), (gcp.PREEMPTED, ""), (gcp.PREEMPTED, "\x00\xff"),
    (gcp.MAINTENANCE_EVENT, "<html>"), (gcp.MAINTENANCE_EVENT, ""), ("hostname", "x"),
])
def test_gcp_interpret_garbage(key: str, value: str) -> None:
    with pytest.raises(ProtocolError):
        gcp.interpret(key, value, NOW, 30)


def test_gcp_parse_value_needs_the_signature_and_200() -> None:
    assert gcp.parse_value(R(200, "TRUE\n", Metadata_Flavor="Google", ETag="e1")) == ("TRUE", "e1")
    for bad in (R(200, "TRUE"), R(200, "TRUE", Metadata_Flavor="google"), R(403, "", Metadata_Flavor="Google")):
        with pytest.raises(ProtocolError):
            gcp.parse_value(bad)


def test_gcp_watch_query() -> None:
    assert gcp.watch_query(None, 30) == ""
    assert gcp.watch_query("ab12", 30) == "?wait_for_change=true&last_etag=ab12&timeout_sec=30"


def event(event_type: str = "Preempt", resources: list[str] | None = None, not_before: str = "Tue, 01 Dec 2026 "
          "10:00:00 GMT", event_id: str = "E1") -> dict[str, object]:
    return {"EventId": event_id, "EventType": event_type, "ResourceType": "VirtualMachine",
            "Resources": ["vm-7"] if resources is None else resources, "EventStatus": "Scheduled",
            "NotBefore": not_before}


@pytest.mark.parametrize(("ev", "vm", "kind", "deadline"), [
    (event("Preempt"), "vm-7", NoticeKind.PREEMPT, T0),
    (event("Terminate"), "vm-7", NoticeKind.TERMINATE, T0),
    (event("Reboot"), "vm-7", NoticeKind.MAINTENANCE, T0),
    (event("Redeploy"), "vm-7", NoticeKind.MAINTENANCE, T0),
    (event("Freeze"), "vm-7", None, None),
    (event("Preempt", ["vm-8"]), "vm-7", None, None),
    (event("Preempt", ["vm-8"]), None, NoticeKind.PREEMPT, T0),
    (event("Preempt", not_before=""), "vm-7", NoticeKind.PREEMPT, None),
    ({**event("Preempt"), "ResourceType": "AvailabilitySet"}, "vm-7", None, None),
])
def test_azure_event_notice(ev: dict[str, object], vm: str | None, kind: NoticeKind | None,
                            deadline: float | None) -> None:
    n = azure.event_notice(ev, vm, NOW)
    assert (n.kind, n.deadline, n.detail["EventId"]) == (kind, deadline, "E1") if n else kind is None


def test_azure_parse_events_keeps_this_vms_notices_in_order() -> None:
    doc = {"DocumentIncarnation": 3, "Events": [event("Reboot", event_id="A"), event("Preempt", ["vm-8"]),
                                                event("Terminate", event_id="B")]}
    found = azure.parse_events(R(200, json.dumps(doc)), "vm-7", NOW)
    assert [(n.kind, n.detail["EventId"], n.early) for n in found] == [
        (NoticeKind.MAINTENANCE, "A", True), (NoticeKind.TERMINATE, "B", False)]


@pytest.mark.parametrize("body", [
    "garbage", "[]", '{"Events": []}', '{"DocumentIncarnation": 1}', '{"DocumentIncarnation": 1, "Events": [1]}',
    '{"DocumentIncarnation": 1, "Events": [{"EventType": "Preempt"}]}',
    '{"DocumentIncarnation": 1, "Events": [{"EventId": "E", "EventType": "Preempt", "NotBefore": "soon"}]}',
])
def test_azure_parse_events_garbage(body: str) -> None:
    with pytest.raises(ProtocolError):
        azure.parse_events(R(200, body), None, NOW)
    with pytest.raises(ProtocolError):
        azure.parse_events(R(400, '{"error": "x"}'), None, NOW)


def test_azure_approval_body() -> None:
    assert json.loads(azure.approval_body(["E1"])) == {"StartRequests": [{"EventId": "E1"}]}


@pytest.mark.parametrize(("cloud", "resp", "ok"), [
    (NoticeChoice.AWS, R(200, "tok", **{aws.TTL_HEADER: "60"}), True),
    (NoticeChoice.AWS, R(200, "tok"), False),
    (NoticeChoice.AWS, R(403, "", Metadata_Flavor="Google"), False),
    (NoticeChoice.GCP, R(200, "FALSE", Metadata_Flavor="Google"), True),
    (NoticeChoice.GCP, R(403, "", Metadata_Flavor="Google"), True),
    (NoticeChoice.GCP, R(200, "FALSE"), False),
    (NoticeChoice.AZURE, R(200, '{"apiVersions": ["2020-07-01"]}'), True),
    (NoticeChoice.AZURE, R(200, "{}"), False),
    (NoticeChoice.AZURE, R(200, "garbage"), False),
    (NoticeChoice.AZURE, R(400, '{"apiVersions": []}'), False),
])
def test_probe_signature(cloud: NoticeChoice, resp: Response, ok: bool) -> None:
    assert probe_signature(cloud, resp) is ok


@pytest.mark.parametrize(("env", "choice"), [
    ({}, NoticeChoice.NONE), ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, NoticeChoice.K8S),
    ({"SLURM_JOB_ID": "7"}, NoticeChoice.SLURM), ({"SLURM_JOB_ID": "7", "KUBERNETES_SERVICE_HOST": "x"},
                                                  NoticeChoice.SLURM),
    ({"SLURM_JOB_ID": "", "KUBERNETES_SERVICE_HOST": ""}, NoticeChoice.NONE),
])
def test_choice_from_env(env: dict[str, str], choice: NoticeChoice) -> None:
    assert choice_from_env(env) is choice


@pytest.mark.parametrize(("interval", "errors", "pause"), [
    (5.0, 0, 5.0), (0.0, 0, 0.05), (0.0, 1, 0.05), (0.0, 3, 0.2), (1.0, 1, 1.0), (1.0, 2, 2.0), (1.0, 3, 4.0),
    (1.0, 10, 30.0), (1.0, 10_000, 30.0), (60.0, 5, 60.0),
])
def test_next_pause(interval: float, errors: int, pause: float) -> None:
    assert next_pause(interval, errors, 0.05, 30.0) == pause


def test_fresh_notices_passes_each_key_once() -> None:
    a = Notice(NoticeSource.AWS, NoticeKind.REBALANCE, None, NOW, {"noticeTime": "t"})
    b = Notice(NoticeSource.AWS, NoticeKind.TERMINATE, T0, NOW, {"action": "terminate", "time": "t"})
    seen: set[tuple[object, ...]] = set()
    assert fresh_notices([a], seen) == [a]
    assert fresh_notices([a, b, b], seen) == [b]
    assert fresh_notices([Notice(a.source, a.kind, None, NOW + 9, dict(a.detail))], seen) == []


def test_sources_for() -> None:
    env: dict[str, str] = {}
    assert [type(s) for s in sources_for(NoticeChoice.AWS, "http://127.0.0.1:9", env)] == [AwsSource]
    gcp_sources = sources_for(NoticeChoice.GCP, None, env)
    assert [(type(s), getattr(s, "key", None)) for s in gcp_sources] == [
        (GcpSource, gcp.PREEMPTED), (GcpSource, gcp.MAINTENANCE_EVENT)]
    assert [type(s) for s in sources_for(NoticeChoice.AZURE, None, env)] == [AzureSource]
    for quiet in (NoticeChoice.K8S, NoticeChoice.SLURM, NoticeChoice.NONE):
        assert sources_for(quiet, None, env) == []
    with pytest.raises(ValueError):
        sources_for(NoticeChoice.AUTO)


# --- each cloud's protocol against its fake, over real HTTP ----------------------------------------

@pytest.fixture
def fake_aws() -> Iterator[FakeAws]:
    with FakeAws() as f:
        yield f


@pytest.fixture
def fake_gcp() -> Iterator[FakeGcp]:
    with FakeGcp(default_wait_s=5.0) as f:
        yield f


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure(vm_name="vm-7") as f:
        yield f


def test_aws_token_flow_and_headers(fake_aws: FakeAws) -> None:
    src = AwsSource(fake_aws.url, environ={})
    assert src.poll() == [] and src.poll() == []  # 404 until the notice
    put, *gets = fake_aws.requests
    assert (put.method, put.path, put.header(aws.TTL_HEADER)) == ("PUT", aws.TOKEN_PATH, "21600")
    assert put.header(aws.TOKEN_HEADER) is None
    assert [(g.method, g.path) for g in gets] == [("GET", aws.ACTION_PATH), ("GET", aws.REBALANCE_PATH)] * 2
    assert {g.header(aws.TOKEN_HEADER) for g in gets} == {src.token.value if src.token else "?"}
    assert fake_aws.statuses(aws.ACTION_PATH) == [404, 404]


def test_aws_reports_the_interruption_with_its_deadline(fake_aws: FakeAws) -> None:
    fake_aws.preempt(window_s=5)
    [n] = AwsSource(fake_aws.url, environ={}).poll()
    assert (n.source, n.kind, n.early) == (NoticeSource.AWS, NoticeKind.TERMINATE, False)
    assert fake_aws.deadline is not None and n.deadline == pytest.approx(fake_aws.deadline, abs=1.0)


def test_aws_endpoint_from_the_sdk_variable_and_ttl_asked(fake_aws: FakeAws) -> None:
    src = AwsSource(ttl_s=60, environ={"AWS_EC2_METADATA_SERVICE_ENDPOINT": fake_aws.url})
    src.poll()
    assert fake_aws.requests[0].header(aws.TTL_HEADER) == "60"


def test_aws_renews_the_token_before_it_expires() -> None:
    clock = Clock()
    with FakeAws(clock=clock) as fake:
        src = AwsSource(fake.url, ttl_s=100, clock=clock, environ={})
        src.poll()
        clock.t += 74  # 26 s left: still fresh
        src.poll()
        clock.t += 1   # 25 s left: a quarter of its life, renewed before the reads
        src.poll()
        methods = [r.method for r in fake.requests]
        assert methods == ["PUT", "GET", "GET", "GET", "GET", "PUT", "GET", "GET"]
        assert 401 not in fake.statuses(aws.ACTION_PATH)


def test_aws_renews_the_token_on_a_401_and_reads_again(fake_aws: FakeAws) -> None:
    src = AwsSource(fake_aws.url, environ={})
    src.poll()
    fake_aws.revoke_tokens()
    fake_aws.flip()
    [n] = src.poll()
    assert n.kind is NoticeKind.TERMINATE
    assert fake_aws.statuses(aws.ACTION_PATH) == [404, 401, 200]
    assert [r.method for r in fake_aws.requests].count("PUT") == 2


def test_aws_rebalance_then_interruption(fake_aws: FakeAws) -> None:
    src = AwsSource(fake_aws.url, environ={})
    fake_aws.rebalance()
    assert [(n.kind, n.early) for n in src.poll()] == [(NoticeKind.REBALANCE, True)]
    fake_aws.flip()
    assert [n.kind for n in src.poll()] == [NoticeKind.TERMINATE, NoticeKind.REBALANCE]


def test_gcp_reads_plainly_then_long_polls_on_the_etag(fake_gcp: FakeGcp) -> None:
    src = GcpSource(gcp.PREEMPTED, fake_gcp.url, wait_s=20, environ={})
    assert src.poll() == []
    fake_gcp.preempt(after_s=0.3)
    t = time.monotonic()
    [n] = src.poll()  # held by the server until the flip, not for its 20 s
    assert time.monotonic() - t < 5
    assert (n.kind, n.deadline, n.early) == (NoticeKind.PREEMPT, pytest.approx(n.received + 30), False)
    first, second = fake_gcp.requests
    assert first.path == gcp.INSTANCE_PATH + gcp.PREEMPTED
    assert second.query == {"wait_for_change": "true", "last_etag": FakeGcp.etag("FALSE"), "timeout_sec": "20"}
    assert all(r.header("Metadata-Flavor") == "Google" for r in fake_gcp.requests)


def test_gcp_endpoint_from_the_sdk_variable_and_maintenance(fake_gcp: FakeGcp) -> None:
    host = fake_gcp.url.removeprefix("http://")
    src = GcpSource(gcp.MAINTENANCE_EVENT, wait_s=1, environ={"GCE_METADATA_HOST": host})
    assert src.poll() == []
    fake_gcp.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    [n] = src.poll()
    assert (n.kind, n.early, n.deadline) == (NoticeKind.MAINTENANCE, True, None)


def test_azure_events_for_this_vm_and_headers(fake_azure: FakeAzure) -> None:
    src = AzureSource(fake_azure.url, environ={})
    assert src.poll() == []
    fake_azure.add_event("Preempt", resources=["vm-8"])
    fake_azure.preempt(window_s=5)
    [n] = src.poll()
    assert (n.source, n.kind) == (NoticeSource.AZURE, NoticeKind.PREEMPT)
    assert fake_azure.deadline is not None and n.deadline == pytest.approx(fake_azure.deadline, abs=1.0)
    assert [r.route for r in fake_azure.requests] == [azure.NAME_PATH] + [azure.EVENTS_PATH] * 2  # name asked once
    assert src.vm_name == "vm-7"
    assert all(r.header("Metadata") == "true" and r.query["api-version"] for r in fake_azure.requests)
    assert fake_azure.requests[1].query == {"api-version": "2020-07-01"}


def test_azure_approval_posts_start_requests(fake_azure: FakeAzure) -> None:
    src = AzureSource(fake_azure.url, vm_name="vm-7", environ={})
    fake_azure.preempt()
    [n] = src.poll()
    src.close()  # the watcher is gone by the time the job has saved its state
    assert src.approve(str(n.detail["EventId"]))
    post = fake_azure.requests[-1]
    assert (post.method, post.path, post.header("Metadata"), post.header("Content-Type")) == (
        "POST", "/metadata/scheduledevents?api-version=2020-07-01", "true", "application/json")
    assert json.loads(post.body) == {"StartRequests": [{"EventId": n.detail["EventId"]}]}
    assert fake_azure.approvals == [n.detail["EventId"]]
    assert not src.approve("NO-SUCH-EVENT")


def test_transport_ignores_proxies_and_caps_the_body(fake_aws: FakeAws, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # a proxy that is not there
    assert HttpTransport().request("GET", fake_aws.url + aws.ACTION_PATH).status == 401
    with pytest.raises(TransportError, match="over 3 bytes"):
        HttpTransport(max_body=3).request("PUT", fake_aws.url + aws.TOKEN_PATH, {aws.TTL_HEADER: "60"})
    with pytest.raises(TransportError):
        HttpTransport().request("GET", "ftp://127.0.0.1/")


# --- the watcher -----------------------------------------------------------------------------------

def aws_source(fake: FakeMetadataServer, timeout_s: float = 1.0) -> AwsSource:
    return AwsSource(fake.url, interval_s=0.05, timeout_s=timeout_s, environ={})


def test_watcher_delivers_each_notice_once_and_a_second_one_too(fake_aws: FakeAws) -> None:
    got: list[Notice] = []
    with NoticeWatcher(aws_source(fake_aws), got.append) as w:
        time.sleep(0.2)
        fake_aws.rebalance()
        assert wait_for(lambda: len(got) == 1)
        fake_aws.flip()
        assert wait_for(lambda: len(got) == 2)
        polls = w.polls
        assert wait_for(lambda: w.polls >= polls + 5)  # both still in force, poll after poll
    assert [(n.kind, n.early) for n in got] == [(NoticeKind.REBALANCE, True), (NoticeKind.TERMINATE, False)]
    assert w.errors == 0 and w.delivered == got


def test_watcher_runs_both_gcp_keys_and_close_ends_a_long_poll_at_once(fake_gcp: FakeGcp) -> None:
    got: list[Notice] = []
    sources = [GcpSource(k, fake_gcp.url, wait_s=60, interval_s=0, environ={})
               for k in (gcp.PREEMPTED, gcp.MAINTENANCE_EVENT)]
    w = NoticeWatcher(sources, got.append).start()
    fake_gcp.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    fake_gcp.flip()
    assert wait_for(lambda: len(got) == 2)
    assert sorted(n.kind.value for n in got) == ["maintenance", "preempt"]
    assert wait_for(lambda: len(fake_gcp.requests) - len(fake_gcp.replies) == 2)  # both in 60 s long polls
    t = time.monotonic()
    assert w.close(timeout_s=2.0)
    took = time.monotonic() - t
    print(f"close() during two long polls took {took * 1000:.1f} ms")
    assert took < 0.5 and w.errors == 0


def test_watcher_survives_a_hanging_server_and_closes_promptly(fake_aws: FakeAws) -> None:
    fake_aws.set_mode(Mode.HANG)
    got: list[Notice] = []
    w = NoticeWatcher(aws_source(fake_aws, timeout_s=0.2), got.append, max_backoff_s=0.2).start()
    assert wait_for(lambda: w.errors >= 2)
    assert wait_for(lambda: len(fake_aws.requests) > w.polls)  # one more request hanging right now
    t = time.monotonic()
    assert w.close(timeout_s=2.0)
    took = time.monotonic() - t
    print(f"close() with a request hanging took {took * 1000:.1f} ms")
    assert took < 0.5 and got == [] and "TransportError" in (w.last_error or "")


@pytest.mark.parametrize(("make", "mode"), [
    ("aws", Mode.GARBAGE), ("gcp", Mode.GARBAGE), ("azure", Mode.GARBAGE),
    ("aws", Mode.NOT_HTTP), ("gcp", Mode.NOT_HTTP),  # the long poll, which waits 0 s between answers
])
def test_watcher_survives_garbage_without_spinning_then_recovers(mode: Mode, make: str) -> None:
    fakes: dict[str, Callable[[], FakeMetadataServer]] = {"aws": FakeAws, "gcp": FakeGcp, "azure": FakeAzure}
    with fakes[make]() as fake:
        sources: dict[str, Callable[[], Source]] = {
            "aws": lambda: aws_source(fake),
            "gcp": lambda: GcpSource(gcp.PREEMPTED, fake.url, wait_s=1, interval_s=0, environ={}),
            "azure": lambda: AzureSource(fake.url, interval_s=0.05, environ={})}
        src = sources[make]()
        fake.set_mode(mode)
        fake.preempt()
        got: list[Notice] = []
        w = NoticeWatcher(src, got.append, min_pause_s=0.05, max_backoff_s=0.2).start()
        time.sleep(0.4)
        assert got == [] and w.errors >= 2 and w.errors == w.polls
        # backing off 0.05, 0.1, 0.2, 0.2...: a handful of requests, not thousands
        assert len(fake.requests) <= 12, len(fake.requests)
        fake.set_mode(Mode.NORMAL)
        assert wait_for(lambda: len(got) == 1)
        assert w.close()
    assert got[0].kind in (NoticeKind.TERMINATE, NoticeKind.PREEMPT)


def test_a_failing_callback_is_counted_and_the_watch_goes_on(fake_aws: FakeAws) -> None:
    got: list[Notice] = []

    def on_notice(n: Notice) -> None:
        got.append(n)
        if n.early:
            raise RuntimeError("caller's bug")

    fake_aws.rebalance()
    with NoticeWatcher(aws_source(fake_aws), on_notice) as w:
        assert wait_for(lambda: w.errors == 1)
        fake_aws.flip()
        assert wait_for(lambda: len(got) == 2)
    assert "caller's bug" in (w.last_error or "")


# --- sources broken on purpose: the fakes refuse them, so the notice never comes -------------------

class NoTokenAws(AwsSource):
    def _auth_headers(self) -> dict[str, str]:
        return {}


class NoFlavorGcp(GcpSource):
    headers: dict[str, str] = {}


class NoMetadataAzure(AzureSource):
    headers: dict[str, str] = {}


@pytest.mark.parametrize(("make_fake", "good", "broken", "refused"), [
    (FakeAws, lambda u: AwsSource(u, interval_s=0.05, environ={}),
     lambda u: NoTokenAws(u, interval_s=0.05, environ={}), 401),
    (FakeGcp, lambda u: GcpSource(gcp.PREEMPTED, u, wait_s=1, interval_s=0.05, environ={}),
     lambda u: NoFlavorGcp(gcp.PREEMPTED, u, wait_s=1, interval_s=0.05, environ={}), 403),
    (FakeAzure, lambda u: AzureSource(u, interval_s=0.05, environ={}),
     lambda u: NoMetadataAzure(u, interval_s=0.05, environ={}), 400),
], ids=["aws-without-token", "gcp-without-flavor", "azure-without-metadata-header"])
def test_a_source_that_omits_its_header_is_refused_and_never_reports(
        make_fake: Callable[[], FakeMetadataServer], good: Callable[[str], Source],
        broken: Callable[[str], Source], refused: int) -> None:
    with make_fake() as fake:
        fake.preempt()
        got: list[Notice] = []
        with NoticeWatcher(broken(fake.url), got.append, max_backoff_s=0.1) as w:
            assert wait_for(lambda: w.errors >= 3)
        assert got == []
        assert {status for _, status in fake.replies} == {refused}
        with NoticeWatcher(good(fake.url), got.append):
            assert wait_for(lambda: len(got) == 1)  # the same fake, spoken to properly


# --- auto -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make_fake", "choice"), [
    (FakeAws, NoticeChoice.AWS), (FakeGcp, NoticeChoice.GCP), (FakeAzure, NoticeChoice.AZURE),
])
def test_auto_finds_each_cloud_by_its_signature(make_fake: Callable[[], FakeMetadataServer],
                                                choice: NoticeChoice) -> None:
    with make_fake() as fake:
        found = detect(fake.url, environ={})
    assert (found.choice, found.endpoint) == (choice, fake.url)
    print(found.describe())


def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("where", ["blackhole", "refused", "hanging-server", "garbage-server"])
def test_auto_without_a_metadata_server_is_none_and_quick(where: str, blackhole: str) -> None:
    fake = None
    if where == "blackhole":
        url = blackhole
    elif where == "refused":
        url = closed_port()
    else:
        fake = FakeAzure()
        fake.set_mode(Mode.HANG if where == "hanging-server" else Mode.GARBAGE)
        url = fake.url
    try:
        t = time.monotonic()
        found = detect(url, environ={})
        took = time.monotonic() - t
    finally:
        if fake is not None:
            fake.close()
    print(f"auto ({where}): {found.describe()}; measured {took * 1000:.0f} ms")
    assert (found.choice, found.endpoint) == (NoticeChoice.NONE, None)
    assert took < 0.5


@pytest.mark.parametrize(("env", "choice"), [
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, NoticeChoice.K8S), ({"SLURM_JOB_ID": "9"}, NoticeChoice.SLURM),
])
def test_auto_falls_back_on_the_environment(env: dict[str, str], choice: NoticeChoice) -> None:
    found = detect(closed_port(), environ=env)
    assert found.choice is choice and found.endpoint is None and "is set" in found.reason


@pytest.mark.skipif(os.environ.get("NOTICE_PROBE_LINK_LOCAL") != "1",
                    reason="probes 169.254.169.254; set NOTICE_PROBE_LINK_LOCAL=1 to run it")
def test_auto_on_this_machine_with_the_real_endpoints() -> None:
    t = time.monotonic()
    found = detect(environ={})
    took = time.monotonic() - t
    print(f"auto on this machine: {found.describe()}; measured {took * 1000:.0f} ms")
    assert took < 0.5


class StubTransport:
    """Answers every request with the next of ``answers`` (a Response, or a TransportError to raise)."""

    def __init__(self, *answers: Response | TransportError) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str]] = []

    def request(self, method: str, url: str, headers: object = None, body: bytes | None = None,
                timeout_s: float = 2.0) -> Response:
        self.seen.append((method, url))
        a = self.answers.pop(0)
        if isinstance(a, TransportError):
            raise a
        return a

    def abort(self) -> None:
        pass


EMPTY_EVENTS = R(200, '{"DocumentIncarnation": 1, "Events": []}')


@pytest.mark.parametrize(("name_answer", "vm_name"), [
    (R(200, "vm-7\n"), "vm-7"), (R(200, "my.vm_01"), "my.vm_01"), (R(404, "vm-7"), None),
    (R(200, "\x00\xff<html>{"), None), (R(200, "two\nlines"), None), (R(200, ""), None),
    (TransportError("refused"), None),
])
def test_azure_vm_name_is_asked_until_a_valid_one_comes(name_answer: Response | TransportError,
                                                        vm_name: str | None) -> None:
    again = [] if vm_name else [R(200, "vm-9")]
    stub = StubTransport(name_answer, EMPTY_EVENTS, *again, EMPTY_EVENTS)
    src = AzureSource("http://md", transport=stub, environ={})
    src.poll()
    assert src.vm_name == vm_name
    src.poll()
    assert src.vm_name == (vm_name or "vm-9") and stub.answers == []
    assert [url.split("?")[0] for _, url in stub.seen] == (
        ["http://md" + p for p in [azure.NAME_PATH, azure.EVENTS_PATH] + [azure.NAME_PATH] * (not vm_name)
         + [azure.EVENTS_PATH]])
