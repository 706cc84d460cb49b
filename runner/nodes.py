"""One job on several machines: each machine (node) runs a supervisor of its own over its own gang,
and a failure on any node restarts the whole job on every node.

Two existing engines do the coordinating, each what it is made for:

- **Paddle's launcher** (``paddle.distributed.launch --nnodes M --rank R --master HOST:PORT``) meets
  its peers at its master (a key-value server in node 0's launcher) and numbers the ranks globally.
  Its HTTP master cannot tell one node that another failed (only its etcd master can, and that one
  needs the ``etcd3`` package): a surviving node's ranks would wait in their next collective until
  gloo's timeout.
- **etcd** holds the job's *generation* (:class:`Generation`): a number, and what ended the one
  before it. Every attempt on every node runs in the generation it read when it started (its
  launcher's ``--job_id`` carries it, so a pod of an old generation never meets a new one at the
  master). When a node's gang ends other than by completing, its supervisor moves the generation
  on - one compare-and-swap: only the first node to see the job fail writes why - and every other
  node's supervisor, which reads the generation at each wait, sees it move, kills its own ranks
  (they could only hang) and starts the next attempt in the new generation. Its attempt's exit is
  the first failure's (classified by the rank that failed first, on whichever node). A stop (exit
  75) moves the generation on too, but kills nothing: every rank stops at the same step by itself.

Each node has its own run directory (disks are not shared): the node's first rank journals and
commits the node's checkpoints there, and on a restart the nodes agree on the newest step every one
of them committed (:mod:`runner.worker.agree`). The verdict is global rank 0's, on node 0.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rundir.classify import signal_name

from .etcd import Entry, EtcdError, KeyValue
from .gang import GangLauncher, GangProcess, gang_command, ranks_dir_for
from .launcher import Worker
from .process import WorkerProcess
from .rankexit import failed, first_failure

__all__ = ["NodeSpec", "Generation", "parse_generation", "next_generation", "moved_on", "failed_elsewhere",
           "launch_args", "NodeGangLauncher", "NodeGangProcess"]

#: How often a node's supervisor reads the generation while its gang runs.
POLL_S = 0.1


@dataclass(frozen=True)
class NodeSpec:
    """This machine's place in the job: node ``node_rank`` of ``nnodes``, Paddle's master at
    ``master`` (``HOST:PORT``, the same on every node), etcd at ``etcd`` (a URL)."""

    nnodes: int
    node_rank: int
    master: str
    etcd: str

    @property
    def key(self) -> str:
        """The job's generation key in etcd: one per master address, which names the job on a cluster."""
        return f"/preempt-runner/{self.master}/generation"


@dataclass(frozen=True)
class Generation:
    """The job's generation ``number``; ``revision``: etcd's ``mod_revision`` of it (0: not yet
    written); ``after``: what ended the one before (node, rank, returncode), if known."""

    number: int = 0
    revision: int = 0
    after: Mapping[str, Any] | None = None

    @property
    def job_id(self) -> str:
        """The launcher's ``--job_id``: the master's peers meet per generation."""
        return f"generation-{self.number}"


