"""A writer SIGKILLed in the middle of uploading a larger checkpoint never leaves one that loads: a
real process, a real kill, moto's S3 server and a directory store alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from checkpoint.remote import CHECKPOINTS, RemoteStore
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, checkpoint_name

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FILES = 16
FILE_SIZE = 3 << 20

UPLOADER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from checkpoint.remote import RemoteStore

    def tell(fname):
        print(fname, flush=True)
        time.sleep(0.05)  # leaves the parent time to kill between two files as well as within one

    url, generation, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    RemoteStore(url, generation=generation, part_size=5 << 20, between_files=tell).upload(path)
    print("committed", flush=True)
""")


@pytest.mark.parametrize("after_files", [1, FILES // 2])
def test_a_kill_mid_upload_never_leaves_a_checkpoint_that_loads(url: str, tmp_path: Path, after_files: int) -> None:
    local = CheckpointStore(LocalStorage(tmp_path / "run"), keep=10)
    local.save(1, {"model.bin": b"small and complete"}, {"step": 1})
    local.save(2, {f"shard-{i:02d}.bin": os.urandom(FILE_SIZE) for i in range(FILES)}, {"step": 2})
    store = RemoteStore(url, part_size=5 << 20)
    store.acquire()
    store.upload(tmp_path / "run" / CHECKPOINTS / checkpoint_name(1))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, url, str(store.generation), str(tmp_path / "run" / CHECKPOINTS /
                                                                          checkpoint_name(2))],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        for _ in range(after_files):
            assert child.stdout.readline().startswith("shard-"), "the uploader ended early"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    uploaded = store.objects.find(f"{CHECKPOINTS}/{checkpoint_name(2)}")
    assert uploaded, "the kill came before any file landed: the test proves nothing"
    assert not any(k.endswith(MANIFEST) for k in uploaded)
    assert [c.step for c in store.list_committed()] == [1]
    got = RemoteStore(url).download(tmp_path / "empty" / CHECKPOINTS)
    assert got is not None and got.step == 1
    ck = CheckpointStore(LocalStorage(tmp_path / "empty")).load_latest()
    assert ck is not None and ck.step == 1

    store.upload(tmp_path / "run" / CHECKPOINTS / checkpoint_name(2))  # the next upload completes it
    assert [c.step for c in store.list_committed()] == [1, 2]
