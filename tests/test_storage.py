"""checkpoint/storage.py: LocalStorage's whole-object operations on a real directory: a put is all or
nothing, a get reads only regular files inside the key's directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from checkpoint import filehash
from checkpoint.storage import LocalStorage
from rundir.paths import PathEscape


@pytest.mark.parametrize(("commit", "durable"), [(True, True), (False, True), (True, False), (False, False)])
def test_put_then_get_lists_and_leaves_no_temp_file(tmp_path: Path, commit: bool, durable: bool) -> None:
    s = LocalStorage(tmp_path)
    s.put("checkpoints/step-1/a.bin", b"abc", commit=commit, durable=durable)
    s.put("checkpoints/step-1/b.bin", [memoryview(b"de"), memoryview(b""), memoryview(bytearray(b"f"))],
          commit=commit, durable=durable)
    assert s.get("checkpoints/step-1/a.bin") == b"abc"
    assert s.get("checkpoints/step-1/b.bin") == b"def"
    assert s.list("checkpoints/step-1") == ["a.bin", "b.bin"]  # no .tmp- file left
    assert s.list("checkpoints") == ["step-1"] and s.list("nothing-here") == []


def test_a_put_replaces_the_whole_object(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    s.put("k", b"a long first version")
    s.put("k", b"short")
    assert s.get("k") == b"short"


def test_exists_delete_and_trees(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    s.put("ck/.tmp-1/x", b"1")
    assert s.exists("ck/.tmp-1/x") and not s.exists("ck/.tmp-1/y")
    s.move_tree("ck/.tmp-1", "ck/step-1")
    assert s.list("ck") == ["step-1"] and s.get("ck/step-1/x") == b"1"
    s.delete("ck/step-1/x")
    s.delete("ck/step-1/x")  # already gone: fine
    assert s.list("ck/step-1") == []
    s.delete_tree("ck")
    s.delete_tree("ck")
    assert not (tmp_path / "ck").exists()


def test_get_refuses_a_link_out_of_the_keys_directory(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"not yours")
    s = LocalStorage(tmp_path / "run")
    s.put("checkpoints/step-1/ok", b"1")
    os.symlink(tmp_path / "secret", tmp_path / "run" / "checkpoints" / "step-1" / "link")
    with pytest.raises(PathEscape):
        s.get("checkpoints/step-1/link")


def test_get_refuses_a_fifo_instead_of_waiting_on_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        LocalStorage(tmp_path).get("fifo")


@pytest.mark.parametrize("durable", [True, False])
def test_a_digest_is_fed_every_byte_written_in_order(tmp_path: Path, durable: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filehash, "SLICE", 7)  # slices of 7 bytes: many per part, none across two
    parts = [memoryview(b"header--"), memoryview(bytes(range(100))), memoryview(b""), memoryview(b"tail")]
    h = filehash.hasher("sha256")
    LocalStorage(tmp_path).put("d/x", parts, durable=durable, digest=h)
    written = (tmp_path / "d" / "x").read_bytes()
    assert written == b"".join(parts)
    assert h.hexdigest() == hashlib.sha256(written).hexdigest()