def parse_generation(entry: Entry | None) -> Generation:
    """The generation an etcd entry holds; generation 0 for none or one that does not parse."""
    if entry is None:
        return Generation()
    try:
        raw = json.loads(entry.value)
        after = raw.get("after")
        return Generation(int(raw["generation"]), entry.mod_revision, after if isinstance(after, dict) else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Generation(0, entry.mod_revision)


def next_generation(gen: Generation, node: int, rank: int | None, returncode: int) -> str:
    """The value that ends ``gen``: the next number, and what ended this one."""
    return json.dumps({"generation": gen.number + 1,
                       "after": {"node": node, "rank": rank, "returncode": returncode, "time": round(time.time(), 3)}})


def moved_on(mine: Generation, now: Generation) -> bool:
    """True once the job's generation is not the one an attempt runs in: the job ended elsewhere."""
    return now.number != mine.number


def failed_elsewhere(after: Mapping[str, Any]) -> bool:
    """Whether what ended a generation on another node is a failure, after which this node's ranks
    can only hang, and are killed; not a stop (exit 75, or the launcher's SIGTERM), which every rank
    takes at the same step and ends by itself, its state saved - killing it could cut that short."""
    rc = after.get("returncode")
    return not isinstance(rc, int) or failed(rc)


def launch_args(spec: NodeSpec, gen: Generation) -> tuple[str, ...]:
    """Paddle launcher's arguments that make its pod node ``spec.node_rank`` of the job in ``gen``."""
    return ("--nnodes", str(spec.nnodes), "--rank", str(spec.node_rank), "--master", spec.master,
            "--job_id", gen.job_id)


def describe_after(after: Mapping[str, Any]) -> str:
    """``rank 1 on node 1 (killed by SIGKILL)``: what ended a generation."""
    rc = after.get("returncode")
    how = f"killed by {signal_name(rc)}" if isinstance(rc, int) and rc < 0 else f"exit {rc}"
    who = f"rank {after['rank']} on " if after.get("rank") is not None else ""
    return f"{who}node {after.get('node')} ({how})"


class NodeGangLauncher(GangLauncher):
    """Starts each attempt's gang as this node's pod of the job, in the job's current generation."""

    def __init__(self, cmd: Sequence[str], nproc: int, spec: NodeSpec, kv: KeyValue) -> None:
        super().__init__(cmd, nproc)
        self.spec, self.kv = spec, kv

    def start(self, env: Mapping[str, str], log: Path, *, stdin_pipe: bool = False) -> Worker:
        gen = read_generation(self.kv, self.spec)
        ranks_dir = ranks_dir_for(log)
        cmd = gang_command(self.cmd, self.nproc, ranks_dir, launch_args(self.spec, gen))
        proc = WorkerProcess.start(cmd, env=env, log_path=log)
        return NodeGangProcess(proc, ranks_dir, self.nproc, log, spec=self.spec, kv=self.kv, generation=gen)


def read_generation(kv: KeyValue, spec: NodeSpec) -> Generation:
    try:
        return parse_generation(kv.get(spec.key))
    except EtcdError:
        return Generation()  # etcd away: the rendezvous at the master still needs every node


class NodeGangProcess(GangProcess):
    """This node's gang, which also ends when the job's generation moves on (a failure elsewhere),
    and which moves it on when it ends here other than by completing."""

    def __init__(self, launcher: WorkerProcess, ranks_dir: Path, size: int, log: Path, *, spec: NodeSpec,
                 kv: KeyValue, generation: Generation) -> None:
        super().__init__(launcher, ranks_dir, size, log)
        self.spec, self.kv, self.generation = spec, kv, generation
        self.world, self.first_rank = size * spec.nnodes, size * spec.node_rank
        self.elsewhere: Mapping[str, Any] | None = None  # what ended the job on another node, if that did
        self._next_poll = 0.0
        self._told: bool | None = None  # whether this node moved the generation on (None: not tried)
        self._said_unreachable = False

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is None and time.monotonic() >= self._next_poll:
                self._next_poll = time.monotonic() + POLL_S
                self._check_generation()
            left = deadline - time.monotonic()
            if super().wait(max(0.0, min(left, POLL_S)), wake_fds) or self.returncode is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            if wake_fds and _readable(wake_fds):
                return False

    def _read(self) -> Generation | None:
        try:
            return parse_generation(self.kv.get(self.spec.key))
        except EtcdError as exc:
            if not self._said_unreachable:
                self._said_unreachable = True
                self._note(f"cannot read the job's generation: {exc}")
            return None

    def _check_generation(self) -> None:
        now = self._read() if self.elsewhere is None else None
        if now is None or not moved_on(self.generation, now):
            return
        self.elsewhere = now.after or {}
        if not failed_elsewhere(self.elsewhere):
            self._note(f"the job is stopping on another node: {describe_after(self.elsewhere)}; this node's ranks "
                       "stop at the same step")
            return
        self._note(f"the job failed on another node: {describe_after(self.elsewhere)}; stopping this node's ranks")
        self._finish(kill=True)

    def _finish(self, *, kill: bool, hung: Sequence[int] = ()) -> None:
        if kill and self.elsewhere is None:
            # A rank failed here: tell the other nodes before the clean-up (killing the rest, reaping
            # the launcher), so that this failure, the first, is the one they record.
            rank, code = first_failure(self.records, None, self.size)
            if code is not None and failed(code):
                self._tell(rank, code)
        super()._finish(kill=kill, hung=hung)
        if self.returncode != 0 and self.elsewhere is None and self._told is None:
            self._tell(self.failed_rank, self.returncode or -signal.SIGKILL)
        self._adopt()

    def _tell(self, rank: int | None, returncode: int) -> None:
        """Move the generation on, saying why; if another node did first, take its word for it."""
        try:
            self._told = self.kv.swap(self.spec.key, next_generation(self.generation, self.spec.node_rank, rank,
                                                                     returncode), self.generation.revision)
        except EtcdError as exc:
            self._told = False
            self._note(f"cannot tell the other nodes that the job failed here: {exc}")
            return
        if not self._told:  # another node saw the job fail first
            now = self._read()
            self.elsewhere = (now.after if now is not None else None) or {}

    def _adopt(self) -> None:
        """The job failed first on another node: this attempt's exit is that failure's (this node's
        ranks, if they failed too, failed of it: a collective whose peer is gone)."""
        rc = self.elsewhere.get("returncode") if self.elsewhere else None
        if isinstance(rc, int) and self.elsewhere and self.elsewhere.get("node") != self.spec.node_rank:
            if self.returncode != rc:
                self._note(f"the job failed on another node: {describe_after(self.elsewhere)}; this node's ranks "
                           f"failed after it")
            self.returncode = rc


def _readable(fds: Sequence[int]) -> bool:
    import select

    return bool(select.select(list(fds), [], [], 0)[0])
