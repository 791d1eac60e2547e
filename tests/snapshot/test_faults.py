"""Faults: killed pushes, flipped bytes, missing packs, concurrent pushes, prune safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snapfix import CrashAfter, describe, make_tree, set_times  # noqa: E402

from tether.errors import IntegrityError, LockedError, NotFoundError  # noqa: E402
from tether.snapshot import api  # noqa: E402
from tether.snapshot import format as fmt  # noqa: E402
from tether.snapshot import repo as repomod
from tether.snapshot.repo import Repository  # noqa: E402
from tether.snapshot.stores import open_store  # noqa: E402

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def small_packs(monkeypatch):
    """Many small packs, so a crash can fall between any two of them."""
    monkeypatch.setattr(repomod, "SEGMENT_SIZE", 64 << 10)
    monkeypatch.setattr(repomod, "PACK_TARGET", 200 << 10)


def _random_tree(root: Path, files: int = 12, size: int = 100 << 10) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:02d}.bin").write_bytes(os.urandom(size))
    set_times(root)
    return root


def _pack_keys(store) -> set[str]:
    return set(store.list("packs/"))


def _is_tree_pack(key: str, data: bytes) -> bool:
    return key.startswith("packs/") and fmt.split_pack(data)[0].type == fmt.TREE


CRASH_AT = {  # where -> when(key, data, puts done so far)
    "first-pack": lambda k, d, n: True,
    "mid-packs": lambda k, d, n: n == 3,
    "before-tree-pack": lambda k, d, n: _is_tree_pack(k, d),
    "before-index": lambda k, d, n: k.startswith("index/"),
    "before-snapshot": lambda k, d, n: k.startswith("snapshots/"),
}


@pytest.mark.parametrize("where", list(CRASH_AT))
def test_push_crashing_mid_way_leaves_a_readable_repo(tmp_path, isolated, small_packs, where):
    url = f"file://{tmp_path}/repo"
    base = make_tree(tmp_path / "base", big=False)
    first = api.push(url, base)
    src = _random_tree(tmp_path / "src")
    store = open_store(url)
    crashing = CrashAfter(store, CRASH_AT[where])
    with pytest.raises(CrashAfter.Crash):
        api.push(crashing, src)
    # the repository still reads: the old snapshot restores, verify finds nothing wrong
    assert [s.id for s in api.list_snapshots(url)] == [first.snapshot_id]
    assert api.verify(url, data=True).problems == []
    api.pull(url, tmp_path / "old")
    assert describe(tmp_path / "old") == describe(base)
    # the next push resumes: finished packs are adopted, not uploaded again
    finished = {k for k in crashing.put_keys if k.startswith("packs/")}
    before = _pack_keys(store)
    indexed = any(k.startswith("index/") for k in crashing.put_keys)
    second = api.push(url, src)
    assert second.adopted_packs == (0 if indexed else len(finished))
    if where == "before-snapshot":
        assert second.bytes_new == 0   # everything but the commit point was there already
    assert not (_pack_keys(store) - before) & finished
    api.pull(f"{url}@{second.snapshot_id}", tmp_path / "new")
    assert describe(tmp_path / "new") == describe(src)
    assert api.verify(url, data=True).ok


_KILL_SCRIPT = """
import sys
from pathlib import Path
from tether.snapshot import repo, api
repo.SEGMENT_SIZE = 64 << 10
repo.PACK_TARGET = 256 << 10
orig = repo.PackWriter._finish_pack
def slow(self, segs):
    out = orig(self, segs)
    print("pack", flush=True)
    import time; time.sleep(0.2)
    return out
