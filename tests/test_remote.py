"""The remote tier, the same suite on a real S3 API (moto's server) and on a second directory:
upload then commit, download verified before use, fallback past corrupt checkpoints, retention,
fencing of a stale supervisor, signed manifests, journals restored on an empty machine."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpoint.objects import StoreError
from checkpoint.remote import CHECKPOINTS, CheckpointConflict, RemoteStore, plan_prune
from checkpoint.storage import LocalStorage
from checkpoint.store import MANIFEST, CheckpointStore, CorruptCheckpoint, checkpoint_name, seal_manifest
from rundir.exitcodes import ExitCode

PART = 5 << 20


class Warnings(list[str]):
    def __call__(self, msg: str) -> None:
        self.append(msg)


def files_for(step: int, big: int = 0) -> dict[str, bytes]:
    out = {"model.bin": f"model after {step} steps;".encode() * 40, "opt.bin": bytes(range(256)) * (step + 1)}
    if big:
        out["big.bin"] = os.urandom(big)
    return out


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Path]:
    """Saves a local checkpoint in a run directory and returns its directory."""
    store = CheckpointStore(LocalStorage(tmp_path / "run"), keep=100)

    def save(step: int, big: int = 0, meta: dict | None = None) -> Path:
        store.save(step, files_for(step, big), meta if meta is not None else {"step": step})
        return tmp_path / "run" / CHECKPOINTS / checkpoint_name(step)

    return save


def die(fname: str) -> None:
    raise KeyboardInterrupt  # the writer dies after a file, before the manifest


def writer(url: str, **kw) -> RemoteStore:
    store = RemoteStore(url, part_size=PART, **kw)
    store.acquire()
    return store


def steps(store: RemoteStore) -> list[int]:
    return [c.step for c in store.list_committed()]


def restored(dest: Path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(dest))


def test_round_trip_upload_commit_download(url: str, run: Callable[..., Path], tmp_path: Path) -> None:
    store = writer(url)
    meta = {"epoch": 2, "rng": [1, 2, 3]}
    up = store.upload(run(7, big=11 << 20, meta=meta))  # 11 MiB: a multipart upload on S3
    assert (up.name, up.already) == ("step-000000007", False)
    assert up.bytes == sum(len(v) for v in files_for(7).values()) + (11 << 20)
    expected = "etag" if url.startswith("s3://") else "read-back"
    assert set(up.checked.values()) == {expected}

    latest = store.latest()
    assert latest is not None and (latest.step, latest.generation, dict(latest.meta)) == (7, 1, meta)
    assert steps(store) == [7]

    empty = tmp_path / "machine-2"
    got = RemoteStore(url).download(empty / CHECKPOINTS)
    assert got is not None and got.step == 7
    ck = restored(empty).load_latest()
    original = restored(tmp_path / "run").verify("step-000000007")
    assert ck is not None and (dict(ck.files), dict(ck.meta)) == (dict(original.files), meta)
    assert [p.name for p in (empty / CHECKPOINTS).iterdir()] == ["step-000000007"]  # no staging left


def test_reupload_is_idempotent_and_another_checkpoint_of_the_step_conflicts(url: str, run: Callable[..., Path],
                                                                              tmp_path: Path) -> None:
    store = writer(url)
    path = run(3)
    store.upload(path)
    assert store.upload(path).already
    other = CheckpointStore(LocalStorage(tmp_path / "other"))
    other.save(3, {"model.bin": b"different"}, {})
    with pytest.raises(CheckpointConflict) as e:
        store.upload(tmp_path / "other" / CHECKPOINTS / "step-000000003")
    assert e.value.code == ExitCode.STORE
    assert steps(store) == [3]


def test_files_without_a_manifest_are_not_a_checkpoint(url: str, run: Callable[..., Path], tmp_path: Path) -> None:
    store = writer(url)
    store.upload(run(1))
    torn = RemoteStore(url, part_size=PART, generation=store.generation, between_files=die)
    with pytest.raises(KeyboardInterrupt):
        torn.upload(run(2))
    blobs = store.objects.find(f"{CHECKPOINTS}/step-000000002")
    assert blobs and not any(k.endswith(MANIFEST) for k in blobs)
    assert steps(store) == [1]
    got = store.download(tmp_path / "dest")
    assert got is not None and got.step == 1

    store.upload(run(2))  # the next upload of the same checkpoint completes it
    assert steps(store) == [1, 2]


def flip_byte(store: RemoteStore, key: str, at: int = 10) -> None:
    data = bytearray(store.objects.read(key))
    data[at] ^= 0x01
    store.objects.write(key, bytes(data))


def test_a_flipped_byte_is_skipped_with_a_warning_and_falls_back(url: str, run: Callable[..., Path],
                                                                 tmp_path: Path) -> None:
    store = writer(url)
    for step in (1, 2, 3):
        store.upload(run(step))
    flip_byte(store, f"{CHECKPOINTS}/step-000000003/opt.bin")  # data: caught on download
    flip_byte(store, f"{CHECKPOINTS}/step-000000002/{MANIFEST}", at=30)  # manifest: caught when listed
    warn = Warnings()
    got = store.download(tmp_path / "dest", warn=warn)
    assert got is not None and got.step == 1
    assert any("step-000000003/opt.bin: sha256 mismatch" in w and "falling back" in w for w in warn), warn
    assert any("step-000000002" in w and "not a checkpoint" in w for w in warn), warn
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["step-000000001"]


def test_download_at_or_before_a_step(url: str, run: Callable[..., Path], tmp_path: Path) -> None:
    store = writer(url)
    for step in (2, 4, 6):
        store.upload(run(step))
    for asked, got in [(9, 6), (6, 6), (5, 4), (4, 4), (2, 2), (1, None)]:
        ck = store.download(tmp_path / f"d{asked}", step=asked)
        assert (ck.step if ck else None) == got
    assert RemoteStore(url).download(tmp_path / "d-empty", step=1) is None


def test_a_corrupt_local_checkpoint_is_never_uploaded(url: str, run: Callable[..., Path]) -> None:
    store = writer(url)
    path = run(5)
    (path / "opt.bin").write_bytes(b"rotten")
    with pytest.raises(CorruptCheckpoint, match="opt.bin"):
        store.upload(path)
    assert store.objects.find(CHECKPOINTS) == {}


def test_a_flipped_local_byte_is_caught_by_the_local_digest(url: str, run: Callable[..., Path]) -> None:
    path = run(5)
    data = bytearray((path / "opt.bin").read_bytes())
    data[7] ^= 0x01  # the same size: only the digest can tell
    (path / "opt.bin").write_bytes(bytes(data))
    store = writer(url)
    with pytest.raises(CorruptCheckpoint, match="opt.bin: xxh3-128 mismatch"):
        store.upload(path)
    assert store.objects.find(CHECKPOINTS) == {}


def test_the_store_records_sha256_digests_whatever_the_local_manifest_used(url: str, run: Callable[..., Path]) -> None:
    """The store's manifest is signed where a key is set, and its copies are checked by SHA-256: its
    digests must be SHA-256, also of a local checkpoint with fast ones."""
    path = run(4)
    local = json.loads((path / MANIFEST).read_bytes())
    assert local["digest"] == "xxh3-128"
    store = writer(url, key=b"k")
    store.upload(path)
    remote = json.loads(store.objects.read(f"{CHECKPOINTS}/step-000000004/{MANIFEST}"))
    assert "digest" not in remote
    assert remote["files"] == {f: {"sha256": hashlib.sha256((path / f).read_bytes()).hexdigest(), "size": e["size"]}
                               for f, e in local["files"].items()}
    assert store.upload(path).already  # compared with the local checkpoint's SHA-256 digests


def test_the_upload_check_catches_a_store_that_holds_other_bytes(url: str, run: Callable[..., Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken variant: a transfer that lands flipped bytes. The check after upload refuses to commit."""
    store = writer(url)
    real = store.objects.upload

    def corrupting(local: Path, key: str, *, part_size: int) -> None:
        real(local, key, part_size=part_size)
        flip_byte(store, key)

    monkeypatch.setattr(store.objects, "upload", corrupting)
    with pytest.raises(StoreError, match="differs from the uploaded file"):
        store.upload(run(4))
    assert steps(store) == []


