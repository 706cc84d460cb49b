"""Command-line pieces the front door's commands share: the supervisor's options and JSON output."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rundir.argparsing import add_store_arguments, non_negative, positive, seconds, seconds_or_zero
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_STANDBY_MEMORY

from .nodes import NodeSpec
from .notice import NoticeChoice, parse_choice, parse_signal_name
from .preempt import NoticeSettings

__all__ = ["add_supervisor_arguments", "add_node_arguments", "node_spec", "add_notice_arguments",
           "notice_settings", "module_list", "write_json", "STANDBY_DEFAULT", "standby_env"]


#: What ``--standby`` is when not given, for a supervised run (the chaos commands keep a spare for any job).
STANDBY_DEFAULT = "on for the built-in job, off for a command after '--'"


def add_supervisor_arguments(p: argparse.ArgumentParser, *, standby_default: str = STANDBY_DEFAULT) -> None:
    """The supervisor's options; ``standby_default`` says what ``--standby`` is when not given."""
    g = p.add_argument_group("supervisor")
    g.add_argument("--max-restarts", type=non_negative, default=20, metavar="N",
                   help="restarts without progress allowed over the whole job (default 20); "
                        "restarts after progress are free")
    g.add_argument("--crash-loop", type=positive, default=3, metavar="N",
                   help="stop after N failures in a row with no new step (default 3)")
    g.add_argument("--hang-timeout", type=seconds, default=300.0, metavar="S",
                   help="kill and restart a training worker that gave no heartbeat, no step and used no CPU for S "
                        "seconds, or was stopped (default %(default)g s)")
    g.add_argument("--startup-timeout", type=seconds, default=600.0, metavar="S",
                   help="allow S seconds for a worker's start-up (imports, data, restore), for a checkpoint, and "
                        "for a worker that is busy on the CPU but silent; slow is not stuck (default %(default)g s)")
    g.add_argument("--grace", type=seconds, default=30.0, metavar="S",
                   help="on SIGINT/SIGTERM, give the worker S seconds to checkpoint before SIGKILL "
                        "(default %(default)g s)")
    g.add_argument("--disk-wait", type=seconds_or_zero, default=600.0, metavar="S",
                   help="when the worker finds the disk full (exit 74), wait up to S seconds for space to return, "
                        "then restart it; give up with exit 74 after that (default %(default)g s; 0: at once)")
    g.add_argument("--standby", action=argparse.BooleanOptionalAction, default=None,
                   help="keep a warm spare worker (Paddle imported, data loaded, model built) ready to take "
                        f"over on a restart; it waits in Worker.restore() (default: {standby_default})")
    g.add_argument("--standby-memory", choices=("auto", "on", "off"), default=None,
                   help="whether the spare holds the newest checkpoint in memory while it waits, verified, so that "
                        "taking over reads nothing from disk: auto (default) while the checkpoint is at most half "
                        "the memory available; turn it off where memory is short (docs/design.md)")
    g.add_argument("--nproc-per-node", type=positive, default=1, metavar="N", dest="nproc_per_node",
                   help="run the job as a gang of N data-parallel ranks under paddle.distributed.launch, restarted "
                        "whole when any rank fails (default %(default)s; 1 is one process; see docs/multi-rank.md)")
    g.add_argument("--preload", type=module_list, default=None, metavar="M[,M...]|none",
                   help="import these modules once in a fork server and fork every worker from it, instead of "
                        "starting each with exec (default: model.train for the built-in job, none for a command "
                        "after '--', which must then be 'PYTHON -m M ...' or 'PYTHON FILE ...', PYTHON being "
                        "the path of this interpreter)")
    add_notice_arguments(p)
    add_store_arguments(p)


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    """One job on several machines, a supervisor on each (docs/multi-rank.md)."""
    g = p.add_argument_group("several machines (each runs this command with its own --node-rank)")
    g.add_argument("--nnodes", type=positive, default=1, metavar="M",
                   help="the job runs on M machines (nodes), --nproc-per-node ranks on each (default %(default)s)")
    g.add_argument("--node-rank", type=non_negative, default=0, metavar="R",
                   help="this machine's place among them: 0 to M-1; node 0 holds global rank 0 and the verdict")
    g.add_argument("--master", default=None, metavar="HOST:PORT",
                   help="where Paddle's launchers meet (node 0's address and a free port; the same on every node)")
    g.add_argument("--etcd", default=None, metavar="URL",
                   help="etcd, through which the nodes' supervisors restart the job together "
                        "(e.g. http://10.0.0.1:2379; the same on every node)")


