"""A gang of ranks, on the workers' side: which rank this process is, the part of a checkpoint each
rank other than 0 writes for itself, the rule that a checkpoint loads only when every rank's part is
there, and :class:`RankWorker`, the worker of a rank other than 0.

The checkpoint protocol (the job's collectives carry it out; see :mod:`model.parallel`):

1. Every rank reaches the checkpoint's step; none goes on until all have (a collective follows).
2. Each rank ``r > 0`` writes its per-rank state (its RNGs) to ``rank-parts/step-S/rank-R.safetensors``
   durably - temporary file, fsync, rename, fsync of the directories - and only then hands the part's
   size and SHA-256 to rank 0 through a collective (an all-gather).
3. Rank 0 writes the replicated state (parameters, optimizer, scheduler, sample order) and its own
   RNGs through the ordinary checkpoint store, and lists every part's digest in the manifest
   (:func:`gang_meta`). The manifest, written last, is the one commit point.

A gang killed at any moment never leaves a checkpoint that loads with a missing or stale part: the
manifest exists only after step 2 returned on every rank, so every part it names was durable first;
and a part rewritten later must still match the digest the manifest names. Loading applies
:func:`gang_problem` to each candidate, newest first, and falls back past any that fails.

Paddle's flexible checkpoint (``paddle.distributed.save_state_dict``) is not used: it shards tensors
and writes metadata from the coordinator rank, but it commits with no manifest of its own, verifies
nothing on load, and knows nothing of RNGs or the sample order - the properties this store exists
for. Data-parallel state is replicated, so rank 0 writing it once through the verified store is
both simpler and exact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn

from checkpoint.storage import LocalStorage
from checkpoint.store import Checkpoint, CheckpointStore, CorruptCheckpoint, checkpoint_name
from rundir.contract import ARM_CHECKPOINT_WRITE, ARM_CRASH, Arm
from rundir.events import EventKind
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_ATTEMPT, EVENTS

from .faults import SimulatedDeviceError
from .files import EventLog

__all__ = ["ENV_RANK", "ENV_WORLD_SIZE", "ENV_NODES", "PARTS", "GANG_META", "Rank", "PartDigest", "part_key",
           "gang_meta", "gang_record", "gang_problem", "resumed_apart", "digest_of", "RankParts", "RankWorker"]

#: The launcher's variables (``paddle.distributed.launch``) that say which rank a process is, and
#: on how many machines (nodes) the ranks are: each node has as many, numbered in a row.
ENV_RANK = "PADDLE_TRAINER_ID"
ENV_WORLD_SIZE = "PADDLE_TRAINERS_NUM"
ENV_NODES = "PADDLE_NNODES"
#: The run directory's folder of per-rank checkpoint parts.
PARTS = "rank-parts"
#: The key in a checkpoint's ``extra`` metadata that lists the gang and its parts.
GANG_META = "gang"


@dataclass(frozen=True)
class Rank:
    """This process's place in the gang: ``rank`` of ``size`` (0 of 1 when it runs alone), on one
    of ``nodes`` machines, each with ``size // nodes`` ranks numbered in a row."""

    rank: int = 0
    size: int = 1
    nodes: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Rank:
        """From the launcher's variables; 0 of 1 where they are not set. Malformed: exit 78."""
        env = os.environ if env is None else env
        raw = env.get(ENV_RANK, "0"), env.get(ENV_WORLD_SIZE, "1"), env.get(ENV_NODES, "1")
        try:
            rank, size, nodes = (int(v) for v in raw)
        except ValueError:
            rank, size, nodes = -1, 0, 1
        if size < 1 or not 0 <= rank < size or nodes < 1 or size % nodes:
            raise UserError(f"{ENV_RANK}={raw[0]!r}, {ENV_WORLD_SIZE}={raw[1]!r} and {ENV_NODES}={raw[2]!r} do not "
                            "name a rank of a gang", ExitCode.BAD_CONFIG)
        return cls(rank, size, nodes)

    @property
    def leader(self) -> bool:
        """Rank 0: its node's leader, whose journal and verdict are the job's; its cadence decides
        for every rank."""
        return self.rank == 0

    @property
    def per_node(self) -> int:
        return self.size // self.nodes

    @property
    def node(self) -> int:
        """The machine this rank is on (the launcher's ``--rank``)."""
        return self.rank // self.per_node

    @property
    def node_leader(self) -> bool:
        """The first rank of its node: it holds the node's run directory (its lock, journal,
        heartbeat) and commits the node's checkpoints; each node has a disk of its own."""
        return self.rank % self.per_node == 0

    @property
    def node_ranks(self) -> range:
        return range(self.node * self.per_node, (self.node + 1) * self.per_node)

    @property
    def part_ranks(self) -> range:
        """The ranks whose parts this node's checkpoints list: its ranks but its leader."""
        return self.node_ranks[1:]


@dataclass(frozen=True)
class PartDigest:
    """A part's length in bytes and its SHA-256, as the manifest lists them."""

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> PartDigest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


