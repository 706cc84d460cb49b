"""etcd for the tests (Debian's ``etcd-server``): one server on free 127.0.0.1 ports, its data in a
temporary directory, stopped with the test module that started it. Tests that need it are skipped
where ``etcd`` is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from runner.etcd import Etcd

__all__ = ["ETCD", "free_port", "running_etcd"]

ETCD = shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_etcd(timeout: float = 30.0) -> Iterator[str]:
    """An etcd server's client URL, for as long as the context lasts."""
    assert ETCD is not None, "etcd is not installed"
    with tempfile.TemporaryDirectory(prefix="etcd-") as data, open(f"{data}/log", "w") as log:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        proc = subprocess.Popen([ETCD, "--data-dir", f"{data}/d", "--listen-client-urls", url,
                                 "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while not Etcd(url, timeout=1.0).healthy():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start: {open(f'{data}/log').read()[-2000:]}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
