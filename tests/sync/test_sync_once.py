"""One-shot sync through the real sshd + gateway: the agent runs as `tether agent sync`."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tether import errors
from tether.sync.engine import sync_once_async

from .helpers import snapshot

pytestmark = pytest.mark.timeout(60)


async def sync(ws, roots, **kw):
    return await sync_once_async(ws, roots.local, str(roots.remote), **kw)


async def test_first_sync_copies_everything_with_metadata(ws, roots):
    """Nested dirs, an empty dir, unicode names, a symlink and an executable bit arrive."""
    loc = roots.local
    (loc / "src" / "pkg").mkdir(parents=True)
    (loc / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (loc / "empty").mkdir()
    (loc / "naïve café ☕.txt").write_text("unicode")
    (loc / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(loc / "run.sh", 0o755)
    os.symlink("src/pkg/mod.py", loc / "link")
    os.symlink("/nonexistent/target", loc / "dangling")
    r = await sync(ws, roots)
    assert snapshot(roots.remote) == snapshot(loc)
    assert r.uploaded == len(snapshot(loc)) and r.downloaded == 0 and not r.conflicts
    assert snapshot(roots.remote)["run.sh"][2] is True
    # and nothing to do the second time
    again = await sync(ws, roots)
    assert again.uploaded == again.downloaded == 0


async def test_edits_on_both_sides_meet(ws, roots):
    (roots.local / "a.txt").write_text("a0")
    (roots.local / "b.txt").write_text("b0")
    await sync(ws, roots)
    (roots.local / "a.txt").write_text("a1 local")
    (roots.remote / "b.txt").write_text("b1 remote")
    (roots.remote / "new-remote").mkdir()
    (roots.remote / "new-remote" / "r.txt").write_text("r")
    (roots.local / "new-local.txt").write_text("l")
    os.chmod(roots.remote / "a.txt", 0o644)  # no-op chmod: not a change
    r = await sync(ws, roots)
    assert snapshot(roots.local) == snapshot(roots.remote)
    assert (roots.remote / "a.txt").read_text() == "a1 local"
    assert (roots.local / "b.txt").read_text() == "b1 remote"
    assert (roots.local / "new-remote" / "r.txt").read_text() == "r"
    assert (r.uploaded, r.downloaded) == (2, 3)


async def test_exec_bit_change_propagates(ws, roots):
    (roots.local / "tool").write_text("#!/bin/sh\n")
    await sync(ws, roots)
    os.chmod(roots.remote / "tool", 0o755)
    await sync(ws, roots)
    assert os.stat(roots.local / "tool").st_mode & 0o100


async def test_conflicting_edits_keep_both_versions(ws, roots):
    f = roots.local / "notes.md"
    f.write_text("base")
    await sync(ws, roots)
    f.write_text("laptop edit")
    (roots.remote / "notes.md").write_text("workspace edit")
    r = await sync(ws, roots)
    [c] = r.conflicts
    assert c.path == "notes.md" and c.copy and c.copy.startswith("notes.conflict-remote-")
    # nothing lost: each side keeps its own file, the other version is beside it on both
    assert f.read_text() == "laptop edit"
    assert (roots.remote / "notes.md").read_text() == "workspace edit"
    assert (roots.local / c.copy).read_text() == "workspace edit"
    assert (roots.remote / c.copy).read_text() == "workspace edit"
    # the conflict stays reported (without new copies) until resolved
    again = await sync(ws, roots)
    assert [x.path for x in again.conflicts] == ["notes.md"]
    assert len([p for p in os.listdir(roots.local) if ".conflict-" in p]) == 1


async def test_delete_vs_edit_keeps_the_edit(ws, roots):
    (roots.local / "keep.txt").write_text("v0")
    (roots.local / "gone.txt").write_text("v0")
    await sync(ws, roots)
    (roots.local / "keep.txt").unlink()
    (roots.remote / "keep.txt").write_text("v1 edited remotely")
    (roots.remote / "gone.txt").unlink()  # unchanged locally: the deletion propagates
    r = await sync(ws, roots)
    assert (roots.local / "keep.txt").read_text() == "v1 edited remotely"
    assert (roots.remote / "keep.txt").read_text() == "v1 edited remotely"
    assert not (roots.local / "gone.txt").exists()
    assert r.deleted_local == 1 and not r.conflicts


async def test_rename_and_directory_delete(ws, roots):
    (roots.local / "d").mkdir()
    (roots.local / "d" / "x.txt").write_text("x")
    (roots.local / "old.txt").write_text("content")
    await sync(ws, roots)
    (roots.local / "old.txt").rename(roots.local / "new.txt")
    (roots.local / "d" / "x.txt").unlink()
    (roots.local / "d").rmdir()
    await sync(ws, roots)
    assert snapshot(roots.remote) == {"new.txt": ("file", b"content", False)}


async def test_an_emptied_root_halts_instead_of_deleting(ws, roots):
    for i in range(3):
        (roots.local / f"f{i}").write_text(str(i))
    await sync(ws, roots)
    for i in range(3):
        (roots.local / f"f{i}").unlink()
    with pytest.raises(errors.SyncHaltedError):
        await sync(ws, roots)
    assert sorted(os.listdir(roots.remote)) == ["f0", "f1", "f2"]
    # the same for a vanished remote root
    for p in roots.remote.iterdir():
        p.unlink()
    roots.remote.rmdir()
    (roots.local / "f0").write_text("0")
    with pytest.raises(errors.SyncHaltedError):
        await sync(ws, roots)
    assert (roots.local / "f0").exists()


async def test_a_file_being_written_is_not_sent_until_it_settles(ws, roots):
    big = roots.local / "growing.log"
    big.write_bytes(os.urandom(8 << 20))
    (roots.local / "other.txt").write_text("o")
    stop = threading.Event()

    def writer() -> None:
        with big.open("ab") as fh:
            while not stop.is_set():
                fh.write(b"y" * 4096)
                fh.flush()
                time.sleep(0.0005)

    t = threading.Thread(target=writer)
    t.start()
    try:
        r = await sync(ws, roots)
    finally:
        stop.set()
        t.join()
    assert (roots.remote / "other.txt").read_text() == "o"
    assert not (roots.remote / "growing.log").exists()  # skipped, not half-sent
    assert not [p for p in os.listdir(roots.remote) if p.startswith(".tether-sync-")]
    assert r.uploaded == 1
    await sync(ws, roots)
    assert (roots.remote / "growing.log").read_bytes() == big.read_bytes()


async def test_excludes_gitignore_tetherignore_and_flags(ws, roots):
    loc = roots.local
    (loc / ".gitignore").write_text("*.log\nbuild/\n")
    (loc / ".tetherignore").write_text("secret.txt\n")
    (loc / "sub").mkdir()
    (loc / "sub" / ".gitignore").write_text("local-only\n")
    for name in ("app.log", "secret.txt", "keep.py", "data.tmp", "sub/local-only",
                 "sub/ok.txt"):
        (loc / name).write_text(name)
    (loc / "build").mkdir()
    (loc / "build" / "out.o").write_text("o")
    await sync(ws, roots, excludes=["*.tmp"])
    got = sorted(p for p in snapshot(roots.remote))
    assert got == [".gitignore", ".tetherignore", "keep.py", "sub", "sub/.gitignore",
                   "sub/ok.txt"]


async def test_large_file_changed_in_part_sends_only_the_changed_parts(ws, roots):
    data = bytearray(os.urandom(24 << 20))
    f = roots.local / "model.bin"
    f.write_bytes(data)
    first = await sync(ws, roots)
    assert first.bytes_sent > 24 << 20
    data[12 << 20:(12 << 20) + 100_000] = os.urandom(100_000)
    f.write_bytes(data)
    up = await sync(ws, roots)
    assert (roots.remote / "model.bin").read_bytes() == bytes(data)
    assert up.bytes_sent < 1 << 20, up.bytes_sent  # ~3 chunks, not 24 MiB
    # the other direction: an edit on the workspace comes back as a delta too
    data[:50_000] = os.urandom(50_000)
    (roots.remote / "model.bin").write_bytes(data)
    down = await sync(ws, roots)
    assert f.read_bytes() == bytes(data)
    assert down.bytes_received < 1 << 20, down.bytes_received


async def test_sparse_file_over_1gb_streams(ws, roots):
    """A > 1 GiB (sparse) file goes through without being held in memory."""
    import resource

    f = roots.local / "huge.img"
    with f.open("wb") as fh:
        fh.truncate((1 << 30) + 4096)
        fh.seek(1 << 29)
        fh.write(b"marker")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await sync(ws, roots)
    assert r.bytes_sent < 8 << 20  # holes travel as ZEROS frames, not as 1 GiB of zeros
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    remote = roots.remote / "huge.img"
    assert remote.stat().st_size == (1 << 30) + 4096
    with remote.open("rb") as fh:
        fh.seek(1 << 29)
        assert fh.read(6) == b"marker"
    assert grew_kib < 200 * 1024  # far below the file's size


async def test_one_way_modes(ws, roots):
    (roots.local / "a").write_text("a0")
    await sync(ws, roots, mode="one-way-safe")
    (roots.remote / "a").write_text("edited remotely")
    (roots.remote / "extra").write_text("remote only")
    (roots.local / "b").write_text("b")
    r = await sync(ws, roots, mode="one-way-safe")
    assert (roots.remote / "a").read_text() == "edited remotely"  # not overwritten
    assert (roots.remote / "extra").exists() and not (roots.local / "extra").exists()
    assert (roots.remote / "b").read_text() == "b" and r.downloaded == 0
    r = await sync(ws, roots, mode="one-way-replica")
    assert snapshot(roots.remote) == snapshot(roots.local)
    assert r.deleted_remote == 1


async def test_two_way_resolved_local_wins(ws, roots):
    (roots.local / "f").write_text("base")
    await sync(ws, roots, mode="two-way-resolved")
    (roots.local / "f").write_text("local")
    (roots.remote / "f").write_text("remote")
    r = await sync(ws, roots, mode="two-way-resolved")
    assert (roots.remote / "f").read_text() == "local"
    assert r.conflicts == [] and [c.resolved for c in r.auto_resolved] == ["local"]


async def test_renaming_a_large_file_sends_no_content(ws, roots):
    data = os.urandom(8 << 20)
    (roots.local / "weights.bin").write_bytes(data)
    await sync(ws, roots)
    (roots.local / "ckpt").mkdir()
    (roots.local / "weights.bin").rename(roots.local / "ckpt" / "weights-v1.bin")
    up = await sync(ws, roots)
    assert (roots.remote / "ckpt" / "weights-v1.bin").read_bytes() == data
    assert not (roots.remote / "weights.bin").exists()
    assert up.bytes_sent < 64 << 10, up.bytes_sent
    (roots.remote / "ckpt" / "weights-v1.bin").rename(roots.remote / "final.bin")
    down = await sync(ws, roots)
    assert (roots.local / "final.bin").read_bytes() == data
    assert not (roots.local / "ckpt" / "weights-v1.bin").exists()
    assert down.bytes_received < 64 << 10, down.bytes_received


async def test_a_remote_root_that_is_a_file_is_a_clear_error(ws, roots):
    roots.remote.write_text("not a folder")
    with pytest.raises(errors.PeerError, match="is not a directory on the workspace"):
        await sync(ws, roots)
    assert roots.remote.read_text() == "not a folder"


def test_resolve_without_a_running_session(ws, roots):
    """`resolve` on a finished session runs one cycle itself (sync API, no event loop)."""
    import tether

    f = roots.local / "cfg.toml"
    f.write_text("base")
    tether.sync_once(ws, roots.local, str(roots.remote))
    f.write_text("mine")
    (roots.remote / "cfg.toml").write_text("theirs")
    r = tether.sync_once(ws, roots.local, str(roots.remote))
    [c] = r.conflicts
    assert [x["path"] for x in tether.sync_conflicts(str(roots.local))] == ["cfg.toml"]
    res = tether.sync_resolve(f, "both")
    assert res["remaining"] == [] and res["keep"] == "both"
    assert (roots.remote / "cfg.toml").read_text() == "mine"
    assert (roots.remote / c.copy).read_text() == "theirs"  # both versions survive
    assert f.read_text() == "mine"
    with pytest.raises(errors.NotFoundError):
        tether.sync_resolve(f, "local")  # nothing left to resolve


async def test_a_missing_agent_is_a_clear_error(ws, roots, monkeypatch):
    monkeypatch.setenv("TETHER_SYNC_AGENT", "/nonexistent/tether agent sync")
    with pytest.raises(errors.PeerError, match="did not start") as info:
        await sync(ws, roots)
    assert not isinstance(info.value, errors.ConnectError)  # not retried as a dropped link
    assert "TETHER_SYNC_AGENT" in info.value.hint
