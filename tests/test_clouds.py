"""The fake clouds of a chaos trial: each supervisor that a notice fault will hit gets a fresh fake of
that fault's cloud, which the fault turns to preempted; a supervisor no notice will hit watches what
the command line says."""

from __future__ import annotations

import time

from chaos.clouds import POLL_S, CloudFakes
from chaos.faults import Fault, FaultKind
from runner.notice import AwsSource, NoticeChoice, NoticeKind
from runner.preempt import NoticeSettings

NOTICE_GCP = Fault(FaultKind.NOTICE, 10, {"cloud": "gcp", "window_s": 5.0})
NOTICE_AWS = Fault(FaultKind.NOTICE, 30, {"cloud": "aws", "window_s": 2.0})
KILL = Fault(FaultKind.SIGKILL, 20)
OTHERWISE = NoticeSettings()


def test_each_machine_gets_the_cloud_of_the_next_notice() -> None:
    fakes = CloudFakes()
    try:
        first = fakes.settings_for([NOTICE_GCP, KILL, NOTICE_AWS], OTHERWISE)
        assert (first.choice, first.poll_s) == (NoticeChoice.GCP, POLL_S)
        assert fakes.current is not None and first.metadata_url == fakes.current[1].url
        second = fakes.settings_for([KILL, NOTICE_AWS], OTHERWISE)  # the next machine: a new fake
        assert second.choice is NoticeChoice.AWS and second.metadata_url != first.metadata_url
        assert fakes.settings_for([KILL], OTHERWISE) is OTHERWISE and fakes.current is None
        assert fakes.started == ["gcp", "aws"]
    finally:
        fakes.close()


def test_the_fault_turns_this_machines_fake_to_preempted() -> None:
    fakes = CloudFakes()
    try:
        settings = fakes.settings_for([NOTICE_AWS], OTHERWISE)
        assert settings.metadata_url is not None
        assert AwsSource(settings.metadata_url, environ={}).poll() == []
        t = time.time()
        what, deadline = fakes.trigger(NOTICE_AWS)
        assert what == "aws metadata server: preempted, reclaimed in 2 s"
        assert deadline is not None and t + 1.9 < deadline < time.time() + 2.1
        (n,) = AwsSource(settings.metadata_url, environ={}).poll()
        assert n.kind is NoticeKind.TERMINATE and n.deadline is not None and abs(n.deadline - deadline) < 1.0
        assert fakes.trigger(NOTICE_GCP) == ("not applied: no gcp metadata server on this machine", None)
    finally:
        fakes.close()
    assert CloudFakes().trigger(NOTICE_AWS)[1] is None  # no machine yet