def test_a_manifest_naming_a_path_outside_is_refused(url: str, run: Callable[..., Path], tmp_path: Path) -> None:
    store = writer(url)
    store.upload(run(1))
    body = {"format": 1, "step": 2, "durable": True, "meta": {},
            "files": {"../../escaped": {"sha256": "0" * 64, "size": 5}}}
    store.objects.write(f"{CHECKPOINTS}/step-000000002/{MANIFEST}", seal_manifest(body))
    warn = Warnings()
    dest = tmp_path / "deep" / "dest"
    got = store.download(dest, warn=warn)
    assert got is not None and got.step == 1
    assert any("lists a file outside the checkpoint" in w for w in warn), warn
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()


# -- retention -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep", "kept"), [(1, [5]), (2, [4, 5]), (9, [1, 2, 3, 4, 5])])
def test_prune_keeps_the_newest_n(url: str, run: Callable[..., Path], keep: int, kept: list[int]) -> None:
    store = writer(url)
    for step in range(1, 6):
        store.upload(run(step))
    gone = store.prune(keep, grace=0)
    assert steps(store) == kept
    assert gone == [checkpoint_name(s) for s in range(1, 6) if s not in kept]
    assert {k.split("/")[1] for k in store.objects.find(CHECKPOINTS)} == {checkpoint_name(s) for s in kept}


