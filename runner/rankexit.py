"""``python -m runner.rankexit DIR CMD...``: run one rank of a gang and record how it ended.

``paddle.distributed.launch`` starts each rank as its own child, so the supervisor, a grandparent,
cannot read a rank's exit status. Each rank is therefore started through this wrapper, which the
launcher runs in the rank's place: it starts ``CMD`` as its child (which dies with it), writes
``DIR/rank-R.json`` with the child's pid, and once the child has exited, its exit status and the
monotonic time it was reaped; then it exits as the child did (128 + N for signal N, as a shell
does). The supervisor watches the wrappers' pids, learns of a rank's death at once, and classifies
the gang's failure from the rank that failed first (:func:`first_failure`), not from a survivor
stopped because of it. Stdlib only: the wrapper starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

from rundir.children import die_with
from rundir.exitcodes import ExitCode

__all__ = ["RankRecord", "record_path", "read_records", "failed", "first_failure", "ORDERLY", "RECORD_BYTES",
           "main"]

_RANK_ENV = "PADDLE_TRAINER_ID"
#: Exits that are not a rank's failure: done, or stopped with its state saved (the whole gang
#: agrees on such a stop and exits together).
ORDERLY = frozenset({0, int(ExitCode.PREEMPTED)})


def failed(returncode: int) -> bool:
    """A rank's exit that ends the gang at once: not :data:`ORDERLY`, and not SIGTERM, which the
    launcher sends the ranks left when one has exited (and a stop sends them all)."""
    return returncode not in ORDERLY and returncode != -signal.SIGTERM


@dataclass(frozen=True)
class RankRecord:
    """One rank as its wrapper recorded it: ``returncode`` (negative: killed by that signal) and
    ``ended`` (monotonic seconds) once it has exited."""

    rank: int
    pid: int
    wrapper: int
    returncode: int | None = None
    ended: float | None = None


def record_path(ranks_dir: Path, rank: int) -> Path:
    return Path(ranks_dir) / f"rank-{rank}.json"


#: A record is padded with spaces to this many bytes, so that the last one can overwrite the first in
#: place, in blocks the file has already, when a full disk leaves room for no new file.
RECORD_BYTES = 256


def _write(path: Path, rec: RankRecord) -> None:
    """Write ``rec`` whole (a new file renamed over the old); on a full disk, over the record written
    when the rank started: a rank that exits 74 (no space) must still be heard as such, not as one
    killed without a word."""
    data = json.dumps(rec.__dict__).ljust(RECORD_BYTES).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        if not path.exists():
            raise
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)


def _parse(raw: object) -> RankRecord | None:
    if not isinstance(raw, dict):
        return None
    try:
        rc, ended = raw.get("returncode"), raw.get("ended")
        return RankRecord(int(raw["rank"]), int(raw["pid"]), int(raw["wrapper"]),
                          None if rc is None else int(rc), None if ended is None else float(ended))
    except (KeyError, TypeError, ValueError):
        return None


def read_records(ranks_dir: Path) -> dict[int, RankRecord]:
    """The ranks' records in ``ranks_dir``, by rank; a file that does not parse is left out."""
    out: dict[int, RankRecord] = {}
    for path in sorted(Path(ranks_dir).glob("rank-*.json")):
        try:
            rec = _parse(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if rec is not None:
            out[rec.rank] = rec
    return out


def first_failure(records: Mapping[int, RankRecord], launcher_rc: int | None,
                  size: int | None = None) -> tuple[int | None, int | None]:
    """The rank whose exit ended the gang and its exit status: the earliest to exit, among ranks
    that failed (not :data:`ORDERLY`, not SIGTERM, which the launcher sends the survivors); failing
    that, the earliest non-zero exit (75, SIGTERM); failing that, ``(None, 0)`` when all ``size``
    ranks exited 0 - the job is done, whatever the launcher says (SIGTERMed by a stop as its ranks
    finished, it exits 15) - else ``(None, launcher_rc)``: none could say. Ties go to the lower rank."""
    exited = sorted((r.ended, r.rank, r.returncode) for r in records.values()
                    if r.returncode is not None and r.ended is not None)
    failures = [e for e in exited if failed(e[2])]
    stopped = [e for e in exited if e[2] != 0]
    for group in (failures, stopped):
        if group:
            return group[0][1], group[0][2]
    if size is not None and len(exited) == size > 0:
        return None, 0
    return None, launcher_rc


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m runner.rankexit DIR CMD...", file=sys.stderr)
        return int(ExitCode.USAGE)
    ranks_dir, cmd = Path(args[0]), args[1:]
    die_with(os.getppid())  # the launcher gone, this wrapper goes, and its rank with it
    rank = int(os.environ.get(_RANK_ENV, "0"))
    ranks_dir.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(cmd, preexec_fn=partial(die_with, os.getpid()))

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            child.send_signal(signum)  # the launcher signals the group; another may signal only us
        except OSError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    path = record_path(ranks_dir, rank)
    _write(path, RankRecord(rank, child.pid, os.getpid()))
    rc = child.wait()
    _write(path, RankRecord(rank, child.pid, os.getpid(), rc, time.monotonic()))
    return _exit_status(rc)


if __name__ == "__main__":
    sys.exit(main())
