"""Hostile or broken repositories: pull checks everything before it writes anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snapfix import describe, forge_snapshot, make_tree, raw_tree  # noqa: E402

from tether.errors import IntegrityError, LocalIOError, ProtocolError, UsageError  # noqa: E402
from tether.snapshot import api  # noqa: E402
from tether.snapshot import format as fmt  # noqa: E402
from tether.snapshot.stores import open_store  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _file(blob, name, content=b"x", mode=0o644, size=None):
    return [name, "f", mode, 0, len(content) if size is None else size,
            [blob(fmt.DATA, content)] if content else []]


HOSTILE = {
    "dotdot": lambda b: raw_tree(_file(b, "..")),
    "traversal": lambda b: raw_tree(_file(b, "../../escaped")),
    "slash": lambda b: raw_tree(_file(b, "a/b")),
    "absolute": lambda b: raw_tree(_file(b, "/tmp/abs")),
    "nul": lambda b: raw_tree(_file(b, "a\0b")),
    "empty-name": lambda b: raw_tree(_file(b, "")),
    "duplicate-files": lambda b: raw_tree(_file(b, "a"), _file(b, "a", b"y")),
    "symlink-then-file": lambda b: raw_tree(["x", "l", 0o777, 0, 0, "/tmp"], _file(b, "x")),
    "dir-then-symlink": lambda b: raw_tree(
        ["d", "d", 0o755, 0, 0, b(fmt.TREE, raw_tree(_file(b, "f")))],
        ["d", "l", 0o777, 0, 0, "/etc"]),
    "device": lambda b: raw_tree(["dev", "c", 0o644, 0, 0, ""]),
    "fifo": lambda b: raw_tree(["p", "p", 0o644, 0, 0, ""]),
    "size-lies": lambda b: raw_tree(_file(b, "f", b"tiny", size=2**50)),
    "deep-hostile": lambda b: raw_tree(
        ["ok", "d", 0o755, 0, 0, b(fmt.TREE, raw_tree(_file(b, "..")))]),
    "unknown-version": lambda b: b'{"v":7,"entries":[]}',
}


@pytest.fixture
def existing(tmp_path):
    dest = make_tree(tmp_path / "dest", big=False)
    return dest, describe(dest)


@pytest.mark.parametrize("name", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_trees_are_refused_before_any_write(tmp_path, isolated, existing, name):
    store = open_store(f"file://{tmp_path}/repo")
    forge_snapshot(store, HOSTILE[name])
    dest, before = existing
    with pytest.raises((IntegrityError, ProtocolError)):
        api.pull(store, dest, replace=True)
    assert describe(dest) == before
    assert not [p for p in tmp_path.iterdir() if ".tether-" in p.name]  # staging removed
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/abs").exists()


def test_dedup_bomb_is_refused_against_free_space(tmp_path, isolated):
    """One 4 MiB blob named 100k times claims ~400 GB: refused before writing."""
    store = open_store(f"file://{tmp_path}/repo")
    chunk = os.urandom(4 << 20)

    def build(b):
        bid = b(fmt.DATA, chunk)
        return raw_tree(["bomb", "f", 0o644, 0, (4 << 20) * 100_000, [bid] * 100_000])

    forge_snapshot(store, build)
    with pytest.raises(LocalIOError, match="free"):
        api.pull(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_destination_that_is_a_file_or_symlink_is_refused(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    api.push(url, make_tree(tmp_path / "src", big=False))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        api.pull(url, tmp_path / "file", replace=True)
    os.symlink(tmp_path / "src", tmp_path / "link")
    with pytest.raises(UsageError, match="not a directory"):
        api.pull(url, tmp_path / "link", replace=True)
    assert (tmp_path / "file").read_text() == "x"


def test_restored_files_never_carry_setuid_or_setgid(tmp_path, isolated):
    store = open_store(f"file://{tmp_path}/repo")
    forge_snapshot(store, lambda b: raw_tree(_file(b, "suid", mode=0o6755),
                                             ["d", "d", 0o3777, 0, 0,
                                              b(fmt.TREE, raw_tree())]))
    api.pull(store, tmp_path / "out")
    assert (tmp_path / "out" / "suid").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "out" / "d").stat().st_mode & 0o7777 == 0o777


@pytest.mark.parametrize("recorded", ["/", "relative/dir", "/tmp/../etc", "/a//b"],
                         ids=["root", "relative", "dotdot", "unnormalized"])
def test_a_hostile_default_path_is_refused(tmp_path, isolated, recorded):
    from tether.snapshot.repo import Repository

    store = open_store(f"file://{tmp_path}/repo")
    forge_snapshot(store, lambda b: raw_tree(_file(b, "f")))
    repo = Repository.open(store)
    _, snap = repo.find_snapshot(None)
    import dataclasses
    repo.write_snapshot(dataclasses.replace(snap, path=recorded, time_ns=snap.time_ns + 1))
    with pytest.raises(IntegrityError, match="unusable path"):
        api.pull(store)


def _shared_subtrees(b):
    """1000 dirs x 1000 dirs x 1000 empty files (10^9 entries) in three small trees."""
    files = raw_tree(*[[f"f{i:03d}", "f", 0o644, 0, 0, []] for i in range(1000)])
    middle = raw_tree(*[[f"d{i:03d}", "d", 0o755, 0, 0, b(fmt.TREE, files)]
                        for i in range(1000)])
    return raw_tree(*[[f"d{i:03d}", "d", 0o755, 0, 0, b(fmt.TREE, middle)]
                      for i in range(1000)])


@pytest.fixture
def billion_entries(tmp_path):
    store = open_store(f"file://{tmp_path}/repo")
    forge_snapshot(store, _shared_subtrees)
    size = sum(p.stat().st_size for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert size < 64 << 10                      # the whole repository is a few KB
    return store


def test_shared_subtrees_are_refused_at_the_entry_cap(tmp_path, isolated, billion_entries,
                                                      monkeypatch):
    """Pull counts entries as it plans and stops at the cap, before its lists outgrow
    memory (unbounded, this plan would need ~200 GB)."""
    from tether.snapshot import restore

    monkeypatch.setattr(restore, "MAX_ENTRIES", 50_000)
    with pytest.raises(LocalIOError, match="more than 50000 files, directories and links"):
        api.pull(billion_entries, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tether-" in p.name]


def test_shared_subtrees_are_refused_at_the_free_inodes(tmp_path, isolated, billion_entries,
                                                        monkeypatch):
    """The limit is the free inodes of the destination when those are fewer than the cap."""
    real = os.statvfs

    def few_inodes(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree,
                                  st.f_bavail, st.f_files, 30_000, 30_000, st.f_flag,
                                  st.f_namemax))

    monkeypatch.setattr(os, "statvfs", few_inodes)
    with pytest.raises(LocalIOError, match="needs more than 30000 inodes") as info:
        api.pull(billion_entries, tmp_path / "new" / "out")
    assert info.value.hint
    assert not (tmp_path / "new").exists()      # refused before even the parent was made


def _shared_subtrees_changed(b):
    """As _shared_subtrees, every file one byte longer: all 10^9 entries differ."""
    files = raw_tree(*[[f"f{i:03d}", "f", 0o644, 0, 1, [b(fmt.DATA, b"x")]]
                       for i in range(1000)])
    middle = raw_tree(*[[f"d{i:03d}", "d", 0o755, 0, 0, b(fmt.TREE, files)]
                        for i in range(1000)])
    return raw_tree(*[[f"d{i:03d}", "d", 0o755, 0, 0, b(fmt.TREE, middle)]
                      for i in range(1000)])


def test_diff_of_shared_subtrees_stops_at_the_entry_cap(tmp_path, isolated, billion_entries,
                                                        monkeypatch):
    """Unbounded, this diff would list 10^9 changes (and run out of memory first)."""
    from tether.snapshot import api as snapshot_api

    [a] = [info.id for info in api.list_snapshots(billion_entries)]
    b = forge_snapshot(billion_entries, _shared_subtrees_changed)
    monkeypatch.setattr(snapshot_api, "MAX_ENTRIES", 50_000)
    with pytest.raises(LocalIOError, match="more than 50000 entries") as info:
        api.diff(billion_entries, a, b)
    assert info.value.hint


def test_diff_of_trees_nested_past_the_recursion_limit(tmp_path, isolated):
    store = open_store(f"file://{tmp_path}/repo")

    def deep(content):
        def build(b):
            tree = raw_tree(_file(b, "leaf", content))
            for _ in range(sys.getrecursionlimit() + 100):
                tree = raw_tree(["d", "d", 0o755, 0, 0, b(fmt.TREE, tree)])
            return tree
        return build

    a, b = forge_snapshot(store, deep(b"x")), forge_snapshot(store, deep(b"y"))
    [change] = api.diff(store, a, b)
    assert change.status == "M" and change.path.endswith("/d/leaf")
