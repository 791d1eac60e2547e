"""kaggle:// against a local Kaggle API following the RPC endpoints kagglesdk calls."""

from __future__ import annotations

import json

import pytest

from tests.snapshot.fakes.kaggle_api_fake import serve_fake_kaggle
from tether import secrets
from tether.errors import (
    AuthError,
    ConnectError,
    NotFoundError,
    PeerError,
    RateLimitedError,
    UsageError,
)
from tether.snapshot.stores import kaggle as kstore
from tether.snapshot.stores import open_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def kaggle():
    with serve_fake_kaggle({"alice": "alice-key", "bob": "bob-key"}, ready_after=2) as api:
        api.tokens["KGAT_alice"] = "alice"
        yield api


@pytest.fixture
def kenv(monkeypatch, tmp_path, kaggle):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("TETHER_KAGGLE_ENDPOINT", kaggle.url)
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "file")
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "tether-home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "alice-key")
    return monkeypatch


@pytest.fixture
def slug(request, kenv):
    name = request.node.name.lower().replace("_", "-")
    name = "".join(c if c.isalnum() else "-" for c in name).strip("-")[:50].strip("-")
    while "--" in name:
        name = name.replace("--", "-")
    return name


def fast(slug: str) -> kstore.KaggleStore:
    return kstore.KaggleStore("alice", slug, poll_interval=0.01)


@pytest.mark.parametrize(("slug", "ok"), [
    pytest.param("my-workspace", True, id="typical"),
    pytest.param("abcdef", True, id="six-chars"),
    pytest.param("a" * 50, True, id="fifty-chars"),
    pytest.param("ws-2026-11", True, id="digits"),
    pytest.param("abcde", False, id="five-chars"),
    pytest.param("a" * 51, False, id="fifty-one-chars"),
    pytest.param("My-Workspace", False, id="uppercase"),
    pytest.param("my_workspace", False, id="underscore"),
    pytest.param("-workspace", False, id="leading-hyphen"),
    pytest.param("workspace-", False, id="trailing-hyphen"),
    pytest.param("work--space", False, id="double-hyphen"),
    pytest.param("work.space", False, id="dot"),
])
def test_slug_rules(slug, ok):
    if ok:
        assert kstore.check_slug(slug) == slug
    else:
        with pytest.raises(UsageError) as info:
            kstore.check_slug(slug)
        assert info.value.hint


@pytest.mark.parametrize(("key", "name"), [
    pytest.param("config", "config", id="flat"),
    pytest.param("packs/ab/0123", "packs~ab~0123", id="nested"),
    pytest.param("index/i.v2", "index~i.v2", id="inner-dot"),
])
def test_key_names_round_trip(key, name):
    assert kstore.key_to_name(key) == name and kstore.name_to_key(name) == key


@pytest.mark.parametrize("name", [kstore.EMPTY_MARKER, "My Data.csv", "a~~b", ".hidden"])
def test_names_no_key_produces_are_skipped(name):
    assert kstore.name_to_key(name) is None


@pytest.mark.parametrize("url", [
    pytest.param("kaggle://alice/short", id="short-slug"),
    pytest.param("kaggle://alice/Big-Slug", id="upper-slug"),
    pytest.param("kaggle://alice", id="no-slug"),
    pytest.param("kaggle://alice/my-workspace/extra", id="extra-path"),
    pytest.param("kaggle://Al ice/my-workspace", id="bad-owner"),
    pytest.param("kaggle://alice/my-workspace?key=secret", id="key-in-url-refused"),
])
def test_bad_urls_fail_before_any_request(kaggle, kenv, url):
    before = len(kaggle.requests)
    with pytest.raises(UsageError):
        open_store(url)
    assert len(kaggle.requests) == before


def test_title_rule_checked_before_any_request(kaggle, kenv):
    before = len(kaggle.requests)
    with pytest.raises(UsageError):
        kstore.open("kaggle://alice/my-workspace", title="tiny")
    assert len(kaggle.requests) == before


def test_first_flush_creates_private_dataset_and_waits_until_ready(kaggle, slug):
    store = fast(slug)
    assert store.list() == [] and not store.exists("config")
    store.put("config", b"cfg")
    assert f"alice/{slug}" not in kaggle.datasets
    store.flush()
    dataset = kaggle.datasets[f"alice/{slug}"]
    assert dataset.private and dataset.title == slug
    assert dataset.versions[-1].ready      # flush returned only once Kaggle said READY
    assert open_store(f"kaggle://alice/{slug}").get("config") == b"cfg"


