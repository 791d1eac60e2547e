"""hf:// against a local Hub that follows the HTTP API huggingface_hub calls (fakes/hf_hub_fake.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.snapshot.fakes.hf_hub_fake import Commit, serve_fake_hub
from tether import secrets
from tether.errors import (
    AuthError,
    ConnectError,
    NotFoundError,
    PeerError,
    RateLimitedError,
    UsageError,
)
from tether.snapshot.stores import hf as hfstore
from tether.snapshot.stores import open_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def hub():
    with serve_fake_hub({"hf_test_token": "alice", "hf_bob_token": "bob"}) as server:
        yield server


@pytest.fixture
def hf_env(monkeypatch, tmp_path, hub):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))   # no saved login is found
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "file")
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "tether-home"))


@pytest.fixture
def repo_url(request, hf_env):
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:60]
    return f"hf://datasets/alice/{name}"


@pytest.mark.parametrize(("url", "repo_id", "prefix", "options"), [
    pytest.param("hf://datasets/alice/ws", "alice/ws", "", {}, id="plain"),
    pytest.param("hf://datasets/alice/ws/", "alice/ws", "", {}, id="trailing-slash"),
    pytest.param("hf://datasets/org-1/my_ws.v2/laptop/home", "org-1/my_ws.v2", "laptop/home/", {},
                 id="prefix"),
    pytest.param("hf://datasets/alice/ws?revision=backup&commit_files=50", "alice/ws", "",
                 {"revision": "backup", "commit_files": "50"}, id="options"),
])
def test_parse_url(url, repo_id, prefix, options):
    assert hfstore.parse_url(url) == hfstore.HfLocation(repo_id, prefix, options)


@pytest.mark.parametrize("url", [
    pytest.param("hf://models/alice/ws", id="model-repo"),
    pytest.param("hf://datasets/alice", id="no-name"),
    pytest.param("hf://datasets/alice/-bad", id="leading-dash"),
    pytest.param("hf://datasets/alice/a..b", id="double-dot"),
    pytest.param("hf://datasets/al ice/ws", id="space"),
    pytest.param("hf://datasets/alice/ws?token=hf_x", id="token-in-url-refused"),
    pytest.param("hf://datasets/alice/ws/../x", id="dotdot-prefix"),
])
def test_bad_urls(url):
    with pytest.raises(UsageError):
        hfstore.parse_url(url)


@pytest.mark.parametrize(("sizes", "max_bytes", "max_files", "batches"), [
    pytest.param([], 10, 2, [], id="empty"),
    pytest.param([("a", 1), ("b", 1), ("c", 1)], 100, 2, [["a", "b"], ["c"]], id="by-count"),
    pytest.param([("a", 6), ("b", 6), ("c", 3)], 10, 10, [["a"], ["b", "c"]], id="by-bytes"),
    pytest.param([("big", 50), ("s", 1)], 10, 10, [["big"], ["s"]], id="oversized-alone"),
    pytest.param([("a", 5), ("b", 5), ("snap", 1)], 10, 10, [["a", "b"], ["snap"]],
                 id="order-kept"),
])
def test_plan_commits(sizes, max_bytes, max_files, batches):
    assert hfstore.plan_commits(sizes, max_bytes, max_files) == batches


def test_first_flush_creates_private_repo_and_nothing_before(hub, repo_url):
    store = open_store(repo_url, endpoint=hub.url)
    repo_id = repo_url.removeprefix("hf://datasets/")
    assert store.list() == [] and not store.exists("config")   # reading creates nothing
    store.put("config", b"cfg")
    assert ("dataset", repo_id) not in hub.repos                # buffered, not committed
    store.flush()
    assert hub.repo(repo_id).private is True
    assert hub.files(repo_id)["config"] == b"cfg"


def test_big_push_is_several_commits_with_snapshot_last(hub, repo_url):
    repo_id = repo_url.removeprefix("hf://datasets/")
    store = hfstore.open(repo_url, commit_files=3, commit_bytes=10_000)
    for i in range(7):
        store.put(f"packs/{i:02x}/pack{i}", bytes([i]) * 1000)
    store.put("index/i1", b"index")
    store.flush()
    store.put("snapshots/s1", b"snapshot")
    store.flush()
    commits = hub.commits(repo_id)[1:]       # [0] is the repo's initial commit
    assert [len(c.added) for c in commits] == [3, 3, 2, 1]
    assert commits[-1].added == ["snapshots/s1"]
    assert all("snapshots/s1" not in c.files for c in commits[:-1])
    fresh = hfstore.open(repo_url)
    assert fresh.list("packs/") == [f"packs/{i:02x}/pack{i}" for i in range(7)]


def test_puts_beyond_the_batch_bound_commit_before_flush(hub, repo_url):
    repo_id = repo_url.removeprefix("hf://datasets/")
    store = hfstore.open(repo_url, commit_files=100, commit_bytes=2500)
    for i in range(5):
        store.put(f"packs/aa/p{i}", b"x" * 1000)   # spool stays bounded: full batches go early
    assert [len(c.added) for c in hub.commits(repo_id)[1:]] == [2, 2]
    store.flush()
    assert len(hub.files(repo_id)) == 1 + 5


def test_own_pending_writes_are_visible_and_deletes_are_batched(hub, repo_url):
    store = hfstore.open(repo_url)
    store.put("locks/l1", b"lock")
    assert store.get("locks/l1") == b"lock" and store.exists("locks/l1")
    assert store.get_range("locks/l1", 1, 2) == b"oc"
    store.flush()
    store.delete("locks/l1")
    assert not store.exists("locks/l1") and store.list("locks/") == []
    assert hfstore.open(repo_url).exists("locks/l1")       # not durable until flush
    store.flush()
    assert not hfstore.open(repo_url).exists("locks/l1")
    store.delete("locks/never-existed")
    store.flush()                                           # idempotent: no failing commit


def test_written_objects_are_readable_by_hf_hub_download(hub, repo_url, tmp_path):
    from huggingface_hub import hf_hub_download
    store = hfstore.open(repo_url)
    store.put("packs/ab/p1", b"pack bytes")
    store.flush()
    path = hf_hub_download(repo_url.removeprefix("hf://datasets/"), "packs/ab/p1",
                           repo_type="dataset", endpoint=hub.url, token="hf_test_token",
                           cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b"pack bytes"


def test_list_follows_pagination(hub, repo_url):
    store = hfstore.open(repo_url)
    store.put("config", b"c")
    store.flush()
    repo = hub.repo(repo_url.removeprefix("hf://datasets/"))
    files = dict(repo.head.files)
    files.update({f"packs/00/{i:05d}": b"x" for i in range(1205)})
    repo.commits.append(Commit("f" * 40, "bulk", files, [], []))
    keys = store.list("packs/")
    assert len(keys) == 1205 and keys == sorted(keys)
    assert sum(1 for m, p in hub.requests if p.endswith("/tree/main/packs")) >= 2


def test_prefix_scopes_keys(hub, hf_env):
    a = hfstore.open("hf://datasets/alice/shared/laptop")
    b = hfstore.open("hf://datasets/alice/shared/server")
    a.put("config", b"a")
    b.put("config", b"b")
    a.flush()
    b.flush()
    assert a.list() == ["config"] and a.get("config") == b"a"
    assert sorted(hub.files("alice/shared")) == [".gitattributes", "laptop/config",
                                                 "server/config"]


def test_token_from_tether_secrets(hub, hf_env, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    secrets.set_secret("store:hf:token", "hf_test_token")
    store = hfstore.open("hf://datasets/alice/from-secret")
    store.put("config", b"x")
    store.flush()
    assert hub.files("alice/from-secret")["config"] == b"x"


def test_no_token_on_private_repo_is_auth_error(hub, hf_env, monkeypatch):
    writer = hfstore.open("hf://datasets/alice/private-one")
    writer.put("config", b"x")
    writer.flush()
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(AuthError) as info:
        hfstore.open("hf://datasets/alice/private-one").get("config")
    assert "HF_TOKEN" in info.value.hint


def test_wrong_token_and_foreign_namespace_are_auth_errors(hub, hf_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    store = hfstore.open("hf://datasets/alice/wrong-token")
    store.put("config", b"x")
    with pytest.raises(AuthError):
        store.flush()
    monkeypatch.setenv("HF_TOKEN", "hf_bob_token")
    store = hfstore.open("hf://datasets/alice/not-bobs")
    store.put("config", b"x")
    with pytest.raises(AuthError):
        store.flush()


def test_missing_object_is_not_found(hub, repo_url):
    store = hfstore.open(repo_url)
    store.put("config", b"x")
    store.flush()
    with pytest.raises(NotFoundError):
        store.get("packs/ff/nope")
    with pytest.raises(NotFoundError):
        store.get_range("packs/ff/nope", 0, 4)


def test_429_is_rate_limited_with_retry_after(hub, repo_url):
    store = hfstore.open(repo_url)
    store.put("config", b"x")
    store.flush()
    hub.fail_next(429, path_contains="/resolve/", headers={"Retry-After": "12"})
    with pytest.raises(RateLimitedError) as info:
        store.get("config")
    assert info.value.retry_after == 12.0
    assert store.get("config") == b"x"


def test_failed_commit_keeps_pending_puts_for_the_next_flush(hub, repo_url):
    repo_id = repo_url.removeprefix("hf://datasets/")
    store = hfstore.open(repo_url)
    store.put("config", b"x")
    store.flush()
    store.put("snapshots/s1", b"snap")
    hub.fail_next(500, path_contains="/commit/")
    with pytest.raises(PeerError):
        store.flush()
    assert "snapshots/s1" not in hub.files(repo_id)
    assert store.get("snapshots/s1") == b"snap"
    store.flush()
    assert hub.files(repo_id)["snapshots/s1"] == b"snap"


def test_unreachable_hub_is_connect_error(hf_env):
    from tests.conftest import free_port
    store = hfstore.open("hf://datasets/alice/x", endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectError):
        store.get("config")


def test_re_put_during_a_commit_is_kept_for_the_next_flush(hub, repo_url):
    """The lock refresher re-puts its key while a push commits: neither write may be torn."""
    repo_id = repo_url.removeprefix("hf://datasets/")
    store = hfstore.open(repo_url)
    store.put("locks/l1", b"first")
    hub.on_commit.append(lambda: store.put("locks/l1", b"second"))
    try:
        store.flush()
    finally:
        hub.on_commit.clear()
    assert hub.files(repo_id)["locks/l1"] == b"first"
    assert store.get("locks/l1") == b"second"          # still pending, not lost
    store.flush()
    assert hub.files(repo_id)["locks/l1"] == b"second"
    assert list(store._spool.iterdir()) == []         # no spool file left behind


@pytest.mark.parametrize("query", ["commit_files=0", "commit_bytes=big", "commit_files=1.5"])
def test_bad_option_values_are_usage_errors(query, hf_env):
    with pytest.raises(UsageError):
        open_store(f"hf://datasets/alice/ws?{query}")


def test_cdn_redirect_keeps_range_and_drops_the_token(hub, repo_url):
    """Big files resolve to a CDN on another origin: ranges still work, the token stays home."""
    store = hfstore.open(repo_url)
    data = bytes(range(256)) * 16
    store.put("packs/ab/big", data)
    store.flush()
    hub.cdn_over, hub.cdn_auth_seen[:] = 1000, []
    try:
        fresh = hfstore.open(repo_url)
        assert fresh.get("packs/ab/big") == data
        assert fresh.get_range("packs/ab/big", -16, 16) == data[-16:]
        assert fresh.get_range("packs/ab/big", 100, 10) == data[100:110]
        assert fresh.exists("packs/ab/big")
    finally:
        hub.cdn_over = None
    assert len(hub.cdn_auth_seen) >= 3 and set(hub.cdn_auth_seen) == {None}


@pytest.mark.parametrize(("exc", "expected"), [
    pytest.param("offline", ConnectError, id="offline-mode"),
    pytest.param("no-token", AuthError, id="no-local-token"),
    pytest.param("disk", PeerError, id="unknown-is-peer"),
])
def test_library_errors_are_translated(exc, expected):
    from huggingface_hub import errors as hfe
    raised = {"offline": hfe.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"),
              "no-token": hfe.LocalTokenNotFoundError("no token"),
              "disk": ValueError("odd")}[exc]
    assert type(hfstore._translate(raised, "get config")) is expected
