"""Test set-up: import the project from this checkout, and keep Paddle's start-up noise out; the fixtures
that several test files share (moto's S3 server, etcd, a fresh store, a port whose connects hang)."""

from __future__ import annotations

import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.s3_server import S3Server

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Paddle warns on import that it found no ccache (it only matters for building C++ extensions).
CCACHE_WARNING = r".*ccache.*"
warnings.filterwarnings("ignore", message=CCACHE_WARNING)


def pytest_configure(config: pytest.Config) -> None:
    # pytest re-applies its own filters around each test, so register the filter there too.
    config.addinivalue_line("filterwarnings", f"ignore:{CCACHE_WARNING}:UserWarning")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback for the whole session (tests/s3_server.py), started on first use."""
    from tests.s3_server import running_s3_server

    with running_s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    """An etcd server on loopback for one test module (tests/etcd_server.py; it starts in about a
    second), stopped after it: a child left running would count as a leftover in the tests that
    look for them. The test is skipped where etcd is not installed."""
    from tests.etcd_server import ETCD, running_etcd

    if ETCD is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    with running_etcd() as url:
        yield url


@pytest.fixture(params=["s3", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty store: a prefix in moto's bucket (its variables set for every process the test
    starts), or a directory apart from the run directory. No checkpoint key from the environment."""
    monkeypatch.delenv("RUNNER_CHECKPOINT_KEY", raising=False)
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        return server.fresh_url()
    root = tmp_path / "remote"
    root.mkdir()
    return f"file://{root}"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A 127.0.0.1 port whose connects hang, as 169.254.169.254's do off a cloud: a listener that
    never accepts, its queue already full."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    for c in fillers:
        c.close()
    server.close()
