"""Store outages (chaos/proxy.py): a TCP proxy that forwards, refuses and hangs, in front of a tiny
echo server, then in front of moto's S3 server with a real client; and a directory store moved aside."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.proxy import DirectoryOutage, FaultProxy, endpoint_address
from checkpoint.objects import ObjectStore, StoreError
from tests.s3_server import S3Server


def echo_one(conn: socket.socket) -> None:
    try:
        while data := conn.recv(4096):
            conn.sendall(data)
    except OSError:
        pass  # the proxy cut it
    finally:
        conn.close()


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo_one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[:2]
    server.close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    p = FaultProxy(echo)
    yield p
    p.close()


def ask(port: int, data: bytes = b"ping", timeout: float = 5.0) -> bytes:
    """The answer; raises if the connection is closed or reset instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        answer = s.recv(4096)
    if not answer:
        raise ConnectionResetError("closed without an answer")
    return answer


@pytest.mark.parametrize(("url", "address"), [
    ("http://127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("http://minio.local", ("minio.local", 80)),
    ("https://s3.amazonaws.com", None),  # a proxy on 127.0.0.1 would fail the certificate check
    ("", None),
    ("127.0.0.1:9000", None),
])
def test_endpoint_address(url: str, address: tuple[str, int] | None) -> None:
    assert endpoint_address(url) == address


def test_up_it_forwards_both_ways(proxy: FaultProxy) -> None:
    assert ask(proxy.port) == b"ping"
    assert proxy.endpoint == f"http://127.0.0.1:{proxy.port}"


def test_refusing_it_resets_new_connections_and_cuts_open_ones(proxy: FaultProxy) -> None:
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0)
    held.sendall(b"a")
    assert held.recv(16) == b"a"
    proxy.down("refuse")
    with pytest.raises(OSError):
        held.sendall(b"b")
        if not held.recv(16):
            raise ConnectionResetError("closed")
    with pytest.raises(OSError):
        ask(proxy.port)
    proxy.up()
    assert ask(proxy.port) == b"ping"


def test_hanging_it_holds_connections_unanswered_then_resets_them(proxy: FaultProxy) -> None:
    proxy.down("hang")
    with pytest.raises(TimeoutError):
        ask(proxy.port, timeout=0.3)
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0)
    s.sendall(b"x")
    threading.Timer(0.2, proxy.up).start()
    t0 = time.monotonic()
    with pytest.raises(ConnectionResetError):
        if not s.recv(16):
            raise ConnectionResetError("closed")
    assert time.monotonic() - t0 < 4.0
    assert ask(proxy.port) == b"ping"


def test_a_mode_it_does_not_know_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.down("explode")


def test_a_real_client_fails_while_the_store_is_away_and_succeeds_after(s3_server: S3Server,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    target = endpoint_address(s3_server.endpoint)
    assert target is not None
    p = FaultProxy(target)
    try:
        for k, v in s3_server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        store = ObjectStore(s3_server.fresh_url(), attempts=2, sleep=lambda s: None, read_timeout=2.0)
        store.write("k", b"v")
        p.down("refuse")
        with pytest.raises(StoreError) as e:
            store.read("k")
        assert "after 2 attempt(s)" in str(e.value)
        p.up()
        assert store.read("k") == b"v"
    finally:
        p.close()


def test_a_directory_store_is_missing_while_it_is_away(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "a").write_text("x")
    outage = DirectoryOutage(root)
    outage.down("hang")
    assert not root.exists()
    with pytest.raises(StoreError, match="does not exist"):
        ObjectStore(f"file://{root}", attempts=1).probe()
    outage.up()
    assert (root / "a").read_text() == "x"
    outage.close()  # nothing to put back
    assert root.exists()
