"""Cloud preemption notices: what a notice is, where to watch for one, and a watcher that reports it.

========== ===================================================== =========================================
source     how the notice comes                                  kinds
========== ===================================================== =========================================
aws        IMDSv2 ``spot/instance-action``, polled every 5 s     terminate, stop; rebalance (early)
gcp        ``instance/preempted`` and ``maintenance-event``,     preempt; maintenance (early)
           long-polled with ``wait_for_change``
azure      Scheduled Events, polled every second                 preempt, terminate; maintenance (early)
k8s/slurm  a signal (SIGTERM, or the one ``--notice-signal``     signal
           names) reaching the supervisor
========== ===================================================== =========================================

``auto`` probes the three metadata servers at once for 0.3 s and falls back on the environment. Every
metadata endpoint can be moved: by the SDK's variable (``AWS_EC2_METADATA_SERVICE_ENDPOINT``,
``GCE_METADATA_HOST``) or by ``metadata_url``.
"""

from __future__ import annotations

from .aws import AwsSource
from .azure import AzureSource
from .base import (
    EARLY_KINDS,
    NOTICE_WINDOW_S,
    Notice,
    NoticeChoice,
    NoticeKind,
    NoticeSource,
    ProtocolError,
    Source,
    deadline_slack,
    notice_deadline_ok,
    parse_choice,
)
from .detect import Detection, detect, sources_for
from .gcp import GcpSource
from .signals import parse_signal_name, signal_notice
from .transport import HttpTransport, Response, Transport, TransportError
from .watcher import NoticeWatcher

__all__ = [
    "Notice", "NoticeSource", "NoticeKind", "NoticeChoice", "EARLY_KINDS", "NOTICE_WINDOW_S", "ProtocolError",
    "Source", "AwsSource", "GcpSource", "AzureSource", "Detection", "detect", "sources_for", "NoticeWatcher",
    "parse_choice", "parse_signal_name", "signal_notice", "deadline_slack", "notice_deadline_ok",
    "HttpTransport", "Response", "Transport", "TransportError",
]