def part_key(step: int, rank: int) -> str:
    """The storage key of rank ``rank``'s part of the checkpoint after ``step`` steps."""
    return f"{PARTS}/{checkpoint_name(step)}/rank-{rank:05d}.safetensors"


def gang_meta(size: int, parts: Mapping[int, PartDigest], *, node: int = 0, nodes: int = 1) -> dict[str, Any]:
    """The record a node's leader puts in the manifest (under ``extra``, key :data:`GANG_META`);
    ``node`` of ``nodes`` when the gang spans machines."""
    listed = {str(r): {"size": d.size, "sha256": d.sha256} for r, d in sorted(parts.items())}
    where = {"nodes": nodes, "node": node} if nodes > 1 else {}
    return {"world_size": size, **where, "parts": listed}


def gang_record(meta: Mapping[str, Any]) -> object:
    """The gang record of a checkpoint's metadata, or None for one a single process saved."""
    extra = meta.get("extra")
    return extra.get(GANG_META) if isinstance(extra, Mapping) else None


def _listed(record: Mapping[str, Any], rank: int) -> PartDigest | None:
    parts = record.get("parts")
    entry = parts.get(str(rank)) if isinstance(parts, Mapping) else None
    if not isinstance(entry, Mapping):
        return None
    size, sha = entry.get("size"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or not isinstance(sha, str):
        return None
    return PartDigest(size, sha)


def gang_problem(record: object, size: int, found: Mapping[int, PartDigest | None], *,
                 ranks: Iterable[int] | None = None, node: int = 0, nodes: int = 1) -> str | None:
    """Why a checkpoint is not one that every rank of a gang of ``size`` committed, or None if it is.

    ``record``: its gang record (:func:`gang_record`); ``found``: the digest of each rank's part as it
    is on disk now (None: missing), for ``ranks`` (default 1 to ``size - 1``: one machine). A
    checkpoint of another gang size, of a single process for a gang, or of another node (``node`` of
    ``nodes``) is refused: its state is not this gang's, or not this machine's ranks'."""
    if record is None:
        return None if size == 1 else f"saved by a single process, not by a gang of {size}"
    if not isinstance(record, Mapping) or not isinstance(record.get("world_size"), int):
        return "its gang record is malformed"
    if record["world_size"] != size:
        return f"saved by a gang of {record['world_size']}, not {size}"
    where = (record.get("node", 0), record.get("nodes", 1))
    if where != (node, nodes):
        return f"saved by node {where[0]} of {where[1]}, not node {node} of {nodes}"
    for r in range(1, size) if ranks is None else ranks:
        listed = _listed(record, r)
        if listed is None:
            return f"the manifest lists no part for rank {r}"
        have = found.get(r)
        if have is None:
            return f"rank {r}'s part is missing"
        if have != listed:
            return f"rank {r}'s part does not match the manifest ({have.size} bytes, sha256 {have.sha256[:12]})"
    return None


def resumed_apart(steps: Sequence[int]) -> str | None:
    """Why a gang's ranks, having loaded the checkpoints after ``steps[r]`` steps (-1: none, a fresh
    start), cannot train on together, or None: every rank must go on from the same checkpoint -
    rank 0 chose it and told the others - or their parameters, data and step counts part ways."""
    if len(set(steps)) <= 1:
        return None
    said = ", ".join(f"rank {r} from {'no checkpoint' if s < 0 else f'step {s}'}" for r, s in enumerate(steps))
    return f"the ranks resumed from different checkpoints: {said}"


def digest_of(storage: LocalStorage, step: int, rank: int) -> PartDigest | None:
    """The digest of a part as it is on disk now; None if it cannot be read."""
    try:
        return PartDigest.of(storage.get(part_key(step, rank)))
    except OSError:
        return None


class RankParts:
    """The per-rank parts in a run directory: written by their ranks, checked by whoever loads."""

    def __init__(self, storage: LocalStorage, size: int, rank: Rank | None = None) -> None:
        """``rank``: a rank of the node whose parts these are (default: one machine, ranks 1 to ``size - 1``)."""
        self.storage, self.size = storage, size
        self.where = rank or Rank(0, size)

    def write(self, step: int, rank: int, data: bytes) -> PartDigest:
        """Write rank ``rank``'s part for ``step`` durably; its digest, for rank 0's manifest."""
        self.storage.put(part_key(step, rank), data, durable=True)
        return PartDigest.of(data)

    def read(self, ckpt: Checkpoint, rank: int) -> bytes:
        """Rank ``rank``'s part of ``ckpt``, checked against the digest its manifest lists."""
        data = self.storage.get(part_key(ckpt.step, rank))
        record = gang_record(ckpt.meta)
        listed = _listed(record, rank) if isinstance(record, Mapping) else None
        if listed != PartDigest.of(data):
            raise CorruptCheckpoint(f"{ckpt.name}: rank {rank}'s part does not match the manifest")
        return data

    def check(self, ckpt: Checkpoint) -> None:
        """Raise :class:`CorruptCheckpoint` unless every rank committed ``ckpt`` (:func:`gang_problem`)."""
        w = self.where
        found = {r: digest_of(self.storage, ckpt.step, r) for r in w.part_ranks}
        problem = gang_problem(gang_record(ckpt.meta), self.size, found, ranks=w.part_ranks, node=w.node,
                               nodes=w.nodes)
        if problem is not None:
            raise CorruptCheckpoint(f"{ckpt.name}: {problem}")

    def prune(self, rank: int, committed: list[int]) -> None:
        """Remove rank ``rank``'s parts of steps neither committed nor newer than the newest
        committed one (a checkpoint in flight): each rank prunes only its own parts."""
        newest = max(committed, default=-1)
        keep = set(committed)
        root = self.storage.root / PARTS
        for d in root.glob("step-*"):
            try:
                step = int(d.name.removeprefix("step-"))
            except ValueError:
                continue
            if step in keep or step > newest:
                continue
            self.storage.delete(part_key(step, rank))
            try:
                d.rmdir()  # the last rank to prune it removes the folder
            except OSError:
                pass


class RankWorker:
    """The worker of rank ``r > 0``: it shares the run directory with rank 0, which holds its lock,
    journals and heartbeats for the gang. This one only reads checkpoints (never moves one aside:
    rank 0 decides which loads), writes its own parts, and turns SIGTERM/SIGINT into a request to
    checkpoint that the gang agrees on at its next step. Its one event is chaos's: a stop in the
    middle of its part (``checkpoint-write`` aimed at it)."""

    def __init__(self, run_dir: Path | str, rank: Rank, *, handle_signals: bool = True,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise UserError(f"run directory {self.run_dir} does not exist", ExitCode.BAD_CONFIG)
        self.rank = rank
        self.attempt = int(os.environ.get(ENV_ATTEMPT) or 0)
        storage = LocalStorage(self.run_dir)
        self.store = CheckpointStore(storage)
        self.parts = RankParts(storage, rank.size, rank)
        self._handle_signals = handle_signals
        self._preemption: str | None = None
        self.arm = Arm.from_env(os.environ, rank.rank)  # a chaos fault aimed at this rank
        self._sleep = sleep  # a rank stopped by chaos in the middle of its part waits here for its SIGKILL
        self.take_signals()

    def __enter__(self) -> RankWorker:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def take_signals(self) -> None:
        """Catch SIGTERM and SIGINT (again: ``import paddle`` installs a handler of its own)."""
        if self._handle_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            # The job held them blocked through its imports (as Worker.restore() lets them in for rank 0).
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_preemption(signal.Signals(signum).name)

    def request_preemption(self, cause: str) -> None:
        self._preemption = cause

    @property
    def preemption_requested(self) -> bool:
        return self._preemption is not None

    def step_done(self, step: int) -> None:
        """This rank finished ``step``: the ``crash`` chaos fault aimed at it raises here, once."""
        if self.arm is not None and self.arm.fires(ARM_CRASH, step):
            self.arm = None
            raise SimulatedDeviceError(f"simulated device error in step {step} of rank {self.rank.rank} "
                                       "(chaos fault 'crash')")

    def load(self, step: int) -> tuple[Checkpoint, bytes]:
        """The checkpoint after ``step`` steps that rank 0 chose, and this rank's part of it."""
        ckpt = self.store.verify(checkpoint_name(step))
        return ckpt, self.parts.read(ckpt, self.rank.rank)

    def older(self, step: int) -> int:
        """The newest committed checkpoint before ``step``, or ``step`` if there is none: what a rank
        that does not take rank 0's choice would load (``--break-resume rank-step``, on purpose)."""
        older = [int(n.removeprefix("step-")) for n in self.store.committed()]
        return max((s for s in older if s < step), default=step)

    def save_part(self, step: int, data: bytes) -> PartDigest:
        """Write this rank's part for ``step`` durably, prune its old ones; the part's digest. The
        ``checkpoint-write`` chaos fault aimed at this rank stops it for good half-way through instead."""
        if self.arm is not None and self.arm.fires(ARM_CHECKPOINT_WRITE, step):
            self._torn(step, data)
        digest = self.parts.write(step, self.rank.rank, data)
        committed = [int(n.removeprefix("step-")) for n in self.store.committed()]
        self.parts.prune(self.rank.rank, committed)
        return digest

    def _torn(self, step: int, data: bytes) -> NoReturn:
        """Write the first half of the part in place - what a store without an atomic rename would
        hold after a kill - say so in ``events.jsonl`` (the supervisor's chaos then SIGKILLs this
        rank), and wait. No manifest can name the part: rank 0 is still waiting for its digest."""
        path = self.parts.storage.root / part_key(step, self.rank.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) // 2])
        EventLog(self.run_dir / EVENTS, pid=os.getpid(), attempt=self.attempt).record(
            EventKind.CHAOS_PAUSED, step=step, rank=self.rank.rank, part_bytes=len(data) // 2, of_bytes=len(data))
        while True:
            self._sleep(3600)
