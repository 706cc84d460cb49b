"""The uploader process: committed local checkpoints to the remote store, one at a time, newest first.

``python -m checkpoint.upload_process RUN_DIR URL GENERATION DRAIN_S IDS PARENT_PID`` reads
:class:`~checkpoint.uploader.UploadRequest` lines on stdin and answers each upload with an
:class:`~checkpoint.uploader.UploadResult` line on stdout. While one upload runs, newer requests
wait in the pipe; of those waiting, only the newest is uploaded (an older checkpoint is superseded).

The checkpoint is first linked into ``.upload/step-NNNNNNNNN/`` in the run directory (hard links:
no bytes copied), so that the local tier may prune it while it is being uploaded - a checkpoint's
files never change once committed. Each upload (:meth:`RemoteStore.upload`) then sends its files,
checks the store's copy,
appends the loss journal and the event log as segments, and commits the manifest after checking the
fence. It records ``checkpoint-uploaded`` (bytes, seconds, and the lag from the local commit to the
remote one) or ``checkpoint-upload-failed`` in ``events.jsonl``, in the worker's name.

Failures, by what happens next:

- the store is away (unreachable, timing out, refusing): tried again after :func:`retry_delay`,
  while training goes on; each failure is recorded;
- the local checkpoint is gone (pruned, or moved aside as corrupt): given up, recorded;
- fenced (a newer supervisor took the store), or the store holds another job's data: fatal - one
  line, exit 77, and the worker stops too.

After an upload it prunes the store (at most once a minute): the newest ``REMOTE_KEEP`` committed
checkpoints stay, and an older one goes once the next has been committed for ``PRUNE_GRACE_S``.

When its stdin ends (the worker stops), it goes on trying to upload the newest checkpoint it was
given for at most ``DRAIN_S`` seconds, appends what the journals gained to the store, and exits. It
dies with the worker (``PR_SET_PDEATHSIG``); a kill in the middle of an upload leaves files without
a manifest in the store, which are not a checkpoint.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import IO, Any

from rundir.children import die_with
from rundir.events import EventKind
from rundir.exitcodes import ExitCode
from rundir.journal import append_record
from rundir.names import EVENTS, LOSSES

from .fence import StaleGeneration
from .objects import StoreError
from .remote import CHECKPOINTS, CheckpointConflict, RemoteStore
from .store import MANIFEST, CorruptCheckpoint
from .sync import ConfigConflict, put_config, retry_delay
from .uploader import UploadRequest, UploadResult

__all__ = ["UPLOADING", "Outcome", "Uploads", "fenced_line", "main", "serve", "snapshot"]

#: Where a checkpoint being uploaded is linked, in the run directory.
UPLOADING = ".upload"
#: The store keeps the newest this many committed checkpoints; an older one goes once the one after it
#: has been committed for ``PRUNE_GRACE_S`` (a reader has that long to download it), pruned at most
#: every ``PRUNE_EVERY_S`` by the uploader after an upload.
REMOTE_KEEP = 3
PRUNE_GRACE_S = 900.0
PRUNE_EVERY_S = 60.0


class Outcome(Enum):
    OK = "ok"
    RETRY = "retry"  # the store is away: try again later
    GONE = "gone"  # the local checkpoint is gone: give up on it
    FATAL = "fatal"  # fenced, or the store holds another job's data: stop


def fenced_line(store: RemoteStore) -> str:
    """The one line a fenced worker stops with."""
    try:
        newest: int | str = store.fence.newest()
    except StoreError:
        newest = "newer"
    return (f"fenced: a newer supervisor (generation {newest}) owns this job's store {store.url}; "
            f"this worker's supervisor holds generation {store.generation}, so it stops")


def snapshot(run_dir: Path, name: str) -> Path:
    """Link the files of local checkpoint ``name`` into ``.upload/name``, its manifest last (copy them
    where links are not allowed), or reuse a complete one made for an upload that failed; raises
    ``FileNotFoundError`` if it is gone."""
    src, stage = run_dir / CHECKPOINTS / name, run_dir / UPLOADING / name
    if (stage / MANIFEST).is_file():
        return stage
    shutil.rmtree(run_dir / UPLOADING, ignore_errors=True)  # one upload at a time: what is there is stale
    stage.mkdir(parents=True)
    names = sorted(e.name for e in os.scandir(src) if e.is_file(follow_symlinks=False))
    for fname in sorted(names, key=lambda n: n == MANIFEST):
        try:
            os.link(src / fname, stage / fname)
        except FileNotFoundError:
            raise
        except OSError:
            shutil.copyfile(src / fname, stage / fname)
    return stage


class Uploads:
    """The uploader's state - the newest checkpoint waiting to go, the failures in a row - and one
    upload at a time. ``out``: where results go (the worker reads them)."""

    def __init__(self, store: RemoteStore, run_dir: Path, ids: Mapping[str, Any], out: IO[bytes], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.run_dir, self.ids, self.out = store, Path(run_dir), dict(ids), out
        self.pending: UploadRequest | None = None
        self.failures = 0
        self.next_try = 0.0
        self._config_put = False
        self._clock = clock
        self._pruned: float | None = None
        self._asked = False  # a warm spare's uploader that was never asked anything leaves the journals alone

    def take(self, req: UploadRequest) -> None:
        """A new request: it replaces an older one still waiting (which then never goes). The wait
        after a failure stays: it is the store that is away, not the checkpoint."""
        self._asked = True
        if self.pending is None or req.step >= self.pending.step:
            self.pending = req
            self.ids["attempt"] = req.attempt

    @property
    def wait_s(self) -> float | None:
        """Seconds until the pending upload is due; None if nothing is pending."""
        return None if self.pending is None else max(0.0, self.next_try - self._clock())

    def record(self, kind: EventKind, **fields: Any) -> None:
        rec = {"time": time.time(), "source": self.ids.get("source"), "event": kind.value,
               **{k: v for k, v in self.ids.items() if k != "source"}, "uploader_pid": os.getpid(), **fields}
        append_record(self.run_dir / EVENTS, rec)

    def reply(self, result: UploadResult) -> None:
        try:
            self.out.write(result.line())
            self.out.flush()
        except BrokenPipeError:
            pass  # the worker is gone; the events say what happened

    def attempt(self, *, stopping: bool = False) -> Outcome:
        """Upload the pending checkpoint once; record and answer what became of it."""
        req = self.pending
        assert req is not None
        t0 = time.perf_counter()
        try:
            if not self._config_put:
                self._config_put = put_config(self.store, self.run_dir)
            up = self.store.upload(snapshot(self.run_dir, req.name), journals=[self.run_dir / LOSSES,
                                                                                self.run_dir / EVENTS])
        except StaleGeneration:
            return self._fatal(req, fenced_line(self.store))
        except (ConfigConflict, CheckpointConflict) as exc:
            return self._fatal(req, str(exc))
        except StoreError as exc:
            return self._failed(req, str(exc), stopping)
        except (FileNotFoundError, CorruptCheckpoint) as exc:
            shutil.rmtree(self.run_dir / UPLOADING, ignore_errors=True)
            self.pending = None
            error = f"the local checkpoint is gone before it was uploaded: {exc}"
            self.record(EventKind.UPLOAD_FAILED, step=req.step, name=req.name, error=error, retry_in_s=None)
            self.reply(UploadResult(req.name, req.step, error=error))
            return Outcome.GONE
        shutil.rmtree(self.run_dir / UPLOADING, ignore_errors=True)
        self.pending, self.failures = None, 0
        self.record(EventKind.CHECKPOINT_UPLOADED, step=req.step, name=req.name, bytes=up.bytes,
                    seconds=round(time.perf_counter() - t0, 6), lag_s=round(time.time() - req.committed, 6),
                    generation=self.store.generation, checked=sorted(set(up.checked.values())), already=up.already,
                    stopping=stopping)
        self.reply(UploadResult(req.name, req.step, ok=True))
        self._prune()
        return Outcome.OK

    def _prune(self) -> None:
        now = self._clock()
        if self._pruned is not None and now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        try:
            self.store.prune(REMOTE_KEEP, grace=PRUNE_GRACE_S)
        except StoreError:
            pass  # fenced or away: the next upload says so; old checkpoints wait for the next prune

    def _failed(self, req: UploadRequest, error: str, stopping: bool) -> Outcome:
        self.failures += 1
        delay = retry_delay(self.failures)
        self.next_try = self._clock() + delay
        self.record(EventKind.UPLOAD_FAILED, step=req.step, name=req.name, error=error, failures=self.failures,
                    retry_in_s=round(delay, 3), stopping=stopping)
        self.reply(UploadResult(req.name, req.step, error=error, retry_in_s=round(delay, 3)))
        return Outcome.RETRY

    def _fatal(self, req: UploadRequest, error: str) -> Outcome:
        self.pending = None
        self.record(EventKind.UPLOAD_FAILED, step=req.step, name=req.name, error=error, retry_in_s=None, fatal=True)
        self.reply(UploadResult(req.name, req.step, error=error, fatal=True, last=True))
        return Outcome.FATAL

    def warm_up(self) -> Outcome:
        """Before the first request: load the client, open a connection and check the fence, so that
        the first upload does not pay for them, and a writer fenced off already hears it now."""
        try:
            self.store.fence.check("upload checkpoints")
        except StaleGeneration:
            error = fenced_line(self.store)
            self.record(EventKind.UPLOAD_FAILED, error=error, retry_in_s=None, fatal=True)
            self.reply(UploadResult(error=error, fatal=True, last=True))
            return Outcome.FATAL
        except StoreError:
            pass  # away for now: the uploads will say so
        return Outcome.OK

    def drain(self, seconds: float) -> int:
        """The worker stops: finish the pending upload within ``seconds``, append the journals' last
        lines, say the last word and return the exit status."""
        deadline = self._clock() + seconds
        while self.pending is not None:
            wait = self.next_try - self._clock()
            if self._clock() + max(wait, 0.0) >= deadline:
                req = self.pending
                error = (f"the store did not take {req.name} within the {seconds:g} s the worker had to stop; "
                         f"the store's newest checkpoint is older")
                self.record(EventKind.UPLOAD_FAILED, step=req.step, name=req.name, error=error, retry_in_s=None,
                            stopping=True, gave_up=True)
                self.reply(UploadResult(req.name, req.step, error=error))
                self.pending = None
                break
            if wait > 0:
                time.sleep(wait)
            if self.attempt(stopping=True) is Outcome.FATAL:
                return ExitCode.STORE
        if self._asked:
            self._sync_journals()
        self.reply(UploadResult(last=True))
        return ExitCode.OK

    def _sync_journals(self) -> None:
        try:
            for name in (LOSSES, EVENTS):
                self.store.sync_journal(self.run_dir / name)
        except StoreError:
            pass  # best effort: the next upload, or the supervisor at its end, appends them


def _lines(fd: int, buf: bytearray) -> tuple[list[bytes], bool]:
    """What ``fd`` has now, as complete lines (the rest stays in ``buf``), and whether it ended."""
    data = os.read(fd, 65536)
    buf += data
    *lines, rest = bytes(buf).split(b"\n")
    buf[:] = rest
    return [line for line in lines if line.strip()], not data


def serve(fd: int, uploads: Uploads, drain_s: float) -> int:
    """Read requests from ``fd`` and upload, until it ends; then drain. Returns the exit status."""
    if uploads.warm_up() is Outcome.FATAL:
        return ExitCode.STORE
    buf = bytearray()
    while True:
        ready, _, _ = select.select([fd], [], [], uploads.wait_s)
        if ready:
            lines, ended = _lines(fd, buf)
            for line in lines:
                uploads.take(UploadRequest.parse(line))
            if ended:
                return uploads.drain(drain_s)
            continue  # read all that is there before uploading: only the newest goes
        if uploads.wait_s == 0.0 and uploads.attempt() is Outcome.FATAL:
            return ExitCode.STORE


def main(argv: list[str]) -> int:
    """``RUN_DIR URL GENERATION DRAIN_S IDS PARENT_PID``."""
    run_dir, url, generation, drain_s, ids, parent = argv
    die_with(int(parent), exit_code=0)
    # SIGTERM and Ctrl-C reach the worker's whole process group; the worker decides, and then closes
    # our stdin: that is when the last upload starts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to the worker's log, not into the answers
    try:
        store = RemoteStore(url, generation=int(generation))
    except StoreError as exc:
        out.write(UploadResult(error=str(exc), fatal=True, last=True).line())
        out.flush()
        return ExitCode.STORE
    return serve(0, Uploads(store, Path(run_dir), json.loads(ids), out), float(drain_s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
