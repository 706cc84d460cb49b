"""The object-store layer: URLs checked before any call, errors sorted into one-line StoreErrors with
exit code 77, transient ones retried a bounded number of times, and each failure a person meets -
bad URL, missing bucket, refused or absent credentials, unreachable endpoint - against a real S3 API."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from checkpoint.objects import ObjectStore, StoreError, parse_url, s3_options
from checkpoint.remote import RemoteStore
from rundir.exitcodes import ExitCode
from tests.s3_server import S3Server

KNOWN = ("s3", "s3a", "gs", "file", "memory")


def assert_one_line_store_error(exc: StoreError, *words: str) -> None:
    assert exc.code == ExitCode.STORE == 77
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    for w in words:
        assert w in text, text


@pytest.mark.parametrize(("url", "protocol", "root"), [
    ("s3://bucket/prefix/run-1", "s3", "bucket/prefix/run-1"),
    ("s3://my.bucket-2", "s3", "my.bucket-2"),
    ("s3://bucket/prefix/", "s3", "bucket/prefix"),
    ("gs://bucket/p", "gs", "bucket/p"),
    ("file:///srv/ckpt/", "file", "/srv/ckpt"),
    ("file:///srv/a/../ckpt", "file", "/srv/ckpt"),
    ("memory://quick", "memory", "quick"),
])
def test_good_urls_parse(url: str, protocol: str, root: str) -> None:
    loc = parse_url(url, KNOWN)
    assert (loc.protocol, loc.root, loc.url) == (protocol, root, url)


@pytest.mark.parametrize(("url", "says"), [
    ("", "expected s3://bucket/prefix"),
    ("just-a-path", "expected s3://bucket/prefix"),
    ("/abs/path", "expected s3://bucket/prefix"),
    ("nosuch://bucket/x", "unknown protocol 'nosuch'"),
    ("s3://", "is not a bucket name"),
    ("s3:///x", "is not a bucket name"),
    ("s3://Bad_Bucket/x", "is not a bucket name"),
    ("s3://bucket/../x", "'..'"),
    ("s3://bucket//x", "empty"),
    ("file://relative/dir", "absolute path"),
    ("simplecache::s3://bucket/x", "expected s3://bucket/prefix"),
])
def test_bad_urls_are_one_clear_line(url: str, says: str) -> None:
    with pytest.raises(StoreError) as e:
        parse_url(url, KNOWN)
    assert_one_line_store_error(e.value, says)


def test_fsspec_knows_the_protocols_we_document() -> None:
    for url in ("s3://b-1/x", "file:///x", "memory://x"):
        assert parse_url(url).protocol == url.split(":")[0]


@pytest.mark.parametrize(("env", "endpoint", "region"), [
    ({}, None, None),
    ({"AWS_ENDPOINT_URL": "http://h:9"}, "http://h:9", None),
    ({"AWS_ENDPOINT_URL": "http://h:9", "AWS_ENDPOINT_URL_S3": "http://s3:1"}, "http://s3:1", None),
    ({"AWS_DEFAULT_REGION": "eu-west-1"}, None, "eu-west-1"),
    ({"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "us-east-2"}, None, "us-east-2"),
])
def test_s3_options_come_from_the_standard_variables(env: dict[str, str], endpoint: str | None,
                                                     region: str | None) -> None:
    opts = s3_options(env, connect_timeout=2, read_timeout=7)
    assert opts.get("endpoint_url") == endpoint
    assert opts.get("client_kwargs", {}).get("region_name") == region
    assert opts["config_kwargs"]["retries"]["max_attempts"] == 1  # the retries are ours, bounded
    assert (opts["config_kwargs"]["connect_timeout"], opts["config_kwargs"]["read_timeout"]) == (2, 7)
    assert opts["use_listings_cache"] is False


class FlakyFS:
    """Stands in for an fsspec filesystem: ``cat_file`` fails with ``errors`` first, then answers."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def cat_file(self, path: str) -> bytes:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return b"data"


def flaky_store(tmp_path: Path, errors: list[BaseException], attempts: int = 4) -> tuple[ObjectStore, FlakyFS,
                                                                                          list[float]]:
    sleeps: list[float] = []
    store = ObjectStore(f"file://{tmp_path}", attempts=attempts, sleep=sleeps.append)
    fs = FlakyFS(errors)
    store.fs = fs  # type: ignore[assignment]
    return store, fs, sleeps


