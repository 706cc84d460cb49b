"""The checkpoint store on a real directory: commit by manifest, retention, and never loading bad bytes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from checkpoint.state import MODEL_FILE, TrainState, params_digest
from checkpoint.storage import LocalStorage
from checkpoint.store import (
    MANIFEST,
    Checkpoint,
    CheckpointStore,
    CorruptCheckpoint,
    _canonical,
    _sha256,
    checkpoint_name,
)


def make_store(root: Path, **kw) -> CheckpointStore:
    return CheckpointStore(LocalStorage(root), **kw)


def files_for(step: int) -> dict[str, bytes]:
    return {"a.bin": f"model after {step} steps".encode() * 50, "b.bin": bytes(range(256)) * (step + 1)}


def ckpt_dir(root: Path, step: int) -> Path:
    return root / "checkpoints" / checkpoint_name(step)


def step_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "checkpoints").iterdir())


class Warnings(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


def test_save_verify_load_latest_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    meta = {"epoch": 1, "batch": 5, "nested": {"rng": [1, 2, 3]}, "lr": 0.0025}
    assert store.save(7, files_for(7), meta) == "step-000000007"
    assert sorted(p.name for p in ckpt_dir(tmp_path, 7).iterdir()) == sorted(["a.bin", "b.bin", MANIFEST])

    ck = store.verify("step-000000007")
    assert (ck.step, ck.name, dict(ck.files), dict(ck.meta)) == (7, "step-000000007", files_for(7), meta)
    assert store.load_latest() == ck
    # No temporary files are left next to the committed ones.
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_load_latest_picks_the_newest_and_none_when_empty(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.load_latest() is None
    for step in (3, 12, 9):
        store.save(step, files_for(step), {"s": step})
    latest = store.load_latest()
    assert latest is not None and latest.step == 12 and latest.files == files_for(12)


def test_load_latest_falls_back_past_a_checkpoint_a_further_check_refuses(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for step in (3, 6):
        store.save(step, files_for(step), {"good": step == 3})

    def check(ck: Checkpoint) -> None:
        if not ck.meta["good"]:
            raise CorruptCheckpoint(f"{ck.name}: not good")

    warned = Warnings()
    latest = store.load_latest(warn=warned, check=check)
    assert latest is not None and latest.step == 3
    assert len(warned) == 1 and "step-000000006: not good" in warned[0]
    assert checkpoint_name(6) not in store.committed()  # moved aside, as a corrupt one is


@pytest.mark.parametrize(("keep", "kept"), [(3, [4, 5, 6]), (1, [6]), (5, [2, 3, 4, 5, 6]), (10, [1, 2, 3, 4, 5, 6])])
def test_retention_keeps_the_newest(tmp_path: Path, keep: int, kept: list[int]) -> None:
    store = make_store(tmp_path, keep=keep)
    for step in range(1, 7):
        store.save(step, files_for(step), {})
    assert step_dirs(tmp_path) == [checkpoint_name(s) for s in kept]
    assert store.committed() == [checkpoint_name(s) for s in kept]


def test_default_retention_is_three(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for step in range(10, 60, 10):
        store.save(step, files_for(step), {})
    assert store.committed() == [checkpoint_name(s) for s in (30, 40, 50)]


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_store(tmp_path, keep=0)


@pytest.mark.parametrize("fname", [MANIFEST, "sub/dir.bin"])
def test_bad_file_names_are_refused(tmp_path: Path, fname: str) -> None:
    with pytest.raises(ValueError, match="bad checkpoint file name"):
        make_store(tmp_path).save(1, {fname: b"x"}, {})


def test_checkpoint_without_manifest_is_ignored_silently_and_pruned_later(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.save(4, files_for(4), {})
    torn = ckpt_dir(tmp_path, 8)
    torn.mkdir()
    (torn / "a.bin").write_bytes(files_for(8)["a.bin"])  # a writer killed before the manifest

    warns = Warnings()
    ck = store.load_latest(warn=warns)
    assert ck is not None and ck.step == 4
    assert warns == []  # never committed, so nothing is wrong: no warning, nothing moved aside
    assert store.committed() == [checkpoint_name(4)]
    assert torn.exists()
    store.save(5, files_for(5), {})  # the next save cleans the leftover up
    assert step_dirs(tmp_path) == [checkpoint_name(4), checkpoint_name(5)]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def flip_manifest_digit(path: Path) -> None:
    # Change one hex digit of a recorded checksum: still valid JSON, so only its own checksum can tell.
    text = path.read_text()
    i = text.index('"xxh3-128": "') + len('"xxh3-128": "')
    path.write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :])


def flip_manifest_structure(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"{", b"[", 1))


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        m = json.loads(path.read_text())
        change(m)
        path.write_text(json.dumps(m))

    return apply


def bump_step(m: dict) -> None:
    m["step"] += 1  # a valid-looking manifest whose body no longer matches its checksum


CORRUPTIONS = [
    pytest.param("a.bin", truncate, "a.bin: 940 bytes, manifest says 950", id="truncated-data-file"),
    pytest.param("b.bin", flip_middle, "b.bin: xxh3-128 mismatch", id="flipped-byte-in-data-file"),
    pytest.param("a.bin", lambda p: p.unlink(), "a.bin: missing", id="missing-data-file"),
    pytest.param(MANIFEST, flip_manifest_digit, f"{MANIFEST}: checksum mismatch", id="flipped-byte-in-manifest"),
    pytest.param(MANIFEST, edit_manifest(bump_step), f"{MANIFEST}: checksum mismatch", id="edited-manifest"),
    pytest.param(MANIFEST, flip_manifest_structure, f"{MANIFEST}: unreadable", id="manifest-not-json"),
    pytest.param(MANIFEST, truncate, f"{MANIFEST}: unreadable", id="truncated-manifest"),
    pytest.param(MANIFEST, lambda p: p.write_text('{"files": {}}'), f"{MANIFEST}: unreadable",
                 id="manifest-without-checksum"),
]


@pytest.mark.parametrize(("fname", "corrupt", "problem"), CORRUPTIONS)
def test_corrupt_newest_falls_back_warns_once_and_quarantines(
    tmp_path: Path, fname: str, corrupt: Callable[[Path], None], problem: str
) -> None:
    store = make_store(tmp_path)
    store.save(1, files_for(1), {"s": 1})
    store.save(2, files_for(2), {"s": 2})
    bad = ckpt_dir(tmp_path, 2)
    corrupt(bad / fname)
    bad_bytes = {p.name: p.read_bytes() for p in bad.iterdir()}

    with pytest.raises(CorruptCheckpoint) as exc:
        store.verify(checkpoint_name(2))
    assert str(exc.value) == f"{checkpoint_name(2)}/{problem}"

    warns = Warnings()
    ck = store.load_latest(warn=warns)
    assert ck is not None and (ck.step, dict(ck.files), dict(ck.meta)) == (1, files_for(1), {"s": 1})
    assert len(warns) == 1 and "\n" not in warns[0]
    assert f"{checkpoint_name(2)}/{problem}" in warns[0]
    # Moved aside intact, for inspection; never listed as a checkpoint again.
    aside = tmp_path / "checkpoints" / f"corrupt-{checkpoint_name(2)}-0"
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == bad_bytes
    assert not bad.exists()
    assert store.committed() == [checkpoint_name(1)]
    # A second load is quiet: the bad one is out of the way.
    assert store.load_latest(warn=warns) == ck and len(warns) == 1


def test_every_bad_checkpoint_is_reported_and_quarantine_names_do_not_collide(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for step in (1, 2):
        store.save(step, files_for(step), {})
        flip_middle(ckpt_dir(tmp_path, step) / "a.bin")
    warns = Warnings()
    assert store.load_latest(warn=warns) is None
    assert [checkpoint_name(2) in w for w in warns] == [True, False]
    assert [checkpoint_name(1) in w for w in warns] == [False, True]

    store.save(2, files_for(2), {})  # the same step is written and damaged again
    truncate(ckpt_dir(tmp_path, 2) / "b.bin")
    assert store.load_latest(warn=warns) is None
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert sorted(names) == [f"corrupt-{checkpoint_name(1)}-0", f"corrupt-{checkpoint_name(2)}-0",
                             f"corrupt-{checkpoint_name(2)}-1"]


def test_between_files_hook_runs_after_each_durable_file_and_before_the_manifest(tmp_path: Path) -> None:
    seen: list[tuple[str, bool, list[str]]] = []
    d = ckpt_dir(tmp_path, 3)

    def hook(fname: str) -> None:
        on_disk = sorted(p.name for p in d.iterdir())
        seen.append((fname, (d / MANIFEST).exists(), on_disk))

    store = make_store(tmp_path, between_files=hook)
    files = {"z.bin": b"z", "model.safetensors": b"m" * 10, "opt.bin": b"o"}
    store.save(3, files, {})
    assert seen == [
        ("z.bin", False, ["z.bin"]),
        ("model.safetensors", False, ["model.safetensors", "z.bin"]),
        ("opt.bin", False, ["model.safetensors", "opt.bin", "z.bin"]),
    ]
    assert (d / MANIFEST).exists()


class Killed(Exception):
    pass


def test_a_writer_stopped_between_files_leaves_no_checkpoint(tmp_path: Path) -> None:
    def die(fname: str) -> None:
        raise Killed(fname)

    make_store(tmp_path).save(4, files_for(4), {})
    with pytest.raises(Killed):
        make_store(tmp_path, between_files=die).save(8, files_for(8), {})
    store = make_store(tmp_path)
    assert store.committed() == [checkpoint_name(4)]
    ck = store.load_latest()
    assert ck is not None and ck.step == 4


def test_saving_the_same_step_twice(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.save(5, {"a.bin": b"first", "old.bin": b"x"}, {"v": 1})
    store.save(5, {"a.bin": b"second"}, {"v": 2})
    ck = store.load_latest()
    assert ck is not None and dict(ck.files) == {"a.bin": b"second"} and dict(ck.meta) == {"v": 2}
    assert store.committed() == [checkpoint_name(5)]


def test_rewriting_a_step_uncommits_it_first(tmp_path: Path) -> None:
    """A kill while a step is rewritten must not leave the old manifest vouching for new files."""
    store = make_store(tmp_path)
    store.save(4, files_for(4), {})
    store.save(5, {"a.bin": b"first"}, {"v": 1})

    def die(fname: str) -> None:
        raise Killed(fname)

    with pytest.raises(Killed):
        make_store(tmp_path, between_files=die).save(5, {"a.bin": b"second"}, {"v": 2})
    warns = Warnings()
    ck = store.load_latest(warn=warns)
    assert ck is not None and ck.step == 4 and warns == []


# -- verification comes before any parsing --------------------------------------------------------------


def train_state(step: int) -> TrainState:
    rng = np.random.default_rng(step)
    model = {"fc.weight": rng.standard_normal((40, 10)).astype(np.float32), "fc.bias": np.zeros(10, np.float32)}
    opt = {"fc.weight_moment1_0": rng.standard_normal((40, 10)).astype(np.float32)}
    return TrainState(step=step, epoch=1, batch=step % 15, model=model, optimizer=opt,
                      lr_scheduler={"last_epoch": step, "last_lr": 0.005},
                      rng=({"numpy/keys": rng.integers(0, 2**32, 624, dtype=np.uint32)}, {"data": {"state": step}}),
                      order=rng.permutation(1500))


def test_train_state_round_trips_through_the_store(tmp_path: Path) -> None:
    st = train_state(20)
    store = make_store(tmp_path)
    store.save(st.step, *st.to_files())
    got = TrainState.from_checkpoint(store.load_latest())
    assert (got.step, got.epoch, got.batch) == (20, 1, 5)
    assert params_digest(got.model) == params_digest(st.model)
    assert params_digest(got.optimizer) == params_digest(st.optimizer)
    assert np.array_equal(got.order, st.order) and got.order.dtype == np.int64
    assert dict(got.lr_scheduler) == dict(st.lr_scheduler)
    (got_arrays, got_meta), (arrays, meta) = got.rng_state(), st.rng_state()
    assert dict(got_meta) == dict(meta)
    assert got_arrays.keys() == arrays.keys() and all(np.array_equal(got_arrays[k], arrays[k]) for k in arrays)


def test_a_corrupt_tensor_file_is_rejected_by_checksum_before_anything_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    for step in (16, 20):
        st = train_state(step)
        store.save(step, *st.to_files())
    path = ckpt_dir(tmp_path, 20) / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes, past the safetensors header
    path.write_bytes(bytes(data))
    # The damage is silent to the parser: it loads, with different numbers. Only the checksum can tell.
    damaged = st_load(bytes(data))
    assert params_digest(damaged) != params_digest(train_state(20).model)

    parsed: list[bytes] = []
    real_load = st_load

    def spy(raw: bytes) -> dict[str, np.ndarray]:
        parsed.append(bytes(raw))
        return real_load(raw)

    monkeypatch.setattr("checkpoint.state.st_load", spy)
    warns = Warnings()
    ck = store.load_latest(warn=warns)
    assert isinstance(ck, Checkpoint) and ck.step == 16
    assert len(warns) == 1 and f"{checkpoint_name(20)}/{MODEL_FILE}: xxh3-128 mismatch" in warns[0]
    assert parsed == []  # load_latest only checks bytes; it never deserialises them
    st = TrainState.from_checkpoint(ck)
    assert bytes(data) not in parsed and len(parsed) == 2  # model.safetensors and train.safetensors
    assert params_digest(st.model) == params_digest(train_state(16).model)


# -- durability ----------------------------------------------------------------------------------------


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what each os.fsync is called on (a file or a directory), and still do it."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_a_durable_put_fsyncs_the_file_and_every_directory_up_to_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run"
    seen = count_fsyncs(monkeypatch)
    LocalStorage(root).put("checkpoints/step-1/a.bin", b"a", commit=False)
    LocalStorage(root).put("checkpoints/step-1/MANIFEST.json", b"{}")
    pid = os.getpid()
    assert [Path(p).name for p in seen] == [f".a.bin.tmp-{pid}", f".MANIFEST.json.tmp-{pid}", "step-1",
                                            "checkpoints", "run"]
    seen.clear()
    LocalStorage(root).put("checkpoints/step-2/a.bin", b"a", commit=False, durable=False)
    LocalStorage(root).put("checkpoints/step-2/MANIFEST.json", b"{}", durable=False)
    assert seen == []
    assert (root / "checkpoints" / "step-2" / "a.bin").read_bytes() == b"a"  # visible all the same


@pytest.mark.parametrize(("durable_steps", "kept"), [
    ({1, 2, 3, 4, 5, 6}, [4, 5, 6]),  # all durable: the newest three
    ({1}, [1, 4, 5, 6]),  # the only durable one is kept besides the newest three
    ({1, 3}, [3, 4, 5, 6]),  # the newest durable one only
    ({5}, [4, 5, 6]),  # already among the newest
    (set(), [4, 5, 6]),  # none durable: nothing more to keep
])
def test_pruning_keeps_the_newest_durable_checkpoint(tmp_path: Path, durable_steps: set[int], kept: list[int]) -> None:
    store = make_store(tmp_path, keep=3)
    for step in range(1, 7):
        store.save(step, files_for(step), {"s": step}, durable=step in durable_steps)
    assert store.committed() == [checkpoint_name(s) for s in kept]
    # A new store (a new writer after a restart) reads which is durable from the manifests.
    fresh = make_store(tmp_path, keep=3)
    fresh.save(7, files_for(7), {"s": 7}, durable=False)
    durable_kept = durable_steps & set(kept)
    want = set(kept[-2:]) | {7} | ({max(durable_kept)} if durable_kept else set())
    assert fresh.committed() == [checkpoint_name(s) for s in sorted(want)]


def test_the_manifest_says_whether_a_checkpoint_is_durable_and_old_ones_count_as_durable(tmp_path: Path) -> None:
    store = make_store(tmp_path, keep=1)
    store.save(1, files_for(1), {}, durable=True)
    store.save(2, files_for(2), {}, durable=False)
    assert json.loads((ckpt_dir(tmp_path, 2) / MANIFEST).read_text())["durable"] is False
    assert json.loads((ckpt_dir(tmp_path, 1) / MANIFEST).read_text())["durable"] is True
    ck = store.load_latest()
    assert ck is not None and ck.step == 2 and dict(ck.files) == files_for(2)  # loads like any other
    # A manifest from before the field existed: every save was durable then.
    path = ckpt_dir(tmp_path, 1) / MANIFEST
    body = json.loads(path.read_text())
    body.pop("sha256")
    body.pop("durable")
    path.write_text(json.dumps(dict(body, sha256=_sha256(_canonical(body)))))
    fresh = make_store(tmp_path, keep=1)
    assert fresh.verify(checkpoint_name(1)).step == 1
    fresh.save(3, files_for(3), {}, durable=False)
    assert fresh.committed() == [checkpoint_name(1), checkpoint_name(3)]


# -- a full disk ----------------------------------------------------------------------------------------------


class FullAfter(LocalStorage):
    """Local storage whose disk fills once ``room`` more bytes were written: the next write raises
    ENOSPC in the middle (the kernel's answer, at ``_write_all``), naming no file."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    def put(self, key: str, data, *, commit: bool = True, durable: bool = True, digest=None) -> None:
        size = len(data) if isinstance(data, bytes) else sum(m.nbytes for m in data)
        if size > self.room:
            import checkpoint.storage as storage_mod

            real = storage_mod._write_all

            def short(fd: int, parts: list[memoryview]) -> None:
                os.write(fd, bytes(parts[0][: self.room]) if parts else b"")  # half a file, then no more space
                raise OSError(28, "No space left on device")

            storage_mod._write_all = short
            try:
                super().put(key, data, commit=commit, durable=durable, digest=digest)
            finally:
                storage_mod._write_all = real
        self.room -= size
        super().put(key, data, commit=commit, durable=durable, digest=digest)


A8, B8 = (len(v) for v in files_for(8).values())


# No room at all, in a.bin, in b.bin, in the manifest: the commit point.
@pytest.mark.parametrize("room", [0, 100, A8 + 100, A8 + B8 + 10], ids=["none", "a", "b", "manifest"])
def test_a_save_that_finds_the_disk_full_commits_nothing_and_leaves_nothing(tmp_path: Path, room: int) -> None:
    make_store(tmp_path).save(4, files_for(4), {})
    store = CheckpointStore(FullAfter(tmp_path, room))
    with pytest.raises(OSError) as got:
        store.save(8, files_for(8), {})
    assert got.value.errno == 28 and Path(got.value.filename).parent == ckpt_dir(tmp_path, 8)  # names the file
    assert step_dirs(tmp_path) == [checkpoint_name(4)]  # no torn directory taking the space the next one needs
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    ck = make_store(tmp_path).load_latest()
    assert ck is not None and ck.step == 4 and dict(ck.files) == files_for(4)


def test_a_full_disk_on_a_real_tmpfs_loses_nothing_committed(tmp_path: Path) -> None:
    from tests.helpers.tmpfs import fill, tmpfs

    with tmpfs(tmp_path / "disk", "256k") as disk:
        store = make_store(disk)
        store.save(4, files_for(4), {})
        fill(disk / "filler")
        with pytest.raises(OSError) as got:
            store.save(8, {"big.bin": bytes(64 * 1024)}, {})
        assert got.value.errno == 28 and got.value.filename == str(ckpt_dir(disk, 8) / "big.bin")
        assert step_dirs(disk) == [checkpoint_name(4)]
        (disk / "filler").unlink()  # space again: the next save goes through
        store.save(8, {"big.bin": bytes(64 * 1024)}, {})
        assert make_store(disk).committed() == [checkpoint_name(4), checkpoint_name(8)]
