"""The few etcd calls the nodes' supervisors make (runner/etcd.py), against a real etcd."""

from __future__ import annotations

import uuid

import pytest

from runner.etcd import Entry, Etcd, EtcdError


@pytest.fixture
def kv(etcd_url: str) -> Etcd:
    return Etcd(etcd_url)


def key() -> str:
    return f"/test/{uuid.uuid4().hex}"


def test_a_missing_key_reads_as_none_and_a_put_one_as_its_value_and_revision(kv: Etcd) -> None:
    k = key()
    assert kv.get(k) is None
    kv.put(k, "héllo {json}")
    got = kv.get(k)
    assert isinstance(got, Entry) and got.value == "héllo {json}" and got.mod_revision > 0


def test_a_swap_creates_only_what_does_not_exist_and_replaces_only_what_nobody_changed(kv: Etcd) -> None:
    k = key()
    assert kv.swap(k, "first", 0)
    assert not kv.swap(k, "second", 0)  # created already: the second creator loses
    rev = kv.get(k).mod_revision  # type: ignore[union-attr]
    assert kv.swap(k, "third", rev)
    assert not kv.swap(k, "fourth", rev)  # changed since that revision: the slower writer loses
    assert kv.get(k).value == "third"  # type: ignore[union-attr]


def test_an_etcd_that_does_not_answer_is_an_error_not_a_hang() -> None:
    from tests.etcd_server import free_port

    kv = Etcd(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    assert not kv.healthy()
    with pytest.raises(EtcdError, match="etcd at http://127.0.0.1"):
        kv.get("/x")