def test_transient_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    store, fs, sleeps = flaky_store(tmp_path, [OSError(errno.EBUSY, "SlowDown"), TimeoutError("slow")])
    assert store.read("k") == b"data"
    assert fs.calls == 3 and len(sleeps) == 2 and 0 < sleeps[0] < sleeps[1] <= 2.2


def test_retries_are_bounded_then_one_line(tmp_path: Path) -> None:
    store, fs, sleeps = flaky_store(tmp_path, [OSError(errno.EBUSY, "SlowDown\nplease")] * 10, attempts=3)
    with pytest.raises(StoreError) as e:
        store.read("k")
    assert fs.calls == 3 and len(sleeps) == 2
    assert_one_line_store_error(e.value, "gave up after 3 attempt(s)", "SlowDown please")


@pytest.mark.parametrize("error", [PermissionError("Forbidden"), FileNotFoundError("k"), ValueError("bug")])
def test_other_errors_are_not_retried(tmp_path: Path, error: BaseException) -> None:
    store, fs, sleeps = flaky_store(tmp_path, [error])
    with pytest.raises((StoreError, FileNotFoundError, ValueError)):
        store.read("k")
    assert fs.calls == 1 and sleeps == []


# -- against moto's S3 server and a directory ---------------------------------------------------------


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


def check_fails(url: str, *words: str, within: float = 5.0) -> None:
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        RemoteStore(url).check()
    assert time.monotonic() - t0 < within
    assert_one_line_store_error(e.value, *words)


def test_check_passes_on_a_usable_store(s3: S3Server, tmp_path: Path) -> None:
    RemoteStore(s3.fresh_url()).check()
    RemoteStore(f"file://{tmp_path}").check()
    RemoteStore("memory://check").check()


def test_a_missing_bucket(s3: S3Server) -> None:
    check_fails("s3://no-such-bucket/run", "bucket 'no-such-bucket' does not exist")
    store = RemoteStore("s3://no-such-bucket/run", generation=1)
    with pytest.raises(StoreError) as e:
        store.objects.write("k", b"x")
    assert_one_line_store_error(e.value, "does not exist")


def test_a_missing_directory(tmp_path: Path) -> None:
    check_fails(f"file://{tmp_path}/nope", "does not exist")


def test_refused_credentials(s3: S3Server) -> None:
    url = s3.fresh_url()
    with s3.iam_auth():
        check_fails(url, "access denied", "AWS_ACCESS_KEY_ID")


def test_no_credentials(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    check_fails(s3.fresh_url(), "no credentials")


def test_an_unreachable_endpoint_fails_fast(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    check_fails(s3.fresh_url(), "cannot reach http://127.0.0.1:1", within=3.0)


def test_a_backend_that_is_not_installed() -> None:
    pytest.importorskip("s3fs")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StoreError) as e:
            ObjectStore("gs://bucket-1/x")
        assert_one_line_store_error(e.value, "gs:// backend is not installed")
    else:
        pytest.skip("gcsfs is installed")


@pytest.mark.parametrize("kind", ["s3", "file", "memory"])
def test_create_only_writes_refuse_a_taken_key(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = {"file": f"file://{tmp_path}", "memory": f"memory://create-{tmp_path.name}"}.get(kind)
    if url is None:
        url = request.getfixturevalue("s3").fresh_url()
    store = ObjectStore(url)
    assert store.atomic_create
    store.write("a/b", b"first", create_only=True)
    with pytest.raises(FileExistsError):
        store.write("a/b", b"second", create_only=True)
    assert store.read("a/b") == b"first"
    store.write("a/b", b"third")
    assert store.read("a/b") == b"third"
    assert sorted(store.find("a")) == ["a/b"] and store.find("nothing") == {}
    if kind == "file":
        assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_listing_sizes_etags_and_times(s3: S3Server) -> None:
    store = ObjectStore(s3.fresh_url())
    before = time.time()
    store.write("x/one", b"12345")
    blob = store.find("x")["x/one"]
    assert (blob.key, blob.size, blob.etag) == ("x/one", 5, "827ccb0eea8a706c4c34a16891f84e7b")  # md5("12345")
    assert abs(blob.modified - before) < 60
    assert (store.info("x/one").size, store.info("x/one").etag) == (5, blob.etag)


def test_missing_objects_stay_file_not_found(s3: S3Server, tmp_path: Path) -> None:
    for url in (s3.fresh_url(), f"file://{tmp_path}"):
        store = ObjectStore(url)
        with pytest.raises(FileNotFoundError):
            store.read("no/such/key")
        store.delete(["no/such/key"])  # deleting what is gone is fine
