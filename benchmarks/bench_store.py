"""The remote tier: upload throughput and restore time, to S3 (moto's server on loopback) and to a
directory (file://), for checkpoints of 1 and 100 MB (and 1000 MB with --big).

Upload: RemoteStore.upload of a committed local checkpoint - hashing it, sending every file, checking
the store's copy (ETag on S3, read-back on file://) and committing the manifest. Restore: download of
the newest checkpoint into an empty directory, every byte verified before it is moved into place.
The state is split into --files files of random bytes. moto keeps objects in memory and shares this
machine's cores with the client, so its figures bound the client's own costs, not a real S3's.

Prints a table and writes JSON (default benchmarks/results/store.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._output import publish  # noqa: E402
from checkpoint.remote import CHECKPOINTS, RemoteStore  # noqa: E402
from checkpoint.storage import LocalStorage  # noqa: E402
from checkpoint.store import CheckpointStore, checkpoint_name  # noqa: E402

MB = 1 << 20


def make_checkpoint(root: Path, size_mb: int, files: int) -> Path:
    """A committed local checkpoint of ``size_mb`` MB of random bytes in ``files`` files."""
    each = size_mb * MB // files
    CheckpointStore(LocalStorage(root)).save(1, {f"part-{i:02d}.bin": os.urandom(each) for i in range(files)}, {})
    return root / CHECKPOINTS / checkpoint_name(1)


def measure(url: str, ckpt: Path, tmp: Path, reps: int) -> dict[str, Any]:
    """Median upload and restore times over ``reps`` fresh prefixes of the store at ``url``."""
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    uploads, restores, checked = [], [], set()
    for rep in range(reps):
        if url.startswith("file://"):
            Path(url.removeprefix("file://"), f"rep-{rep}").mkdir(parents=True)  # a directory store must exist
        store = RemoteStore(f"{url}/rep-{rep}")
        store.acquire()
        t0 = time.perf_counter()
        up = store.upload(ckpt)
        uploads.append(time.perf_counter() - t0)
        checked.update(up.checked.values())
        dest = tmp / f"restore-{rep}"
        t0 = time.perf_counter()
        got = RemoteStore(f"{url}/rep-{rep}").download(dest / CHECKPOINTS)
        restores.append(time.perf_counter() - t0)
        assert got is not None and got.step == 1
    up_s, re_s = statistics.median(uploads), statistics.median(restores)
    return {"bytes": size, "upload_s": uploads, "restore_s": restores, "upload_mb_s": size / MB / up_s,
            "restore_mb_s": size / MB / re_s, "checked_by": sorted(checked)}


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, reached through the standard variables; yields the bucket URL."""
    from tests.s3_server import running_s3_server

    with running_s3_server() as s3:
        os.environ.update(s3.env())
        yield f"s3://{s3.bucket}/bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 100], help="state sizes in MB (default 1 100)")
    ap.add_argument("--big", action="store_true", help="also 1000 MB")
    ap.add_argument("--files", type=int, default=4, help="files per checkpoint (default 4)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per size and store (default 3; 1 for 1000 MB)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store.json")
    ns = ap.parse_args()
    sizes = ns.sizes + ([1000] if ns.big else [])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "files": ns.files, "runs": []}
    rows = []
    with tempfile.TemporaryDirectory() as t, s3_endpoint() as s3_url:
        tmp = Path(t)
        (tmp / "remote").mkdir()
        targets = {"s3 (moto, loopback)": s3_url, "file://": f"file://{tmp / 'remote'}"}
        for size in sizes:
            ckpt = make_checkpoint(tmp / f"local-{size}", size, ns.files)
            for label, url in targets.items():
                r = measure(f"{url}/{size}mb", ckpt, tmp / f"{label[:2]}-{size}", 1 if size >= 1000 else ns.reps)
                res["runs"].append({"store": label, "size_mb": size, **r})
                rows.append((f"{label}, {size} MB: upload", f"{r['upload_mb_s']:.0f} MB/s "
                             f"({statistics.median(r['upload_s']):.3f} s, by {'/'.join(r['checked_by'])})"))
                rows.append((f"{label}, {size} MB: restore to an empty dir", f"{r['restore_mb_s']:.0f} MB/s "
                             f"({statistics.median(r['restore_s']):.3f} s)"))
    publish("Remote tier: upload and restore (medians)", rows, res, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
