"""The supervisor's side of the remote store (``--store``): it takes a generation there before its
first attempt, restores an empty run directory, hands its workers the store through the environment
(their uploaders do the uploading), and appends the journals' last records when it ends.

A supervisor that starts takes the next generation, so every older one - a supervisor on a machine
that was thought lost - is fenced off: its workers' next commit is refused and they stop (exit 77,
see :mod:`checkpoint.upload_process`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from checkpoint.fence import StaleGeneration
from checkpoint.objects import StoreError
from checkpoint.sync import Attached, Restored, continue_run, take_store
from rundir.events import EventKind, Source, record_event
from rundir.names import EVENTS, LOSSES

__all__ = ["RemoteTier", "drain_time"]

Note = Callable[[str], None]


def drain_time(grace: float) -> float:
    """How long a stopping worker's last upload may take: half of ``--grace``, the other half being
    for its last checkpoint and its exit before the supervisor's SIGKILL."""
    return max(0.5, grace / 2.0)


class RemoteTier:
    """One supervisor's hold on the remote store."""

    def __init__(self, attached: Attached, run_dir: Path, note: Note) -> None:
        self.attached = attached
        self.run_dir = Path(run_dir)
        self.note = note

    @classmethod
    def attach(cls, url: str, run_dir: Path, *, upload_every: float, grace: float, note: Note = print) -> RemoteTier:
        """Check the store, take a generation: a :class:`~checkpoint.objects.StoreError` (exit 77)
        before anything starts if the store cannot be used."""
        attached = take_store(url, run_dir, every_s=upload_every, drain_s=drain_time(grace), restore=False)
        return cls(attached, run_dir, note)

    @property
    def url(self) -> str:
        return self.attached.settings.url

    @property
    def generation(self) -> int:
        return self.attached.settings.generation

    def env(self) -> dict[str, str]:
        """What the workers need: the store, the generation, the upload interval and drain time."""
        return self.attached.settings.to_env()

    def restore(self) -> Restored | None:
        """If the run directory is empty, fill it from the store: ``job.json``, the journals, the newest
        checkpoint that verifies (falling back past corrupt ones with a warning line each). If it
        holds a run, check that the store does not hold more of it (exit 78). Then record it all."""
        restored = continue_run(self.attached.store, self.run_dir, warn=lambda m: self.note(f"warning: {m}"))
        s = self.attached.settings
        self._record(EventKind.STORE_ATTACHED, url=s.url, generation=s.generation, upload_every_s=s.every_s,
                     drain_s=s.drain_s)
        if restored is not None:
            self._record(EventKind.STORE_RESTORED, url=self.url, generation=self.generation, **restored.to_event())
            self.note(restored.line(self.url))
        return restored

    def finish(self) -> None:
        """Append what the journals gained since the last upload (the attempts' ends, this
        supervisor's last records). Best effort: a fenced or unreachable store is left as it is."""
        try:
            for name in (LOSSES, EVENTS):
                self.attached.store.sync_journal(self.run_dir / name)
        except StaleGeneration:
            pass  # a newer supervisor owns the store now: its journals are not ours to extend
        except StoreError as exc:
            self.note(f"warning: the journals' last records did not reach the store: {exc}")

    def _record(self, kind: EventKind, **fields: object) -> None:
        record_event(self.run_dir / EVENTS, Source.SUPERVISOR, kind, **fields)