def test_prune_waits_out_the_grace_period(url: str, run: Callable[..., Path]) -> None:
    now = [time.time()]
    store = writer(url, clock=lambda: now[0])
    for step in (1, 2, 3):
        store.upload(run(step))
    store.objects.delete([f"{CHECKPOINTS}/step-000000002/{MANIFEST}"])  # a leftover older than a commit
    torn = RemoteStore(url, part_size=PART, generation=store.generation, between_files=die)
    with pytest.raises(KeyboardInterrupt):
        torn.upload(run(4))  # an upload in progress
    assert steps(store) == [1, 3]
    assert store.prune(1, grace=600) == []  # step 3 was committed just now: a reader may be on step 1
    now[0] += 601
    assert store.prune(1, grace=600) == ["step-000000001", "step-000000002"]
    assert steps(store) == [3]
    assert any("step-000000004" in k for k in store.objects.find(CHECKPOINTS))  # newer than any commit: kept


@pytest.mark.parametrize(("committed", "leftovers", "keep", "now", "doomed"), [
    ([], {}, 1, 100, []),
    ([], {"step-000000001": 0}, 1, 100, []),  # nothing committed: a leftover may be the first upload
    ([("step-000000001", 0), ("step-000000002", 50)], {}, 1, 100, ["step-000000001"]),
    ([("step-000000001", 0), ("step-000000002", 50)], {}, 1, 80, []),  # 2 committed 30 s ago
    ([("step-000000001", 0), ("step-000000002", 50)], {}, 2, 1000, []),
    ([("a", 0), ("b", 10), ("c", 90)], {}, 1, 100, ["a"]),  # a's successor b is old enough, c is not
    ([("step-000000003", 0)], {"step-000000002": 10, "step-000000004": 10}, 1, 100, ["step-000000002"]),
    ([("step-000000003", 0)], {"step-000000002": 80}, 1, 100, []),  # touched 20 s ago
])
def test_plan_prune(committed: list[tuple[str, float]], leftovers: dict[str, float], keep: int, now: float,
                    doomed: list[str]) -> None:
    assert plan_prune(committed, leftovers, keep=keep, grace=50, now=now) == doomed


# -- fencing ---------------------------------------------------------------------------------------------


def test_the_older_of_two_supervisors_is_fenced(url: str, run: Callable[..., Path], tmp_path: Path) -> None:
    old = writer(url)
    old.upload(run(1))
    new = writer(url)
    assert (old.generation, new.generation) == (1, 2)
    for attempt in (lambda: old.upload(run(2)), lambda: old.append_segment("losses.jsonl", b"x\n"),
                    lambda: old.prune(1, grace=0)):
        with pytest.raises(StoreError) as e:
            attempt()
        assert type(e.value).__name__ == "StaleGeneration" and e.value.code == ExitCode.STORE
        assert "\n" not in str(e.value) and "generation 1 was superseded by generation 2" in str(e.value)
    new.upload(run(2))
    assert [(c.step, c.generation) for c in new.list_committed()] == [(1, 1), (2, 2)]


