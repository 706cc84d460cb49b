"""The two tiers together: the run directory is the fast tier, the remote store the durable one.

What this module decides and does, apart from the upload itself (:mod:`checkpoint.uploader`):

- how long to wait after a failed upload (:func:`retry_delay`; when a checkpoint is due for the
  store is :func:`checkpoint.cadence.upload_due`'s);
- what a supervisor hands its workers (:class:`UploadSettings`, through the environment);
- the job's configuration in the store, ``job.json`` beside ``checkpoints/`` (:func:`put_config`),
  so that a store is never continued by another job;
- restoring an empty run directory from the store (:func:`restore_run`): ``job.json``, every
  journal, and the newest checkpoint that verifies.

Journals are restored whole, not cut where the checkpoint was taken: the store's copy of a journal
is extended by appending what the local file holds beyond it (:meth:`Journals.sync`), so the local
file must begin with exactly the store's bytes. Steps journaled after the checkpoint are computed
again by the next attempt; the stitched trace keeps the latest record of each step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rundir.argparsing import DEFAULT_UPLOAD_EVERY_S
from rundir.exitcodes import ExitCode, UserError
from rundir.names import ENV_STORE, ENV_STORE_GENERATION, ENV_UPLOAD_DRAIN, ENV_UPLOAD_EVERY, EVENTS, JOB, LOSSES

from .objects import StoreError
from .remote import CHECKPOINTS, RemoteStore
from .segments import JOURNAL, chain_end, segments_of, write_atomically
from .store import MANIFEST

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_DRAIN_S",
    "Attached",
    "ConfigConflict",
    "Restored",
    "UploadSettings",
    "check_continuation",
    "continue_run",
    "has_local_run",
    "put_config",
    "restore_run",
    "retry_delay",
    "take_store",
]

#: The job's configuration in the store, beside ``checkpoints/``.
CONFIG_KEY = JOB
#: How long a stopping worker's last upload may take when its supervisor did not say (standalone).
DEFAULT_DRAIN_S = 20.0
Warn = Callable[[str], None]


def upload_due(now: float, last: float | None, every_s: float) -> bool:
    """Whether a checkpoint taken at ``now`` goes to the store: the first one of an attempt (the last
    attempt's newest may never have got there), then one every ``every_s`` seconds (0: all)."""
    return last is None or every_s <= 0 or now - last >= every_s


def retry_delay(failures: int, *, first: float = 0.5, most: float = 30.0) -> float:
    """Seconds to wait after ``failures`` failed uploads in a row before trying again: doubling from
    ``first`` up to ``most``. (Each upload's own calls are already retried a few times by tenacity,
    with a backoff of their own; this spaces out whole uploads while the store stays away.)"""
    if failures < 1:
        return 0.0
    return min(most, first * 2.0 ** (failures - 1))


@dataclass(frozen=True)
class UploadSettings:
    """What a worker needs to upload: the store, the generation its supervisor holds there, how often,
    and how long its last upload may take when it stops."""

    url: str
    generation: int
    every_s: float = DEFAULT_UPLOAD_EVERY_S
    drain_s: float = DEFAULT_DRAIN_S

    def to_env(self) -> dict[str, str]:
        return {ENV_STORE: self.url, ENV_STORE_GENERATION: str(self.generation),
                ENV_UPLOAD_EVERY: repr(self.every_s), ENV_UPLOAD_DRAIN: repr(self.drain_s)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UploadSettings | None:
        """The settings a supervisor gave; None without a store or without a generation (then the
        worker is its own supervisor and takes one itself)."""
        url, gen = env.get(ENV_STORE), env.get(ENV_STORE_GENERATION)
        if not url or not gen:
            return None
        try:
            return cls(url, int(gen), float(env.get(ENV_UPLOAD_EVERY) or DEFAULT_UPLOAD_EVERY_S),
                       float(env.get(ENV_UPLOAD_DRAIN) or DEFAULT_DRAIN_S))
        except ValueError:
            raise UserError(f"{ENV_STORE_GENERATION}, {ENV_UPLOAD_EVERY} or {ENV_UPLOAD_DRAIN} is not a number",
                            ExitCode.BAD_CONFIG) from None


class ConfigConflict(StoreError):
    """The store holds another job's configuration."""


def _canonical_config(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def put_config(store: RemoteStore, run_dir: Path) -> bool:
    """Put the run directory's ``job.json`` in the store, once (create-only, after the fence check);
    raise :class:`ConfigConflict` if the store holds a different one. False if there is none yet."""
    try:
        local = (Path(run_dir) / JOB).read_bytes()
    except FileNotFoundError:
        return False
    store.fence.check("write the job's configuration")
    try:
        store.objects.write(CONFIG_KEY, local, create_only=True)
        return True
    except FileExistsError:
        pass
    remote = store.objects.read(CONFIG_KEY)
    if _canonical_config(remote) != _canonical_config(local):
        raise ConfigConflict(f"remote store {store.url} holds another job's configuration ({CONFIG_KEY} differs "
                             f"from {Path(run_dir) / JOB}); give this job a store prefix of its own")
    return True


def has_local_run(run_dir: Path) -> bool:
    """Whether the run directory holds any of a run's state: its configuration, a loss journal, or a
    committed checkpoint. Prepared data, logs and locks do not count."""
    run_dir = Path(run_dir)
    if (run_dir / JOB).exists() or (run_dir / LOSSES).exists():
        return True
    try:
        return any((d / MANIFEST).is_file() for d in (run_dir / CHECKPOINTS).iterdir())
    except OSError:
        return False


def check_continuation(store: RemoteStore, run_dir: Path) -> None:
    """A run directory that holds a run continues the store's copy of it only if its journals are at
    least as long as the store's: otherwise the store went on without it (another machine took the
    job over) and appending to it would mix two runs. Raises ``UserError`` (exit 78) then."""
    blobs = store.objects.find(JOURNAL)
    for name in (LOSSES, EVENTS):
        held = chain_end(segments_of(blobs, name))
        try:
            local = (Path(run_dir) / name).stat().st_size
        except FileNotFoundError:
            local = 0
        if held > local:
            raise UserError(f"remote store {store.url} holds more of this run than {run_dir} ({name}: {held} bytes "
                            f"there, {local} here): another machine went on with it; continue in an empty run "
                            "directory, which is restored from the store", ExitCode.BAD_CONFIG)


@dataclass(frozen=True)
class Restored:
    """What :func:`restore_run` put in an empty run directory."""

    checkpoint: str | None
    step: int
    bytes: int
    journals: Mapping[str, int]  # journal name -> bytes restored
    config: bool
    seconds: float

    def to_event(self) -> dict[str, object]:
        return {"checkpoint": self.checkpoint, "step": self.step, "bytes": self.bytes,
                "journals": dict(self.journals), "config": self.config, "seconds": round(self.seconds, 3)}

    def line(self, url: str) -> str:
        what = "no checkpoint"
        if self.checkpoint:
            what = f"{self.checkpoint} (step {self.step}, {self.bytes / 1e6:.1f} MB)"
        return f"restored {what} and {len(self.journals)} journal(s) from {url} in {self.seconds:.2f} s"


def restore_run(store: RemoteStore, run_dir: Path, warn: Warn | None = None) -> Restored | None:
    """Restore an empty run directory (see :func:`has_local_run`) from the store: ``job.json``, the
    journals, and the newest checkpoint that verifies (older ones are fallen back to, with ``warn``).
    None if the directory holds a run already - the local tier wins - or the store holds nothing."""
    run_dir = Path(run_dir)
    if has_local_run(run_dir):
        return None
    t0 = time.perf_counter()
    config = False
    try:
        write_atomically(run_dir / JOB, store.objects.read(CONFIG_KEY))
        config = True
    except FileNotFoundError:
        pass
    journals = store.restore_journal(run_dir, warn=warn)
    ck = store.download(run_dir / CHECKPOINTS, warn=warn)
    if ck is None and not journals and not config:
        return None
    return Restored(checkpoint=ck.name if ck else None, step=ck.step if ck else 0,
                    bytes=sum(ck.sizes.values()) if ck else 0, journals=journals, config=config,
                    seconds=time.perf_counter() - t0)


def continue_run(store: RemoteStore, run_dir: Path, warn: Warn | None = None) -> Restored | None:
    """Restore an empty run directory from the store (:func:`restore_run`), or check that one holding a
    run is not behind the store (:func:`check_continuation`)."""
    restored = restore_run(store, run_dir, warn)
    if restored is None:
        check_continuation(store, run_dir)
    return restored


@dataclass(frozen=True)
class Attached:
    """A store a supervisor (or a worker on its own) took a generation in, and what it restored."""

    store: RemoteStore
    settings: UploadSettings
    restored: Restored | None


def take_store(url: str, run_dir: Path, *, every_s: float = DEFAULT_UPLOAD_EVERY_S, drain_s: float = DEFAULT_DRAIN_S,
               warn: Warn | None = None, restore: bool = True) -> Attached:
    """What a supervisor does with ``--store`` before its first attempt: check that the store can be
    used (one line and exit 77 if not: a bad URL, a missing bucket, refused credentials, an
    unreachable endpoint), take the next generation (fencing off every older writer), and - unless
    ``restore`` is False, for the caller to do later - restore the run directory if it is empty."""
    store = RemoteStore(url)
    store.check()
    generation = store.acquire()
    restored = continue_run(store, run_dir, warn) if restore else None
    return Attached(store, UploadSettings(url, generation, every_s, drain_s), restored)