def test_every_version_is_a_complete_repository(kaggle, slug):
    before_downloads = len(kaggle.requests)
    store = fast(slug)
    store.put("config", b"cfg")
    store.put("packs/aa/p1", b"pack1")
    store.flush()
    store.put("packs/bb/p2", b"pack2")
    store.put("index/i1", b"idx")
    store.flush()
    store.put("snapshots/s1", b"snap")
    store.delete("packs/aa/p1")
    store.flush()
    # What this store wrote itself is re-uploaded from its local copy, not downloaded again.
    assert not any("DownloadDataset" in r for r in kaggle.requests[before_downloads:])
    ref = f"alice/{slug}"
    assert [sorted(kaggle.files(ref, v.number)) for v in kaggle.versions(ref)] == [
        ["config", "packs~aa~p1"],
        ["config", "index~i1", "packs~aa~p1", "packs~bb~p2"],
        ["config", "index~i1", "packs~bb~p2", "snapshots~s1"],
    ]
    assert kaggle.files(ref)["packs~bb~p2"] == b"pack2"   # carried over byte for byte
    fresh = fast(slug)
    assert fresh.list() == ["config", "index/i1", "packs/bb/p2", "snapshots/s1"]


def test_objects_of_a_concurrent_writer_are_carried_over(kaggle, slug):
    a, b = fast(slug), fast(slug)
    a.put("config", b"cfg")
    a.flush()
    assert b.list() == ["config"]
    a.put("snapshots/from-a", b"a")
    a.flush()
    b.put("snapshots/from-b", b"b")   # b last looked before a's second version
    mark = len(kaggle.requests)
    b.flush()
    downloads = [r for r in kaggle.requests[mark:] if "DownloadDataset" in r]
    assert len(downloads) == 2        # config and a's snapshot: b had no copy of either
    assert fast(slug).list() == ["config", "snapshots/from-a", "snapshots/from-b"]


def test_deleting_everything_keeps_a_valid_empty_version(kaggle, slug):
    store = fast(slug)
    store.put("locks/l1", b"x")
    store.flush()
    store.delete("locks/l1")
    store.delete("locks/never")
    store.flush()
    assert fast(slug).list() == []
    assert list(kaggle.files(f"alice/{slug}")) == [kstore.EMPTY_MARKER]
    versions = len(kaggle.versions(f"alice/{slug}"))
    store.delete("locks/never")
    store.flush()                       # nothing to change: no new version
    assert len(kaggle.versions(f"alice/{slug}")) == versions


def test_reads_use_ranges_on_the_signed_storage_url(kaggle, slug):
    kaggle.storage_auth_seen.clear()
    store = fast(slug)
    store.put("packs/aa/p", bytes(range(100)))
    store.flush()
    fresh = fast(slug)
    assert fresh.get_range("packs/aa/p", 10, 5) == bytes(range(10, 15))
    assert fresh.get_range("packs/aa/p", -4, 4) == bytes(range(96, 100))
    assert fresh.get_range("packs/aa/p", 200, 4) == b""
    with pytest.raises(NotFoundError):
        fresh.get("packs/aa/missing")
    # Upload and download URLs are signed: Kaggle credentials never go there.
    assert len(kaggle.storage_auth_seen) >= 4 and set(kaggle.storage_auth_seen) == {None}


@pytest.mark.parametrize("how", ["env", "kaggle-json", "tether-secrets", "bearer-token"])
def test_credential_sources(kaggle, kenv, slug, how, tmp_path):
    kenv.delenv("KAGGLE_USERNAME")
    kenv.delenv("KAGGLE_KEY")
    if how == "env":
        kenv.setenv("KAGGLE_USERNAME", "alice")
        kenv.setenv("KAGGLE_KEY", "alice-key")
    elif how == "kaggle-json":
        folder = tmp_path / "kaggle-config"
        folder.mkdir()
        (folder / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "alice-key"}))
    elif how == "tether-secrets":
        secrets.set_secret("store:kaggle:username", "alice")
        secrets.set_secret("store:kaggle:key", "alice-key")
    else:
        kenv.setenv("KAGGLE_API_TOKEN", "KGAT_alice")
    store = fast(slug)
    store.put("config", b"x")
    store.flush()
    assert kaggle.files(f"alice/{slug}") == {"config": b"x"}


def test_missing_and_wrong_credentials_are_auth_errors(kaggle, kenv, slug):
    kenv.delenv("KAGGLE_USERNAME")
    kenv.delenv("KAGGLE_KEY")
    with pytest.raises(AuthError) as info:
        fast(slug).list()
    assert "KAGGLE_USERNAME" in info.value.hint
    kenv.setenv("KAGGLE_USERNAME", "alice")
    kenv.setenv("KAGGLE_KEY", "wrong")
    with pytest.raises(AuthError):
        fast(slug).list()