repo.PackWriter._finish_pack = slow
api.push(sys.argv[1], Path(sys.argv[2]))
print("done", flush=True)
"""


@pytest.mark.timeout(60)
def test_push_killed_with_sigkill_mid_way(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = _random_tree(tmp_path / "src", files=30, size=200 << 10)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, url, str(src)],
                            stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    packs_seen = 0
    while packs_seen < 3:
        line = proc.stdout.readline()
        assert line, "push ended before it wrote three packs"
        packs_seen += line.startswith("pack")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    store = open_store(url)
    assert store.list("snapshots/") == []
    assert api.verify(url).ok
    written = _pack_keys(store)
    assert len(written) >= 3
    r = api.push(url, src)
    assert r.adopted_packs >= 3
    api.pull(url, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def _corrupt_one_pack(tmp_path: Path) -> Path:
    packs = sorted((tmp_path / "repo" / "packs").rglob("*"))
    biggest = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 3] ^= 0x01
    biggest.write_bytes(bytes(data))
    return biggest


def test_flipped_byte_is_caught_by_verify_data_and_pull(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    api.push(url, make_tree(tmp_path / "src"))
    _corrupt_one_pack(tmp_path)
    assert api.verify(url).ok  # structure alone cannot see it
    res = api.verify(url, data=True)
    assert not res.ok and "does not match" in res.problems[0]
    dest = make_tree(tmp_path / "dest", big=False)
    before = describe(dest)
    with pytest.raises(IntegrityError):
        api.pull(url, dest, replace=True)
    assert describe(dest) == before
    assert not [p for p in tmp_path.iterdir() if ".tether-" in p.name]


def test_missing_pack_names_the_snapshot_and_path(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    sid = api.push(url, make_tree(tmp_path / "src")).snapshot_id
    store = open_store(url)
    repo = Repository.open(store)
    big_blob = next(e.ref[0] for e in repo.read_tree(repo.find_snapshot(None)[1].tree)
                    if e.name == "big.bin")
    lost = repo.locate(big_blob).pack
    store.delete(fmt.pack_key(lost))
    with pytest.raises(NotFoundError) as info:
        api.pull(url, tmp_path / "out")
    msg = info.value.message
    assert sid[:12] in msg and lost.hex()[:12] in msg
    named = msg.split("missing data for ")[1].split(":")[0]   # a path whose content was lost
    assert (tmp_path / "src" / named).is_file()
    assert not (tmp_path / "out").exists()
    problems = api.verify(url).problems
    assert any("missing" in p for p in problems)


def test_two_pushes_at_once_do_not_corrupt(tmp_path, isolated, small_packs):
    url = f"file://{tmp_path}/repo"
    a = _random_tree(tmp_path / "a", files=10)
    b = _random_tree(tmp_path / "b", files=10)
    (b / "shared.bin").write_bytes((a / "f00.bin").read_bytes())  # both upload this blob
    results, errors = {}, []

    def run(name, path):
        try:
            results[name] = api.push(url, path)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, p)) for n, p in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert api.verify(url, data=True).ok
    for name, src in (("a", a), ("b", b)):
        api.pull(f"{url}@{results[name].snapshot_id}", tmp_path / f"out-{name}")
        assert describe(tmp_path / f"out-{name}") == describe(src)


def test_prune_keeps_what_is_used_and_frees_the_rest(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = _random_tree(tmp_path / "src", files=4, size=300 << 10)
    api.push(url, src)
    (src / "f00.bin").write_bytes(os.urandom(300 << 10))
    for f in ("f01.bin", "f02.bin"):
        (src / f).unlink()
    set_times(src, 1_700_000_000_000_000_000)
    keep = api.push(url, src)
    res = api.prune(url, keep_last=1)
    assert len(res.forgotten) == 1 and res.bytes_freed > 0
    assert [s.id for s in api.list_snapshots(url)] == [keep.snapshot_id]
    assert api.verify(url, data=True).ok
    api.pull(url, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)
    again = api.prune(url)
    assert again.packs_deleted == 0


def test_prune_and_push_exclude_each_other(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src", big=False)
    api.push(url, src)
    repo = Repository.open(open_store(url))
    with repo.lock("push"), pytest.raises(LockedError, match="push"):
        api.prune(url)
    with repo.lock("prune"), pytest.raises(LockedError, match="prune"):
        api.push(url, src)
    assert api.prune(url).packs_kept >= 1   # both locks were released


def test_stale_locks_do_not_block_prune(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    api.push(url, make_tree(tmp_path / "src", big=False))
    store = open_store(url)
    old = fmt.Lock("push", "dead-host", 1, time.time() - repomod.LOCK_STALE_S - 10)
    store.put("locks/" + "0" * 32, fmt.encode_lock(old))
    api.prune(url)
    assert store.list("locks/") == []


def test_forget_removes_only_that_snapshot(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src", big=False)
    a = api.push(url, src, tags=["a"]).snapshot_id
    (src / "n").write_text("n")
    b = api.push(url, src).snapshot_id
    assert api.forget(url, "a") == a
    assert [s.id for s in api.list_snapshots(url)] == [b]


def test_a_lost_index_is_rebuilt_from_pack_tails(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src")
    api.push(url, src)
    store = open_store(url)
    for key in store.list("index/"):
        store.delete(key)
    res = api.verify(url, data=True)
    assert res.ok and res.unindexed_packs >= 2 and res.blobs_checked > 0
    api.pull(url, tmp_path / "out")                 # reads the pack tails instead
    assert describe(tmp_path / "out") == describe(src)
    again = api.push(url, src)                      # and the next push writes an index again
    assert again.adopted_packs >= 2 and again.bytes_new == 0
    assert store.list("index/") and Repository.open(store).orphan_packs() == []


def test_verify_catches_a_tampered_snapshot_object(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    sid = api.push(url, make_tree(tmp_path / "src", big=False)).snapshot_id
    path = tmp_path / "repo" / "snapshots" / sid
    path.write_bytes(path.read_bytes() + b" ")   # still valid JSON, no longer its name
    problems = api.verify(url).problems
    assert problems == [f"snapshots/{sid}: content does not match its name (corrupt)"]


def test_a_corrupt_index_is_ignored_and_pack_tails_used(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src")
    api.push(url, src)
    store = open_store(url)
    key = store.list("index/")[0]
    path = tmp_path / "repo" / key
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    api.pull(url, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)
    assert any(key in p for p in api.verify(url).problems)


def test_prune_replaces_a_corrupt_index(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src", big=False)
    api.push(url, src)
    key = open_store(url).list("index/")[0]
    (tmp_path / "repo" / key).write_bytes(b"garbage")
    api.prune(url)
    assert api.verify(url, data=True).ok
    api.pull(url, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def test_prune_deletes_nothing_when_a_kept_snapshot_is_damaged(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src")
    api.push(url, src)
    (src / "n").write_text("n")
    api.push(url, src)
    store = open_store(url)
    repo = Repository.open(store)
    big = next(e.ref[0] for e in repo.read_tree(repo.find_snapshot(None)[1].tree)
               if e.name == "big.bin")
    store.delete(fmt.pack_key(repo.locate(big).pack))
    before = set(store.list())
    with pytest.raises(IntegrityError, match="prune stopped"):
        api.prune(url, keep_last=1)
    assert set(store.list()) == before


def test_two_processes_pushing_at_once(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    a = _random_tree(tmp_path / "a", files=20)
    b = _random_tree(tmp_path / "b", files=20)
    (b / "shared.bin").write_bytes((a / "f00.bin").read_bytes())
    script = ("import sys; from tether.snapshot import api; "
              "print(api.push(sys.argv[1], sys.argv[2]).snapshot_id)")
    procs = [subprocess.Popen([sys.executable, "-c", script, url, str(p)],
                              stdout=subprocess.PIPE, text=True) for p in (a, b)]
    ids = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert api.verify(url, data=True).ok
    for sid, src in zip(ids, (a, b)):
        api.pull(f"{url}@{sid}", tmp_path / f"out-{sid[:6]}")
        assert describe(tmp_path / f"out-{sid[:6]}") == describe(src)


def test_a_missing_pack_is_uploaded_again_by_the_next_push(tmp_path, isolated):
    """verify's hint says "push again": push must notice the indexed pack is gone and
    upload its content again, which also heals the older snapshot (content-addressed)."""
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src")
    first = api.push(url, src)
    store = open_store(url)
    repo = Repository.open(store)
    big = next(e.ref[0] for e in repo.read_tree(repo.find_snapshot(None)[1].tree)
               if e.name == "big.bin")
    lost_pack = repo.locate(big).pack
    # what the lost pack held (big.bin's chunks dedup among themselves: not its size)
    lost = sum(loc.entry.length for loc in repo.index().blobs.values() if loc.pack == lost_pack)
    store.delete(fmt.pack_key(lost_pack))
    assert not api.verify(url).ok
    again = api.push(url, src)                       # same folder, same stat cache
    assert again.bytes_new >= lost > 0
    report = api.verify(url, data=True)
    assert report.problems == [], report.problems
    api.pull(f"{url}@{first.snapshot_id}", tmp_path / "old")
    assert describe(tmp_path / "old") == describe(src)
    assert api.prune(url).packs_kept >= 1            # prune drops the stale index entries
    assert api.verify(url, data=True).ok


def test_repair_drops_a_corrupt_pack_and_the_next_push_heals(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    src = make_tree(tmp_path / "src")
    first = api.push(url, src)
    corrupt = _corrupt_one_pack(tmp_path)
    report = api.verify(url, data=True)
    assert report.corrupt_packs == [corrupt.name] and "repair" in report.hint(url)
    fixed = api.repair(url)
    assert fixed.corrupt_packs == [corrupt.name] and not corrupt.exists()
    assert fixed.blobs_salvaged + fixed.blobs_lost > 0
    if fixed.blobs_lost:                             # the flipped byte's blob is gone ...
        assert fixed.problems and "push" in api.verify(url).hint(url)
    api.push(url, src)                               # ... until the folder is pushed again
    assert api.verify(url, data=True).problems == []
    api.pull(f"{url}@{first.snapshot_id}", tmp_path / "old")
    assert describe(tmp_path / "old") == describe(src)


def test_repair_keeps_the_intact_blobs_of_a_corrupt_pack(tmp_path, isolated, small_packs):
    """Only the damaged segment is lost: the other files of the pack still restore without
    their folder being pushed again."""
    url = f"file://{tmp_path}/repo"
    src = _random_tree(tmp_path / "src", files=6, size=100 << 10)
    sid = api.push(url, src).snapshot_id
    store = open_store(url)
    repo = Repository.open(store)
    pack, entries = next((p, fmt.split_pack(store.get(fmt.pack_key(p))))
                         for p in sorted(repo.index().packs)
                         if len({e.seg_offset for e in fmt.split_pack(
                             store.get(fmt.pack_key(p)))}) > 1)
    path = tmp_path / "repo" / fmt.pack_key(pack)
    data = bytearray(path.read_bytes())
    data[entries[0].seg_offset + entries[0].seg_length // 2] ^= 0x01   # first segment only
    path.write_bytes(bytes(data))
    fixed = api.repair(url)
    assert fixed.blobs_salvaged > 0 and fixed.blobs_lost > 0
    assert len(api.verify(url, data=True).problems) == fixed.blobs_lost
    with pytest.raises(NotFoundError):
        api.pull(f"{url}@{sid}", tmp_path / "out")   # a snapshot missing content is refused
    api.push(url, src)
    api.pull(f"{url}@{sid}", tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def _batched_memory_store():
    """A MemoryStore that says it is batched, like hf:// and kaggle://."""
    from dataclasses import replace

    from fakes.store_doubles import MemoryStore

    store = MemoryStore()
    store.capabilities = replace(MemoryStore.capabilities, batched=True)
    return store


@pytest.mark.parametrize("fails", [False, True], ids=["released-and-flushed", "error-after"])
def test_a_released_lock_is_not_deleted_and_flushed_again(fails):
    """release() queues the delete for the holder's next flush; __exit__ repeating it cost a
    whole listing per push on hf://. After an error it still cleans up."""
    store = _batched_memory_store()
    repo = Repository.open(store, create=True)
    with pytest.raises(RuntimeError) if fails else nullcontext():
        with repomod.RepoLock(repo, "push") as lock:
            lock.release()
            store.flush()                          # the holder's flush: the commit point
            store.calls.clear()
            if fails:
                raise RuntimeError("after the commit")
    assert not [k for k in store.objects if k.startswith("locks/")]
    assert store.calls == (["delete", "flush"] if fails else [])
