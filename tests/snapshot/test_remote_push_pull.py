"""The snapshot repository end to end on each remote store: push twice, pull, verify.

What the stores promise the repository layer, checked with the real repository code:
the second push uploads only what changed, a pull restores the newest snapshot byte for byte,
``verify --data`` finds nothing wrong, on hf:// every push ends with a commit holding only its
snapshot object, and on kaggle:// every version is a complete, verifiable repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.snapshot.fakes.remotes import serve_remotes, set_credentials
from tether.snapshot import api
from tether.snapshot.stores import open_store

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def servers():
    with serve_remotes("pushpull") as servers:
        yield servers


@pytest.fixture(params=["s3", "hf", "kaggle"])
def store_url(request, servers, monkeypatch, tmp_path):
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "file")
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "tether-home"))
    for kind in servers:
        set_credentials(kind, monkeypatch, tmp_path)
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", servers["s3"].endpoint)
    monkeypatch.setenv("HF_ENDPOINT", servers["hf"].url)
    monkeypatch.setenv("TETHER_KAGGLE_ENDPOINT", servers["kaggle"].url)
    return {"s3": "s3://pushpull/ws", "hf": "hf://datasets/alice/push-pull",
            "kaggle": "kaggle://alice/push-pull"}[request.param], servers[request.param]


def _workspace(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (root / "empty").mkdir()
    return root


def test_push_twice_pull_and_verify(store_url, tmp_path):
    url, server = store_url
    src = _workspace(tmp_path / "ws")
    first = api.push(url, src)
    (src / "src" / "main.py").write_text("print('hello again')\n")
    second = api.push(url, src)
    assert second.bytes_uploaded < first.bytes_uploaded / 100   # only the change moved

    dest = tmp_path / "restored"
    result = api.pull(url, dest)
    assert result.snapshot_id == second.snapshot_id
    assert (dest / "src" / "main.py").read_text() == "print('hello again')\n"
    assert (dest / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
    assert (dest / "empty").is_dir()
    assert {s.id for s in api.list_snapshots(url)} == {first.snapshot_id, second.snapshot_id}
    report = api.verify(url, data=True)
    assert report.problems == [] and report.snapshots == 2

    if url.startswith("hf://"):
        commits = server.commits("alice/push-pull")
        for snap in (first.snapshot_id, second.snapshot_id):
            landing = next(i for i, c in enumerate(commits) if f"snapshots/{snap}" in c.added)
            assert commits[landing].added == [f"snapshots/{snap}"]   # the commit point
            packs = {p for c in commits[:landing] for p in c.added if p.startswith("packs/")}
            assert packs, "packs were committed before the snapshot"
    if url.startswith("kaggle://"):
        keys = {k.replace("~", "/") for k in server.files("alice/push-pull")}
        assert {f"snapshots/{first.snapshot_id}", f"snapshots/{second.snapshot_id}"} <= keys
        assert open_store(url).list("packs/") == sorted(k for k in keys if k.startswith("packs/"))
