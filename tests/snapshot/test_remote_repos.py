"""The whole repository layer on every remote store: push, pull, verify, resume, prune over
s3:// (a real moto server), hf:// and kaggle:// (local servers following their HTTP APIs)."""

from __future__ import annotations

import itertools
import os

import pytest

from tests.snapshot.fakes.remotes import serve_remotes, set_credentials
from tests.snapshot.snapfix import CrashAfter, describe, make_tree, set_times
from tether.snapshot import api
from tether.snapshot.stores import open_store

pytestmark = pytest.mark.timeout(120)
_n = itertools.count()


@pytest.fixture(scope="module")
def servers():
    with serve_remotes("snaps") as servers:
        yield servers


@pytest.fixture(params=["s3", "hf", "kaggle"])
def remote(request, servers, tmp_path, monkeypatch, isolated):
    n = next(_n)
    kind = request.param
    set_credentials(kind, monkeypatch, tmp_path)
    if kind == "s3":
        url, opts = f"s3://snaps/repo-{n}", {"endpoint": servers["s3"].endpoint,
                                             "region": "us-east-1"}
    elif kind == "hf":
        url, opts = f"hf://datasets/alice/snaps-{n}", {"endpoint": servers["hf"].url}
    else:
        url, opts = f"kaggle://alice/snaps-{n}", {"endpoint": servers["kaggle"].url}
    opened = []

    def factory():
        s = open_store(url, **opts)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def test_push_pull_verify_prune(tmp_path, remote):
    src = make_tree(tmp_path / "src")
    first = api.push(remote(), src, tags=["one"])
    again = api.push(remote(), src)
    assert again.files_read == 0 and again.bytes_uploaded < 2000
    (src / "a.txt").write_text("changed")
    set_times(src, 1_700_000_000_000_000_000)
    api.push(remote(), src)
    res = api.verify(remote(), data=True)
    assert res.ok, res.problems
    api.pull(remote(), tmp_path / "out")                       # a "second machine"
    assert describe(tmp_path / "out") == describe(src)
    api.pull(remote(), tmp_path / "old", ref="one")
    assert (tmp_path / "old" / "a.txt").read_text() == "hello\n" * 100
    pruned = api.prune(remote(), keep_last=1)
    assert len(pruned.forgotten) == 2
    assert api.verify(remote(), data=True).ok
    assert [s.id for s in api.list_snapshots(remote())] != [first.snapshot_id]


def test_interrupted_push_resumes(tmp_path, remote, monkeypatch):
    from tether.snapshot import repo as repomod

    monkeypatch.setattr(repomod, "SEGMENT_SIZE", 64 << 10)
    monkeypatch.setattr(repomod, "PACK_TARGET", 200 << 10)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(100 << 10))
    crashing = CrashAfter(remote(), lambda k, d, n: k.startswith("index/"))
    with pytest.raises(CrashAfter.Crash):
        api.push(crashing, src)
    assert api.list_snapshots(remote()) == []
    r = api.push(remote(), src)
    assert r.adopted_packs >= 2 and r.bytes_new < 10_000    # only trees were missing
    api.pull(remote(), tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def test_urls_get_the_retry_layer_for_remote_stores_only(tmp_path, isolated, monkeypatch):
    from tether.snapshot.stores.local import LocalStore
    from tether.snapshot.stores.wrappers import RetryingStore

    assert isinstance(api.open_retrying(f"file://{tmp_path}/r"), LocalStore)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert isinstance(api.open_retrying("s3://bucket/prefix"), RetryingStore)
