"""The snapshot operations the CLI and the Python API share: one function per command.

Each takes a store (a URL or an open ``Store``) and returns a typed result; problems found by
``verify`` are data in the result, not an exception halfway through.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import (
    IntegrityError,
    LocalIOError,
    PartialFailureError,
    ProtocolError,
    TetherError,
    UsageError,
)
from tether.snapshot import format as fmt
from tether.snapshot import venvs
from tether.snapshot.backup import PushResult
from tether.snapshot.backup import push as _push
from tether.snapshot.repo import LOCK_STALE_S, PackWriter, Repository
from tether.snapshot.restore import MAX_ENTRIES, PullResult
from tether.snapshot.restore import pull as _pull
from tether.snapshot.stores.base import Store, open_store

StoreLike = str | Store


def open_retrying(url: str) -> Store:
    """``open_store`` plus the one retry layer for remote stores (their clients' own retries
    are off, so attempts do not multiply); a local folder needs none."""
    s = open_store(url)
    if url.startswith("file:"):
        return s
    from tether.snapshot.stores.wrappers import RetryingStore

    return RetryingStore(s)


@contextlib.contextmanager
def _opened(store: StoreLike) -> Iterator[Store]:
    if isinstance(store, str):
        s = open_retrying(store)
        try:
            yield s
        finally:
            s.close()
    else:
        yield store


def split_ref(text: str) -> tuple[str, str | None]:
    """``STORE[@ID|TAG]`` -> (store url, ref or None). The ref never contains "/"."""
    url, sep, ref = text.rpartition("@")
    if sep and url and "/" not in ref and "://" in url:
        return url, ref or None
    return text, None


def push(store: StoreLike, path: str | Path, *, tags: tuple[str, ...] | list[str] = (),
         progress: Callable[[int], None] | None = None,
         on_total: Callable[[int], None] | None = None,
         on_status: Callable[[str], None] | None = None) -> PushResult:
    """Snapshot folder ``path`` into ``store``; only new content is uploaded.

    ``progress(n)``: n more bytes of the folder walked; ``on_total(n)``: the folder's size
    at its last push (not known on a first one); ``on_status(text)``: what a long upload to
    a batched store (hf://, kaggle://) is doing."""
    with _opened(store) as s:
        return _push(s, Path(path), tags=tuple(tags), progress=progress, on_total=on_total,
                     on_status=on_status)


def pull(store: StoreLike, path: str | Path | None = None, *, ref: str | None = None,
         replace: bool = False, rebuild_venv: bool = False,
         progress: Callable[[int], None] | None = None,
         on_total: Callable[[int], None] | None = None,
         max_entries: int | None = None) -> PullResult:
    """Restore snapshot ``ref`` (id prefix, tag; default the newest) to ``path``.

    ``path`` defaults to where the snapshot was taken (virtualenvs only work there).
    Virtualenvs that no longer match their interpreter produce warnings; with
    ``rebuild_venv`` they are recreated from the recorded package list. ``progress(n)``
    counts bytes written; ``on_total(n)`` gives their total once the snapshot is checked.
    ``max_entries``: the most files, directories and links to plan (default 3 million; the
    plan holds ~200 bytes per entry in memory, and hostile trees can claim billions).
    """
    if max_entries is not None and max_entries < 1:
        raise UsageError(f"max_entries must be at least 1, not {max_entries}",
                         "pass a positive number of entries, e.g. --max-entries 5000000")
    if isinstance(store, str) and ref is None:
        store, ref = split_ref(store)
    with _opened(store) as s:
        def check(plan) -> None:  # before anything is written, like every other check
            if rebuild_venv:
                for v in plan.snapshot.venvs:
                    venvs.check_freeze(v.freeze)

        result, plan = _pull(s, ref, Path(path) if path is not None else None,
                             replace=replace, progress=progress, on_plan=check,
                             on_total=on_total, max_entries=max_entries)
    original = Path(plan.snapshot.path)
    dest = Path(result.path)
    failed: list[tuple[str, str | None]] = []   # (what failed, its hint)
    for v in plan.snapshot.venvs:
        at = dest / v.path if v.path else dest
        problem = venvs.check(v, at, original / v.path if v.path else original)
        if problem is None:
            continue
        if rebuild_venv:
            try:
                venvs.rebuild(v, at)
            except TetherError as exc:  # the files are in place already: say so, go on
                failed.append((f"rebuilding the virtualenv at {at} failed: {exc.message}",
                               exc.hint))
                continue
            result.warnings.append(f"rebuilt virtualenv {at} ({problem.message})")
        else:
            result.warnings.append(f"{problem.message}; pull with --rebuild-venv to recreate "
                                   "it from the recorded package list")
    if failed:
        what, hint = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise PartialFailureError(
            f"restored {result.snapshot_id[:12]} to {result.path} ({result.files} files), but "
            f"{what}{more}",
            "the files are restored; " + (hint or "pull again with --rebuild-venv once the "
                                          "cause is fixed, or recreate the virtualenv by hand"),
            problems=[w for w, _ in failed])
    return result


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    time: str
    hostname: str
    path: str
    tags: list[str]
    files: int
    bytes: int
    venvs: list[str]


def list_snapshots(store: StoreLike) -> list[SnapshotInfo]:
    with _opened(store) as s:
        repo = Repository.open(s)
        return [SnapshotInfo(sid, time.strftime("%Y-%m-%d %H:%M:%S",
                                                 time.localtime(sn.time_ns / 1e9)),
                             sn.hostname, sn.path, list(sn.tags), sn.files, sn.bytes,
                             [v.path or "." for v in sn.venvs])
                for sid, sn in repo.snapshots()]


@dataclass(frozen=True)
class Change:
    status: str   # "+" added, "-" removed, "M" content changed, "T" type changed, "m" metadata
    path: str


def diff_trees(read_tree: Callable[[bytes], list[fmt.Entry]], a: bytes, b: bytes,
               prefix: str = "", max_entries: int | None = None) -> list[Change]:
    """Pure: what differs between two trees; identical subtrees (same id) are skipped.

    Iterative, and it stops past ``max_entries`` tree entries read (default: pull's cap):
    a few KB of hostile trees that share subtrees can claim billions of entries, and nest
    deeper than any recursion limit.
    """
    cap = MAX_ENTRIES if max_entries is None else max_entries
    read = 0

    def level(ta: bytes, tb: bytes, pre: str) -> Iterator[tuple[str, Any, Any]]:
        nonlocal read
        old = {e.name: e for e in read_tree(ta)}
        new = {e.name: e for e in read_tree(tb)}
        read += len(old) + len(new)
        if read > cap:
            raise LocalIOError(f"the trees that differ between these snapshots hold more "
                               f"than {cap} entries (counted up to {pre or '/'}); diff "
                               "stops there",
                               "a few KB of trees that share subtrees can claim billions of "
                               "entries: check where this repository came from")
        for name in sorted(old.keys() | new.keys()):
            yield pre + name, old.get(name), new.get(name)

    if a == b:
        return []
    out: list[Change] = []
    stack = [level(a, b, prefix)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, x, y = item
        if x is None or y is None:
            out.append(Change("+" if x is None else "-", path))
        elif x.type != y.type:
            out.append(Change("T", path))
        elif x.type == fmt.DIR:
            if x.mode != y.mode:
                out.append(Change("m", path + "/"))
            if x.ref != y.ref:
                stack.append(level(x.ref, y.ref, path + "/"))  # type: ignore[arg-type]
        elif x.ref != y.ref:
            out.append(Change("M", path))
        elif x.mode != y.mode or x.mtime_ns != y.mtime_ns:
            out.append(Change("m", path))
    return out


def diff(store: StoreLike, a: str, b: str) -> list[Change]:
    with _opened(store) as s:
        repo = Repository.open(s)
        ta, tb = repo.find_snapshot(a)[1].tree, repo.find_snapshot(b)[1].tree
        return diff_trees(repo.read_tree, ta, tb)


@dataclass
class VerifyResult:
    snapshots: int = 0
    packs: int = 0
    blobs_checked: int = 0
    bytes_checked: int = 0
    unindexed_packs: int = 0    # packs no index names (a killed push); read from their tails
    problems: list[str] = field(default_factory=list)
    missing_packs: list[str] = field(default_factory=list)   # indexed, not in the store
    corrupt_packs: list[str] = field(default_factory=list)   # failed --data (hex ids)

    @property
    def ok(self) -> bool:
        return not self.problems

    def hint(self, url: str) -> str:
        """What to do about the problems found, by kind."""
        if self.corrupt_packs:
            return (f"run `tether snapshot repair {url}` (it keeps the corrupt packs' intact "
                    "content and drops the rest), then push the affected folders again")
        if self.missing_packs or any("is in no pack" in p for p in self.problems):
            return ("push the affected folders again: push re-uploads content whose pack is "
                    "missing; or restore another snapshot")
        return (f"`tether snapshot repair {url}` rewrites the index; a snapshot object that "
                "does not match its name is never offered for restore")


def _walk_snapshot(repo: Repository, sid: str, snap: fmt.Snapshot, used: set[bytes],
                   problems: list[str]) -> None:
    blobs = repo.index().blobs
    stack = [(snap.tree, "/")]
    while stack:
        tree, rel = stack.pop()
        if tree in used:
            continue
        used.add(tree)
        try:
            entries = repo.read_tree(tree)
        except TetherError as exc:
            problems.append(f"snapshot {sid[:12]}: tree of {rel}: {exc.message}")
            continue
        for e in entries:
            if e.type == fmt.DIR:
                stack.append((e.ref, f"{rel}{e.name}/"))  # type: ignore[arg-type]
            elif e.type == fmt.FILE:
                for blob in e.ref:  # type: ignore[union-attr]
                    used.add(blob)  # type: ignore[arg-type]
                    if blob not in blobs:
                        problems.append(f"snapshot {sid[:12]}: {rel}{e.name}: content "
                                        f"{blob.hex()[:12]} is in no pack")  # type: ignore[union-attr]
                        break


def check_pack(repo: Repository, pack_id: bytes) -> tuple[int, int, list[str]]:
    """Read a whole pack: its hash, header and every blob. -> (blobs, bytes, problems)."""
    data = repo.store.get(fmt.pack_key(pack_id))
    name = pack_id.hex()[:12]
    if fmt.blob_id(data) != pack_id:
        return 0, len(data), [f"pack {name}: content does not match its name (corrupt)"]
    try:
        entries = fmt.split_pack(data)
    except (IntegrityError, ProtocolError) as exc:
        return 0, len(data), [f"pack {name}: {exc.message}"]
    n, problems = check_pack_bytes(pack_id, data, entries)
    return n, len(data), problems


def check_pack_bytes(pack_id: bytes, data: bytes, entries: list[fmt.BlobEntry]
                     ) -> tuple[int, list[str]]:
    """Check every blob of a pack read whole against its id. -> (blobs, problems)"""
    name = pack_id.hex()[:12]
    segs: dict[int, bytes] = {}
    problems: list[str] = []
    for e in entries:
        try:
            if e.seg_offset not in segs:
                segs = {e.seg_offset: fmt.decode_segment(
                    data[e.seg_offset:e.seg_offset + e.seg_length])}
            blob = segs[e.seg_offset][e.offset:e.offset + e.length]
        except IntegrityError as exc:
            problems.append(f"pack {name}: {exc.message}")
            break
        if fmt.blob_id(blob) != e.id:
            problems.append(f"pack {name}: blob {e.id.hex()[:12]} does not match its id")
    return len(entries), problems


def verify(store: StoreLike, *, data: bool = False,
           progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Check structure (every snapshot's trees and content are indexed, packs present);
    with ``data``, also read every pack and check every blob against its id."""
    res = VerifyResult()
    with _opened(store) as s:
        repo = Repository.open(s)
        present = repo.packs_present()
        res.unindexed_packs = len(repo.adopt_orphans(present))
        idx = repo.index()
        # A missing pack whose every blob has a copy elsewhere (a push uploaded it again)
        # harms nothing: the next prune drops it from the index.
        for pack in sorted(idx.prefer_present(present)):
            res.missing_packs.append(pack.hex())
            res.problems.append(f"pack {pack.hex()[:12]} is named by the index but missing")
        try:
            snaps = repo.snapshots()
        except TetherError as exc:
            res.problems.append(f"snapshot list: {exc.message}")
            snaps = []
        res.snapshots = len(snaps)
        for key in s.list("snapshots/") + s.list("index/"):
            if fmt.object_id(s.get(key)) != key.rsplit("/", 1)[-1]:
                res.problems.append(f"{key}: content does not match its name (corrupt)")
        used: set[bytes] = set()
        for sid, snap in snaps:
            _walk_snapshot(repo, sid, snap, used, res.problems)
        if data:
            from concurrent.futures import ThreadPoolExecutor

            # packs are read, decompressed and hashed in parallel (all release the GIL);
            # map() keeps at most a few packs in memory at once and reports in order
            with ThreadPoolExecutor(2) as pool:
                packs = sorted(idx.packs & present)
                checked = pool.map(lambda p: check_pack(repo, p), packs)
                for pack, (n, size, problems) in zip(packs, checked):
                    res.packs += 1
                    res.blobs_checked += n
                    res.bytes_checked += size
                    res.problems += problems
                    if problems:
                        res.corrupt_packs.append(pack.hex())
                    if progress:
                        progress(size)
        else:
            res.packs = len(idx.packs & present)
    return res


@dataclass
class RepairResult:
    packs_checked: int = 0
    corrupt_packs: list[str] = field(default_factory=list)   # removed (hex ids)
    missing_packs: list[str] = field(default_factory=list)   # dropped from the index
    blobs_salvaged: int = 0     # intact blobs of corrupt packs, stored again in new packs
    blobs_lost: int = 0         # blobs of corrupt packs that no pack holds any more
    problems: list[str] = field(default_factory=list)        # what is still damaged after


def _salvage(data: bytes, entries: list[fmt.BlobEntry], have: set[bytes],
             writers: dict[int, PackWriter]) -> tuple[int, int]:
    """Store again every blob of a corrupt pack that still matches its id. -> (kept, lost)"""
    kept = lost = 0
    by_segment: dict[int, list[fmt.BlobEntry]] = {}
    for e in entries:
        if e.id not in have:
            by_segment.setdefault(e.seg_offset, []).append(e)
    for off, group in sorted(by_segment.items()):
        try:
            seg = fmt.decode_segment(data[off:off + group[0].seg_length])
        except (IntegrityError, ProtocolError):
            lost += len(group)
            continue
        for e in group:
            blob = seg[e.offset:e.offset + e.length]
            if len(blob) == e.length and fmt.blob_id(blob) == e.id and e.id not in have:
                have.add(e.id)
                writers[e.type].add(e.type, e.id, blob)
                kept += 1
            elif e.id not in have:
                lost += 1
    return kept, lost


def _pack_entries(idx, pack: bytes) -> list[fmt.BlobEntry]:
    """Every entry the index holds for ``pack`` (its own header may be what is corrupt)."""
    out = [loc.entry for loc in idx.blobs.values() if loc.pack == pack]
    out += [c.entry for copies in idx.copies.values() for c in copies if c.pack == pack]
    return out


def _read_checked(store: Store, pack: bytes) -> tuple[int, list[fmt.BlobEntry] | None]:
    """-> (size, the pack's entries if it is intact, else None)."""
    data = store.get(fmt.pack_key(pack))
    try:
        if fmt.blob_id(data) == pack:
            entries = fmt.split_pack(data)
            if not check_pack_bytes(pack, data, entries)[1]:
                return len(data), entries
    except (IntegrityError, ProtocolError):
        pass
    return len(data), None


def repair(store: StoreLike, *, progress: Callable[[int], None] | None = None) -> RepairResult:
    """Make the index name only packs that are present and intact, so the next push uploads
    whatever is lost: read every pack (as ``verify --data``); store again the intact blobs
    of corrupt ones in new packs; write one index of the good packs; then delete the old
    indexes and the corrupt packs. Holds the exclusive lock, like prune."""
    from concurrent.futures import ThreadPoolExecutor

    res = RepairResult()
    with _opened(store) as s:
        repo = Repository.open(s)
        with repo.lock("prune"), ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as up:
            present = repo.packs_present()
            adopted = repo.adopt_orphans(present)
            idx = repo.index()
            res.missing_packs = sorted(p.hex() for p in idx.packs - present)
            keep: dict[bytes, list[fmt.BlobEntry]] = {}
            corrupt: list[bytes] = []
            packs = sorted(idx.packs & present)
            for pack, (size, entries) in zip(
                    packs, pool.map(lambda p: _read_checked(s, p), packs)):
                res.packs_checked += 1
                if entries is not None:
                    keep[pack] = entries
                else:
                    corrupt.append(pack)
                if progress:
                    progress(size)
            have = {e.id for entries in keep.values() for e in entries}
            writers = {fmt.DATA: PackWriter(s, pool, up), fmt.TREE: PackWriter(s, pool, up)}
            for pack in corrupt:
                # fetched again, one at a time: holding every corrupt pack until all were
                # checked would make memory grow with the damage
                data = s.get(fmt.pack_key(pack))
                kept, lost = _salvage(data, _pack_entries(idx, pack), have, writers)
                res.blobs_salvaged += kept
                res.blobs_lost += lost
            for w in writers.values():
                keep.update(w.finish())
            res.corrupt_packs = sorted(p.hex() for p in corrupt)
            old_keys = s.list("index/")
            if corrupt or res.missing_packs or adopted or set(old_keys) != idx.index_keys:
                new_key = repo.write_index(keep)
                s.flush()  # the new index is durable before anything it replaces goes away
                for key in old_keys:  # corrupt ones too
                    if key != new_key:
                        s.delete(key)
                for pack in corrupt:  # its intact blobs are in the new packs now
                    s.delete(fmt.pack_key(pack))
                s.flush()
        res.problems = verify(s).problems
    return res


@dataclass
class PruneResult:
    forgotten: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_kept: int = 0


def forget(store: StoreLike, ref: str) -> str:
    """Remove one snapshot object; its data stays until ``prune``."""
    with _opened(store) as s:
        repo = Repository.open(s)
        sid, _ = repo.find_snapshot(ref)
        s.delete(f"snapshots/{sid}")
        s.flush()
        return sid


def prune(store: StoreLike, *, keep_last: int | None = None) -> PruneResult:
    """Forget all but the newest ``keep_last`` snapshots, then delete every pack no
    remaining snapshot uses. Holds the exclusive lock, so no push is writing meanwhile."""
    if keep_last is not None and keep_last < 1:
        raise UsageError("--keep-last must be at least 1")
    res = PruneResult()
    with _opened(store) as s:
        repo = Repository.open(s)
        with repo.lock("prune"):
            snaps = repo.snapshots()
            if keep_last is not None and len(snaps) > keep_last:
                res.forgotten = [sid for sid, _ in snaps[:-keep_last]]
                snaps = snaps[-keep_last:]
            present = repo.packs_present()
            orphans = set(repo.adopt_orphans(present))
            idx = repo.index()
            idx.prefer_present(present)  # content uploaded again after its pack went missing
            used: set[bytes] = set()
            problems: list[str] = []
            for sid, snap in snaps:
                _walk_snapshot(repo, sid, snap, used, problems)
            lost = {idx.blobs[b].pack for b in used if b in idx.blobs} - present
            problems += [f"pack {p.hex()[:12]} holds data in use but is missing" for p in lost]
            if problems:
                raise IntegrityError(f"prune stopped: {problems[0]}",
                                     "run `tether snapshot verify` first; nothing was deleted")
            keep: dict[bytes, list[fmt.BlobEntry]] = {}
            drop: list[bytes] = []
            by_pack: dict[bytes, list[fmt.BlobEntry]] = {p: [] for p in idx.packs}
            for loc in idx.blobs.values():
                by_pack[loc.pack].append(loc.entry)
            # Where list() may lag, a pack no index names yet may belong to a push whose lock
            # we could not see: keep such packs (the grace rule); the next push adopts them.
            grace = set() if s.capabilities.consistent_list else orphans
            for pack, entries in by_pack.items():
                if pack in grace or any(e.id in used for e in entries):
                    keep[pack] = entries
                else:
                    drop.append(pack)
            for sid in res.forgotten:  # every check passed: from here on we delete
                s.delete(f"snapshots/{sid}")
            old_keys = s.list("index/")  # corrupt ones too: the new index replaces all
            new_key = repo.write_index(keep)
            s.flush()  # the new index is durable before anything it replaces goes away
            for key in old_keys:
                if key != new_key:
                    s.delete(key)
            for pack in drop:
                res.bytes_freed += sum(dict((e.seg_offset, e.seg_length)
                                            for e in by_pack[pack]).values())
                s.delete(fmt.pack_key(pack))
            res.packs_deleted, res.packs_kept = len(drop), len(keep)
            now = time.time()
            for key in s.list("locks/"):
                with contextlib.suppress(TetherError):
                    if now - fmt.decode_lock(s.get(key)).time > LOCK_STALE_S:
                        s.delete(key)
            s.flush()
    return res


__all__ = ["Change", "PruneResult", "PullResult", "PushResult", "RepairResult", "SnapshotInfo",
           "VerifyResult", "diff", "diff_trees", "forget", "list_snapshots", "prune", "pull",
           "push", "repair", "split_ref", "verify"]