def test_a_writer_overtaken_between_check_and_commit_takes_its_commit_back(url: str, run: Callable[..., Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    old = writer(url)
    real = old.objects.write

    def write_then_lose_the_race(key: str, data: bytes, *, create_only: bool = False) -> None:
        real(key, data, create_only=create_only)
        if key.endswith(MANIFEST):
            RemoteStore(url).acquire()  # a new supervisor starts right after the manifest landed

    monkeypatch.setattr(old.objects, "write", write_then_lose_the_race)
    with pytest.raises(StoreError, match="superseded"):
        old.upload(run(1))
    assert steps(old) == []


def test_a_failed_recheck_that_is_not_a_newer_generation_keeps_the_commit(url: str, run: Callable[..., Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Only being overtaken takes a commit back; a store that stops answering after the manifest landed
    leaves a valid checkpoint in place (and the error is still reported)."""
    store = writer(url)
    real, calls = store.fence.check, []

    def check(doing: str) -> None:
        calls.append(doing)
        if len(calls) == 3:  # upload's check, the check before the manifest, then this one after it
            raise StoreError("remote store: stat fence: gave up after 4 attempt(s)")
        real(doing)

    monkeypatch.setattr(store.fence, "check", check)
    with pytest.raises(StoreError, match="gave up"):
        store.upload(run(1))
    assert steps(store) == [1]


def test_writes_need_a_generation(url: str, run: Callable[..., Path]) -> None:
    with pytest.raises(StoreError, match="needs a generation"):
        RemoteStore(url).upload(run(1))
    with pytest.raises(StoreError, match="never taken"):
        RemoteStore(url, generation=5).upload(run(1))


# -- authenticity ----------------------------------------------------------------------------------------


def rewrite_manifest(store: RemoteStore, name: str, change: Callable[[dict], None], key: bytes | None) -> None:
    """Rewrite a manifest as an attacker could: a valid checksum, and an HMAC only with the right key."""
    mkey = f"{CHECKPOINTS}/{name}/{MANIFEST}"
    body = json.loads(store.objects.read(mkey))
    body.pop("sha256")
    body.pop("hmac_sha256", None)
    change(body)
    store.objects.write(mkey, seal_manifest(body, key=key))


def test_a_tampered_signed_manifest_is_refused(url: str, run: Callable[..., Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CHECKPOINT_KEY", "s3cret")
    store = writer(url)
    for step in (1, 2):
        store.upload(run(step))
    rewrite_manifest(store, "step-000000002", lambda b: b["meta"].update(step=999), key=None)
    warn = Warnings()
    got = store.download(tmp_path / "dest", warn=warn)
    assert got is not None and got.step == 1
    assert any("step-000000002" in w and "not signed" in w for w in warn), warn

    rewrite_manifest(store, "step-000000002", lambda b: b["meta"].update(step=999), key=b"guessed")
    warn.clear()
    assert [c.step for c in store.list_committed(warn)] == [1]
    assert any("HMAC mismatch" in w for w in warn), warn

    # Without the HMAC check the same tampering would pass: the checksum alone does not catch it.
    monkeypatch.delenv("RUNNER_CHECKPOINT_KEY")
    unsigned_reader = RemoteStore(url)
    assert [c.step for c in unsigned_reader.list_committed()] == [1, 2]
    assert unsigned_reader.latest().meta["step"] == 999  # type: ignore[union-attr]


def test_signed_manifests_round_trip(url: str, run: Callable[..., Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CHECKPOINT_KEY", "s3cret")
    store = writer(url)
    store.upload(run(1))
    assert "hmac_sha256" in json.loads(store.objects.read(f"{CHECKPOINTS}/step-000000001/{MANIFEST}"))
    assert RemoteStore(url).download(tmp_path / "m2" / CHECKPOINTS) is not None
    ck = restored(tmp_path / "m2").load_latest()  # the local store reads a signed manifest too
    assert ck is not None and ck.step == 1


# -- journals --------------------------------------------------------------------------------------------


def test_journals_restore_on_an_empty_machine_up_to_the_checkpoint(url: str, run: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    store = writer(url)
    losses = tmp_path / "run" / "losses.jsonl"
    events = tmp_path / "run" / "events.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 9)]
    losses.parent.mkdir(parents=True, exist_ok=True)
    losses.write_text("".join(lines[:4]) + '{"step": 5, "lo')  # a torn last line is not uploaded
    events.write_text('{"kind": "start"}\n')
    store.upload(run(4), journals=[losses, events])
    losses.write_text("".join(lines))
    store.upload(run(8), journals=[losses, events])
    losses.write_text("".join(lines) + lines[0])  # lines after the newest checkpoint
    store.sync_journal(losses)

    empty = tmp_path / "empty"
    ck = RemoteStore(url).download(empty / CHECKPOINTS, step=4)
    assert ck is not None and ck.journals == {"losses.jsonl": len("".join(lines[:4])), "events.jsonl": 18}
    assert store.restore_journal(empty, upto=ck.journals) == ck.journals
    assert (empty / "losses.jsonl").read_text() == "".join(lines[:4])
    assert (empty / "events.jsonl").read_text() == '{"kind": "start"}\n'
    store.restore_journal(empty)  # no cut: everything the store holds
    assert (empty / "losses.jsonl").read_text() == "".join(lines) + lines[0]


def test_bad_arguments_say_what_is_wrong(url: str, run: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="part_size"):
        RemoteStore(url, part_size=1 << 20)
    store = writer(url)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        store.prune(0)
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        store.upload(tmp_path)
    torn = run(1)
    (torn / MANIFEST).unlink()
    with pytest.raises(CorruptCheckpoint, match="no MANIFEST.json"):
        store.upload(torn)