def test_other_users_private_dataset_is_not_found(kaggle, kenv, slug):
    store = fast(slug)
    store.put("config", b"x")
    store.flush()
    kenv.setenv("KAGGLE_USERNAME", "bob")
    kenv.setenv("KAGGLE_KEY", "bob-key")
    with pytest.raises(NotFoundError):
        fast(slug).get("config")


def test_429_is_rate_limited(kaggle, slug):
    kaggle.fail_next(429, path_contains="ListDatasetFiles", headers={"Retry-After": "30"})
    with pytest.raises(RateLimitedError) as info:
        fast(slug).list()
    assert info.value.retry_after == 30.0


def test_failed_version_keeps_the_old_one_and_the_pending_puts(kaggle, slug):
    store = fast(slug)
    store.put("config", b"x")
    store.flush()
    store.put("snapshots/s1", b"s")
    kaggle.fail_next(500, path_contains="CreateDatasetVersion")
    with pytest.raises(PeerError):
        store.flush()
    assert fast(slug).list() == ["config"]
    store.flush()
    assert fast(slug).list() == ["config", "snapshots/s1"]


def test_unreachable_endpoint_is_connect_error(kenv):
    from tests.conftest import free_port
    store = kstore.open("kaggle://alice/my-workspace", endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectError):
        store.list()


def test_official_kaggle_client_reads_what_the_store_wrote(kaggle, slug):
    """The fake follows kagglesdk's wire format, and the store's versions look normal to it."""
    import kagglesdk  # installed with the kaggle package (a test extra)
    from kagglesdk.datasets.types.dataset_api_service import (
        ApiDownloadDatasetRequest,
        ApiListDatasetFilesRequest,
    )
    from kagglesdk.kaggle_env import KaggleEnv

    store = fast(slug)
    store.put("packs/ab/p1", b"pack bytes")
    store.flush()
    client = kagglesdk.KaggleClient(env=KaggleEnv.LOCAL, username="alice", password="alice-key")
    client.http_client()._endpoint = kaggle.url   # kagglesdk has no endpoint option
    listing = ApiListDatasetFilesRequest()
    listing.owner_slug, listing.dataset_slug = "alice", slug
    files = client.datasets.dataset_api_client.list_dataset_files(listing).dataset_files
    assert [(f.name, f.total_bytes) for f in files] == [("packs~ab~p1", 10)]
    download = ApiDownloadDatasetRequest()
    download.owner_slug, download.dataset_slug = "alice", slug
    download.file_name, download.raw = "packs~ab~p1", True
    assert client.datasets.dataset_api_client.download_dataset(download).content == b"pack bytes"


@pytest.mark.parametrize("query", ["ready_timeout=soon", "ready_timeout=-1"])
def test_bad_option_values_are_usage_errors(query, kenv):
    with pytest.raises(UsageError):
        open_store(f"kaggle://alice/my-workspace?{query}")


def test_a_version_made_while_we_upload_is_carried_over(kaggle, slug):
    """Another writer's version that lands while this flush uploads is seen by the second
    look at the file list, not dropped by our version."""
    a, b = fast(slug), fast(slug)
    a.put("config", b"cfg")
    a.flush()
    a.put("packs/aa/from-a", b"a")
    upload = a._upload

    def upload_while_b_writes(name, path):
        if not b.exists("packs/bb/from-b"):
            b.put("packs/bb/from-b", b"b")
            b.flush()
        return upload(name, path)

    a._upload = upload_while_b_writes
    a.flush()
    assert fast(slug).list() == ["config", "packs/aa/from-a", "packs/bb/from-b"]


def test_a_second_settle_round_downloads_only_what_is_new(kaggle, slug):
    """Objects carried over in the first round are not downloaded again in the second."""
    first = fast(slug)
    first.put("config", b"cfg")
    first.put("packs/aa/old", b"old")
    first.flush()
    a, b = fast(slug), fast(slug)     # a has no local copy of anything: it must download
    a.put("snapshots/from-a", b"a")
    upload = a._upload
    by_b: list[str] = []

    def upload_while_b_writes(name, path):
        if not b.exists("packs/bb/from-b"):
            start = len(kaggle.requests)
            b.put("packs/bb/from-b", b"b")
            b.flush()
            by_b.extend(kaggle.requests[start:])
        return upload(name, path)

    a._upload = upload_while_b_writes
    mark = len(kaggle.requests)
    a.flush()
    assert by_b  # b's version landed during a's upload: a needed a second round
    assert fast(slug).list() == ["config", "packs/aa/old", "packs/bb/from-b",
                                 "snapshots/from-a"]
    downloads = [r for r in kaggle.requests[mark:] if "DownloadDataset" in r]
    downloads_by_a = len(downloads) - sum("DownloadDataset" in r for r in by_b)
    assert downloads_by_a == 3        # config, old (round 1), from-b (round 2): once each


