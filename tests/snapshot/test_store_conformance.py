"""One contract, every store (restic's backend test suite): file://, s3:// on a real moto
server, hf:// and kaggle:// on local servers following the Hub and Kaggle HTTP APIs.

Each test gets a fresh, empty repository and ``reopen()``, which opens a NEW store object on
the same repository: what a second machine (or the next push) sees.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.snapshot.fakes.remotes import serve_remotes, set_credentials
from tether.errors import NotFoundError, UsageError
from tether.snapshot.stores import Store, StoreCapabilities, open_store

pytestmark = pytest.mark.timeout(90)
MiB = 1024 * 1024
_counter = itertools.count()


@pytest.fixture(scope="module")
def servers():
    with serve_remotes("conformance") as servers:
        yield servers


@pytest.fixture(params=["file", "s3", "hf", "kaggle"])
def reopen(request, servers, tmp_path, monkeypatch) -> Callable[[], Store]:
    """A factory of new store objects on one fresh repository of the parametrized kind."""
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "file")
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "tether-home"))
    n = next(_counter)
    kind = request.param
    set_credentials(kind, monkeypatch, tmp_path)
    if kind == "file":
        url, options = f"file://{tmp_path}/repo", {}
    elif kind == "s3":
        url = f"s3://conformance/repo-{n}"
        # A low threshold so the > 8 MiB test goes through multipart upload.
        options = {"endpoint": servers["s3"].endpoint, "region": "us-east-1",
                   "multipart_threshold": 8 * MiB, "multipart_chunksize": 5 * MiB}
    elif kind == "hf":
        url, options = f"hf://datasets/alice/conformance-{n}", {"endpoint": servers["hf"].url}
    else:
        url, options = f"kaggle://alice/conformance-{n}", {"endpoint": servers["kaggle"].url}
    opened: list[Store] = []

    def factory() -> Store:
        store = open_store(url, **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(reopen) -> Store:
    return reopen()


def test_is_a_store_with_honest_capability_types(store):
    assert isinstance(store, Store)
    caps = store.capabilities
    assert isinstance(caps, StoreCapabilities)
    assert all(isinstance(v, bool) for v in (caps.atomic_put, caps.consistent_list, caps.batched))
    assert caps.max_object_size is None or caps.max_object_size > 8 * MiB


def test_put_get_round_trip(store):
    store.put("config", b"repository config")
    store.put("packs/ab/0001", b"\x00\xffbinary\n")
    store.put("empty", b"")
    assert store.get("config") == b"repository config"
    assert store.get("packs/ab/0001") == b"\x00\xffbinary\n"
    assert store.get("empty") == b""


def test_put_is_idempotent(store, reopen):
    store.put("packs/ab/p", b"same")
    store.put("packs/ab/p", b"same")
    store.flush()
    store.put("packs/ab/p", b"same")     # again after it is durable
    store.flush()
    assert reopen().get("packs/ab/p") == b"same"
    assert reopen().list("packs/") == ["packs/ab/p"]


def test_get_missing_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.get("snapshots/missing")
    store.put("config", b"x")
    store.flush()
    with pytest.raises(NotFoundError):
        reopen_missing = store.get("snapshots/missing")
        del reopen_missing


@pytest.mark.parametrize(("offset", "length", "expected"), [
    pytest.param(0, 4, b"0123", id="head"),
    pytest.param(10, 6, b"abcdef", id="middle"),
    pytest.param(30, 100, b"uvwxyz", id="past-end-truncated"),
    pytest.param(-6, 6, b"uvwxyz", id="tail"),
    pytest.param(-6, 2, b"uv", id="tail-prefix"),
    pytest.param(36, 4, b"", id="at-end"),
    pytest.param(5, 0, b"", id="zero-length"),
])
def test_get_range(store, reopen, offset, length, expected):
    data = b"0123456789abcdefghijklmnopqrstuvwxyz"
    store.put("packs/cd/p", data)
    assert store.get_range("packs/cd/p", offset, length) == expected    # own view
    store.flush()
    assert reopen().get_range("packs/cd/p", offset, length) == expected  # durable view


def test_get_range_missing_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.get_range("packs/cd/missing", 0, 4)


def test_exists(store, reopen):
    assert not store.exists("config")
    store.put("config", b"x")
    assert store.exists("config")
    store.flush()
    fresh = reopen()
    assert fresh.exists("config") and not fresh.exists("conf")


def test_list_with_prefix_is_sorted(store, reopen):
    for key in ["snapshots/b", "packs/ff/2", "packs/00/1", "snapshots/a", "config",
                "packs/0f/3", "index/x"]:
        store.put(key, key.encode())
    store.flush()
    fresh = reopen()
    assert fresh.list() == sorted(["config", "index/x", "packs/00/1", "packs/0f/3",
                                   "packs/ff/2", "snapshots/a", "snapshots/b"])
    assert fresh.list("packs/") == ["packs/00/1", "packs/0f/3", "packs/ff/2"]
    assert fresh.list("packs/0") == ["packs/00/1", "packs/0f/3"]
    assert fresh.list("snap") == ["snapshots/a", "snapshots/b"]
    assert fresh.list("locks/") == []


def test_delete_is_idempotent(store, reopen):
    store.put("locks/l1", b"lock")
    store.put("config", b"keep")
    store.flush()
    store.delete("locks/l1")
    store.delete("locks/l1")
    store.delete("locks/never-existed")
    assert not store.exists("locks/l1")
    store.flush()
    fresh = reopen()
    assert fresh.list() == ["config"]
    with pytest.raises(NotFoundError):
        fresh.get("locks/l1")
    fresh.delete("locks/l1")
    fresh.flush()


def test_flush_makes_puts_visible_to_a_new_store(store, reopen):
    store.put("packs/aa/p", b"pack")
    store.put("snapshots/s", b"snap")
    if store.capabilities.batched:     # honest flag: nothing durable before flush
        assert reopen().list() == []
    else:                              # honest flag: durable when put returns
        assert reopen().list() == ["packs/aa/p", "snapshots/s"]
    store.flush()
    fresh = reopen()
    assert fresh.get("snapshots/s") == b"snap"
    assert fresh.list() == ["packs/aa/p", "snapshots/s"]


def test_put_file_round_trip(store, reopen, tmp_path):
    path = tmp_path / "pack"
    path.write_bytes(b"from a file" * 100)
    store.put_file("packs/ee/f", path)
    path.write_bytes(b"changed later")  # the store must have taken what was there at put time
    store.flush()
    assert reopen().get("packs/ee/f") == b"from a file" * 100


def test_large_object_round_trip(store, reopen, tmp_path):
    block = bytes(range(256)) * 4096                  # 1 MiB, every byte value
    data = block * 8 + b"tail" * 1000                 # > 8 MiB
    path = tmp_path / "big"
    path.write_bytes(data)
    store.put_file("packs/99/big", path)
    store.flush()
    fresh = reopen()
    assert fresh.get("packs/99/big") == data
    assert fresh.get_range("packs/99/big", 8 * MiB - 2, 6) == data[8 * MiB - 2: 8 * MiB + 4]


def test_concurrent_puts_of_different_keys(store, reopen):
    keys = [f"packs/{i:02x}/obj{i}" for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(store.put, k, k.encode() * 10) for k in keys]:
            future.result()   # re-raises what a worker raised
    store.flush()
    fresh = reopen()
    assert fresh.list("packs/") == sorted(keys)
    assert all(fresh.get(k) == k.encode() * 10 for k in keys)


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/./b", ".hidden", "a/b/",
                                 "sp ace", "tmp~1"])
def test_invalid_keys_are_usage_errors(store, key):
    with pytest.raises(UsageError):
        store.put(key, b"x")
    with pytest.raises(UsageError):
        store.get(key)