def node_spec(ns: argparse.Namespace) -> NodeSpec | None:
    """This machine's place in a job on several (None: one machine); contradicting options: exit 2."""
    if ns.nnodes == 1:
        if ns.node_rank or ns.master or ns.etcd:
            raise UserError("--node-rank, --master and --etcd need --nnodes 2 or more", ExitCode.USAGE)
        return None
    if not ns.master or not ns.etcd:
        raise UserError(f"--nnodes {ns.nnodes} needs --master HOST:PORT and --etcd URL", ExitCode.USAGE)
    if ns.node_rank >= ns.nnodes:
        raise UserError(f"--node-rank {ns.node_rank} is not a node of {ns.nnodes} (0 to {ns.nnodes - 1})",
                        ExitCode.USAGE)
    host, _, port = ns.master.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--master {ns.master!r} is not HOST:PORT", ExitCode.USAGE)
    if urlsplit(ns.etcd).scheme != "http":
        raise UserError(f"--etcd {ns.etcd!r} is not an http:// URL", ExitCode.USAGE)
    return NodeSpec(ns.nnodes, ns.node_rank, ns.master, ns.etcd)


def standby_env(ns: argparse.Namespace) -> dict[str, str]:
    """What the workers' environment gets from ``--standby-memory``, if it was given."""
    mode = getattr(ns, "standby_memory", None)
    return {} if mode is None else {ENV_STANDBY_MEMORY: mode}


def module_list(text: str) -> tuple[str, ...]:
    """``--preload``: comma-separated module names, or 'none'."""
    if text.strip() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(","))
    bad = [n for n in names if not all(part.isidentifier() for part in n.split("."))]
    if bad:
        raise argparse.ArgumentTypeError(f"not a module name: {bad[0]!r}")
    return names


def write_json(path: Path, obj: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}", ExitCode.UNWRITABLE) from None


def add_notice_arguments(p: argparse.ArgumentParser) -> None:
    """The preemption notice's options (docs/spot.md)."""
    g = p.add_argument_group("preemption notice")
    g.add_argument("--notice", type=_choice, default=NoticeChoice.AUTO, metavar="SOURCE",
                   help="watch for the machine's preemption notice: aws, gcp, azure (their metadata servers), k8s, "
                        "slurm (a signal to the supervisor), none, or auto: probe the three clouds in the background, "
                        "else Slurm or Kubernetes from the environment (default %(default)s). On a "
                        "notice the worker saves its state at the step it reached and the supervisor exits 75 "
                        "instead of restarting it")
    g.add_argument("--notice-signal", type=_signal, default=signal.SIGTERM, metavar="SIG",
                   help="k8s and slurm: the signal that is the notice, besides SIGTERM (e.g. USR1 for Slurm's "
                        "--signal=USR1@60; default TERM)")
    g.add_argument("--metadata-url", type=_url, default=None, metavar="URL",
                   help="the metadata server's base URL, for any cloud (default: the SDK's variable, else "
                        "http://169.254.169.254)")
    g.add_argument("--act-on-rebalance", action="store_true",
                   help="act on an early warning (AWS rebalance recommendation, GCP or Azure maintenance) as on a "
                        "notice (default: report it only)")
    g.add_argument("--notice-poll", type=seconds, default=None, metavar="S",
                   help="poll the metadata server every S seconds (default: each cloud's own, AWS 5 s, Azure 1 s; "
                        "GCP long-polls)")


def notice_settings(ns: argparse.Namespace) -> NoticeSettings:
    return NoticeSettings(choice=NoticeChoice(ns.notice), signal=int(ns.notice_signal), metadata_url=ns.metadata_url,
                          act_on_early=ns.act_on_rebalance, poll_s=ns.notice_poll)


def _choice(text: str) -> NoticeChoice:
    try:
        return parse_choice(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _signal(text: str) -> signal.Signals:
    try:
        return parse_signal_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http URL: {text!r}")
    return text.strip()