def test_a_version_still_processing_is_waited_for(kaggle, slug):
    """Kaggle lists a version only once it is processed: a flush waits for that before it
    reads the list, so the newer version it makes keeps the other writer's objects."""
    a, b = fast(slug), fast(slug)
    a.put("config", b"cfg")
    a.flush()
    b.put("snapshots/from-b", b"b")
    b._wait_ready = lambda: None          # b made its version and left without waiting
    b.flush()
    assert not kaggle.versions(f"alice/{slug}")[-1].ready
    a.put("snapshots/from-a", b"a")
    a.flush()
    assert fast(slug).list() == ["config", "snapshots/from-a", "snapshots/from-b"]


class _PauseAfterPacks:
    """A store wrapper that, once its packs are flushed, waits for ``resume`` (B's push
    stopped between writing its packs and index and committing its snapshot)."""

    def __init__(self, inner, flushed, resume):
        self.inner, self.url, self.capabilities = inner, inner.url, inner.capabilities
        self.flushed, self.resume = flushed, resume

    def flush(self):
        had_packs = any(k.startswith("packs/") for k in self.inner._pending)
        self.inner.flush()
        if had_packs and not self.flushed.is_set():
            self.flushed.set()
            assert self.resume.wait(30)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_two_pushes_racing_on_kaggle_both_verify(kaggle, slug, tmp_path):
    """The audit's interleaving, made deterministic: B writes its packs and index while A
    sits between its last look at the file list and creating its version; A's version drops
    B's packs; B then commits. Both pushes must end with snapshots that verify and pull."""
    import os
    import threading

    from tether.snapshot import api

    def folder(name):
        root = tmp_path / name
        root.mkdir()
        for i in range(3):
            (root / f"{name}{i}.bin").write_bytes(os.urandom(50_000))
        return root

    base, a_dir, b_dir = folder("base"), folder("a"), folder("b")
    api.push(fast(slug), base)
    packs_before = set(fast(slug).list("packs/"))
    a_store, b_store = fast(slug), fast(slug)
    b_packs_flushed, a_made_version = threading.Event(), threading.Event()
    results, errors = {}, []

    def push_b():
        try:
            results["b"] = api.push(_PauseAfterPacks(b_store, b_packs_flushed, a_made_version),
                                    b_dir)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    b_thread = threading.Thread(target=push_b)
    create = a_store._create_version

    def create_after_b_wrote_packs(files, count):
        if a_made_version.is_set() or not any(k.startswith("packs/") for k in a_store._pending):
            return create(files, count)
        b_thread.start()                      # A has read the list for the last time
        assert b_packs_flushed.wait(30)       # B's packs and index are in a version now
        create(files, count)                  # A's version, made from the older list
        b_packs = {k for k in b_store._retained if k.startswith("packs/")} - packs_before
        latest = {kstore.name_to_key(n) for n in kaggle.files(f"alice/{slug}")}
        assert b_packs and not b_packs & latest   # the race happened: B's packs are gone
        a_made_version.set()
        b_thread.join(60)                     # B commits on top of A's version

    a_store._create_version = create_after_b_wrote_packs
    results["a"] = api.push(a_store, a_dir)
    assert not errors and not b_thread.is_alive()
    report = api.verify(fast(slug), data=True)
    assert report.problems == [] and report.snapshots == 3
    for name, src in (("a", a_dir), ("b", b_dir)):
        out = tmp_path / f"out-{name}"
        api.pull(fast(slug), out, ref=results[name].snapshot_id)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == \
            {p.name: p.read_bytes() for p in src.iterdir()}


def test_versions_per_push_are_what_the_docs_say(kaggle, slug, tmp_path):
    """docs/snapshot-stores.md: a first push makes 4 versions, a push with nothing new 2
    (each version re-uploads the whole repository)."""
    from tether.snapshot import api

    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("hello")
    statuses: list[str] = []
    api.push(fast(slug), src, on_status=statuses.append)
    assert len(kaggle.versions(f"alice/{slug}")) == 4
    # the long part of a Kaggle push comes after the walk: it is shown as a status line
    url = f"kaggle://alice/{slug}"
    assert statuses == [f"uploading new content to {url}", f"committing to {url}"]
    statuses.clear()
    api.push(fast(slug), src, on_status=statuses.append)
    assert len(kaggle.versions(f"alice/{slug}")) == 6
    assert statuses == [f"committing to {url}"]
