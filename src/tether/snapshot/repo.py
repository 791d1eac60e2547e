"""A repository on a Store: config, index, packs, trees, snapshots and locks.

The I/O shell around ``format``. Write order (docs/snapshot-format.md, "Write order"): packs,
then the index naming them, ``flush``, then the snapshot object, ``flush``. A reader that
finds a snapshot can therefore find every pack it needs; a push killed earlier leaves only
packs nobody references yet, which the next push adopts by reading their tails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from tether import paths
from tether.errors import IntegrityError, LockedError, NotFoundError, TetherError, UsageError
from tether.snapshot import format as fmt
from tether.snapshot.stores.base import Store

SEGMENT_SIZE = 4 << 20          # plaintext per zstd frame: cross-file compression, cheap reads
PACK_TARGET = 24 << 20          # close a pack once this many compressed bytes are in it
LOCK_STALE_S = 30 * 60          # a lock not refreshed for this long belongs to a dead process
LOCK_REFRESH_S = 5 * 60


class Located(NamedTuple):
    pack: bytes
    entry: fmt.BlobEntry


class Index:
    """Every blob the repository has: id -> (pack, entry). Built from index objects."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, Located] = {}
        self.packs: set[bytes] = set()
        self.index_keys: set[str] = set()
        # Further copies of a blob: two pushes at once, or a push that re-uploaded content
        # whose pack went missing while an old index still names that pack.
        self.copies: dict[bytes, list[Located]] = {}

    def add_pack(self, pack_id: bytes, entries: Iterable[fmt.BlobEntry]) -> None:
        self.packs.add(pack_id)
        blobs = self.blobs
        for e in entries:
            loc = blobs.get(e.id)
            if loc is None:
                blobs[e.id] = Located(pack_id, e)
            elif loc.pack != pack_id:
                self.copies.setdefault(e.id, []).append(Located(pack_id, e))

    def __contains__(self, blob: bytes) -> bool:
        return blob in self.blobs

    def prefer_present(self, present: set[bytes]) -> set[bytes]:
        """Point each blob whose pack is not in the store at a copy in a pack that is, where
        one exists. Returns the absent packs that still hold the only copy of some blob."""
        gone = self.packs - present
        if not gone:
            return set()
        lost: set[bytes] = set()
        for blob, loc in self.blobs.items():
            if loc.pack in gone:
                copy = next((c for c in self.copies.get(blob, ()) if c.pack in present), None)
                if copy is None:
                    lost.add(loc.pack)
                else:
                    self.blobs[blob] = copy
        return lost

    def drop_packs(self, packs: set[bytes]) -> None:
        """Forget ``packs``: the blobs only they held count as absent (a push uploads them
        again). Call ``prefer_present`` first so that blobs with another copy keep it."""
        if not packs:
            return  # the common case: no walk over every blob
        self.packs -= packs
        for blob in [b for b, loc in self.blobs.items() if loc.pack in packs]:
            del self.blobs[blob]


class Repository:
    def __init__(self, store: Store, config: fmt.RepoConfig) -> None:
        self.store = store
        self.config = config
        self._index: Index | None = None
        self._tree_cache: dict[bytes, list[fmt.Entry]] = {}
        self._segments: dict[tuple[bytes, int], bytes] = {}

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, store: Store, *, create: bool = False) -> Repository:
        try:
            raw = store.get("config")
        except NotFoundError:
            if not create:
                raise NotFoundError(f"no snapshot repository at {store.url}",
                                    "push a snapshot there first") from None
            store.put("config", fmt.encode_config(fmt.RepoConfig(id=secrets.token_hex(16))))
            store.flush()
            # RACE: two first pushes may both write a config; whichever the store kept is the
            # repository's, so read it back rather than trusting our own.
            raw = store.get("config")
        return cls(store, fmt.decode_config(raw))

    # -- index -----------------------------------------------------------------------------
    def index(self, refresh: bool = False) -> Index:
        if self._index is None or refresh:
            idx = Index()
            for key in self.store.list("index/"):
                data = self._get_index(key)
                if data is None:
                    continue  # corrupt: its packs count as unindexed; their tails are read
                for pack_id, entries in fmt.decode_index(data).items():
                    idx.add_pack(pack_id, entries)
                idx.index_keys.add(key)
            self._index = idx
        return self._index

    def _get_index(self, key: str) -> bytes | None:
        return self._get_named(key)

    def _get_named(self, key: str) -> bytes | None:
        """An index or snapshot object, or None if it does not match its name (corrupt).
        They are immutable: remote ones are kept in the local cache, so a command downloads
        only the ones it has not seen."""
        kind, name = key.split("/", 1)
        remote = not self.store.url.startswith("file://")
        path = paths.cache_dir() / "snapshot" / kind / self.config.id / name
        if remote:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                if fmt.object_id(data) == name:
                    return data
        data = self.store.get(key)
        if fmt.object_id(data) != name:
            return None
        if remote:
            with contextlib.suppress(TetherError):
                paths.atomic_write(path, data, mode=0o644)
        return data

    def packs_present(self) -> set[bytes]:
        """The packs the store lists now."""
        return {pid for key in self.store.list("packs/")
                if (pid := fmt.pack_id_of_key(key)) is not None}

    def orphan_packs(self, present: set[bytes] | None = None) -> list[bytes]:
        """Packs in the store that no index names (a killed push, or one still running)."""
        present = self.packs_present() if present is None else present
        return sorted(present - self.index().packs)

    def read_pack_header(self, pack_id: bytes) -> list[fmt.BlobEntry]:
        key = fmt.pack_key(pack_id)
        tail = self.store.get_range(key, -(64 << 10), 64 << 10)
        hlen = fmt.decode_pack_trailer(tail[-fmt.PACK_TRAILER.size:])
        need = hlen + fmt.PACK_TRAILER.size
        if need > len(tail):
            tail = self.store.get_range(key, -need, need)
            if len(tail) < need:
                raise IntegrityError(f"pack {pack_id.hex()[:12]} is shorter than its header")
        return fmt.decode_pack_header(tail[len(tail) - need:-fmt.PACK_TRAILER.size])

    def adopt_orphans(self, present: set[bytes] | None = None
                      ) -> dict[bytes, list[fmt.BlobEntry]]:
        """Read the tails of unindexed packs so their blobs count (resume after a kill)."""
        found: dict[bytes, list[fmt.BlobEntry]] = {}
        idx = self.index()
        for pid in self.orphan_packs(present):
            try:
                entries = self.read_pack_header(pid)
            except IntegrityError:
                continue  # a damaged orphan is not adopted; verify reports it, prune removes it
            idx.add_pack(pid, entries)
            found[pid] = entries
        return found

    def write_index(self, packs: dict[bytes, list[fmt.BlobEntry]]) -> str | None:
        if not packs:
            return None
        data = fmt.encode_index(packs)
        key = "index/" + fmt.object_id(data)
        self.store.put(key, data)
        if self._index is not None:
            self._index.index_keys.add(key)
        return key

    # -- blobs -----------------------------------------------------------------------------
    def locate(self, blob: bytes) -> Located:
        loc = self.index().blobs.get(blob)
        if loc is None:
            raise NotFoundError(f"blob {blob.hex()[:12]} is not in any pack of {self.store.url}",
                                "the repository is missing data: run `tether snapshot verify`")
        return loc

    def read_segment(self, pack: bytes, entry: fmt.BlobEntry) -> bytes:
        key = (pack, entry.seg_offset)
        seg = self._segments.get(key)
        if seg is not None:
            return seg
        frame = self.store.get_range(fmt.pack_key(pack), entry.seg_offset, entry.seg_length)
        if len(frame) != entry.seg_length:
            raise IntegrityError(f"pack {pack.hex()[:12]} is truncated")
        seg = fmt.decode_segment(frame)
        # Trees sit together in tree packs: a few cached segments serve a whole tree walk.
        if len(self._segments) >= 8:
            self._segments.pop(next(iter(self._segments)))
        self._segments[key] = seg
        return seg

    def read_blob(self, blob: bytes) -> bytes:
        loc = self.locate(blob)
        seg = self.read_segment(loc.pack, loc.entry)
        data = seg[loc.entry.offset:loc.entry.offset + loc.entry.length]
        if len(data) != loc.entry.length or fmt.blob_id(data) != blob:
            raise IntegrityError(f"blob {blob.hex()[:12]} in pack {loc.pack.hex()[:12]} does "
                                 "not match its id", "run `tether snapshot repair`, then push "
                                 "the folder again")
        return data

    def read_tree(self, tree: bytes) -> list[fmt.Entry]:
        cached = self._tree_cache.get(tree)
        if cached is None:
            cached = self._tree_cache[tree] = fmt.decode_tree(self.read_blob(tree))
        return cached

    # -- snapshots -------------------------------------------------------------------------
    def snapshots(self) -> list[tuple[str, fmt.Snapshot]]:
        """All snapshots, oldest first."""
        out = []
        for key in self.store.list("snapshots/"):
            sid = key.rsplit("/", 1)[-1]
            try:
                data = self._get_named(key)
            except NotFoundError:
                continue  # forgotten meanwhile
            if data is None:
                continue  # corrupt: verify reports it; it is not offered for restore
            out.append((sid, fmt.decode_snapshot(data)))
        out.sort(key=lambda p: (p[1].time_ns, p[0]))
        return out

    def find_snapshot(self, ref: str | None) -> tuple[str, fmt.Snapshot]:
        """``ref``: None/"latest", a tag (newest carrying it) or a unique id prefix."""
        snaps = self.snapshots()
        if not snaps:
            raise NotFoundError(f"no snapshots in {self.store.url}", "push one first")
        if ref in (None, "", "latest"):
            return snaps[-1]
        tagged = [p for p in snaps if ref in p[1].tags]
        if tagged:
            return tagged[-1]
        matches = [p for p in snaps if p[0].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"snapshot id {ref!r} is ambiguous", "give more characters")
        raise NotFoundError(f"no snapshot or tag {ref!r} in {self.store.url}",
                            f"list them with `tether snapshot ls {self.store.url}`")

    def write_snapshot(self, snap: fmt.Snapshot) -> str:
        data = fmt.encode_snapshot(snap)
        sid = fmt.object_id(data)
        self.store.put(f"snapshots/{sid}", data)
        return sid

    # -- locks -----------------------------------------------------------------------------
    def locks(self, now: float | None = None) -> list[tuple[str, fmt.Lock]]:
        """Live locks (stale ones are ignored, and removed by prune)."""
        now = time.time() if now is None else now
        out = []
        for key in self.store.list("locks/"):
            try:
                lock = fmt.decode_lock(self.store.get(key))
            except (NotFoundError, IntegrityError):
                continue
            if now - lock.time < LOCK_STALE_S:
                out.append((key, lock))
        return out

    def lock(self, kind: str) -> RepoLock:
        return RepoLock(self, kind)


class RepoLock:
    """A lock object in the store. Pushes share; prune is exclusive (restic's scheme).

    Each side writes its lock first and then looks: a push that sees a prune lock backs off,
    a prune that sees any other lock backs off. When both race, both back off; neither can
    delete what the other is writing.
    """

    def __init__(self, repo: Repository, kind: str) -> None:
        self.repo = repo
        self.kind = kind
        self.key = f"locks/{secrets.token_hex(16)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False  # release() deleted the lock; the holder's flush applies it

    def _write(self) -> None:
        lock = fmt.Lock(self.kind, socket.gethostname(), os.getpid(), time.time())
        self.repo.store.put(self.key, fmt.encode_lock(lock))

    def __enter__(self) -> RepoLock:
        self._released = False
        self._write()
        if self.repo.store.capabilities.batched:
            self.repo.store.flush()  # others must see the lock before we rely on it
        others = [(k, lk) for k, lk in self.repo.locks() if k != self.key]
        blocking = [lk for _, lk in others if self.kind == "prune" or lk.kind == "prune"]
        if blocking:
            self.repo.store.delete(self.key)
            b = blocking[0]
            raise LockedError(f"the repository is locked by a {b.kind} on {b.hostname} "
                              f"(pid {b.pid})", "wait for it to finish and try again")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            self._write()

    def _stop_refreshing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # a refresh in flight must not re-create the lock after us
            self._thread = None

    def release(self) -> None:
        """Delete the lock with the holder's next flush instead of a flush of its own: on a
        batched store the snapshot and the unlock then share one commit or version (the
        snapshot still lands first: puts and deletes are applied in order)."""
        self._stop_refreshing()
        self.repo.store.delete(self.key)
        self._released = True

    def reacquire(self) -> None:
        """Take the lock again after ``release`` (a push that must redo its commit)."""
        self.__enter__()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop_refreshing()
        if self._released and exc_type is None:
            return  # the holder flushed the delete; another would cost a listing (hf://)
        self.repo.store.delete(self.key)
        if self.repo.store.capabilities.batched:
            self.repo.store.flush()


class PackWriter:
    """Groups blobs into segments (compressed in worker threads) and segments into packs.

    ``add`` never blocks on compression unless too much is in flight (backpressure bounds
    memory); each finished pack is hashed and put by an upload worker.
    """

    def __init__(self, store: Store, pool: ThreadPoolExecutor, uploader: ThreadPoolExecutor,
                 on_upload: Callable[[int], None] | None = None, max_inflight: int = 6) -> None:
        self.store = store
        self.pool = pool
        self.uploader = uploader
        self.on_upload = on_upload or (lambda n: None)
        self._local = threading.local()
        self._seg: list[tuple[int, bytes, bytes]] = []   # (type, id, data)
        self._seg_bytes = 0
        self._pack: list[tuple[list[tuple[int, bytes, int]], Future[bytes]]] = []
        self._pack_raw = 0
        self._ratio = 0.35
        self._inflight: list[Future] = []
        self._max_inflight = max_inflight
        self.uploads: list[Future[tuple[bytes, list[fmt.BlobEntry]]]] = []
        self.bytes_added = 0

    def _cctx(self):
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = fmt.compressor()
        return c

    def _compress(self, blobs: list[bytes]) -> bytes:
        return fmt.encode_segment(blobs, self._cctx())

    def add(self, typ: int, blob: bytes, data: bytes) -> None:
        self._seg.append((typ, blob, data))
        self._seg_bytes += len(data)
        self.bytes_added += len(data)
        if self._seg_bytes >= SEGMENT_SIZE:
            self._close_segment()

    def _close_segment(self) -> None:
        if not self._seg:
            return
        layout, datas, off = [], [], 0
        for typ, blob, data in self._seg:
            layout.append((typ, blob, off))
            datas.append(data)
            off += len(data)
        fut = self.pool.submit(self._compress, datas)
        self._pack.append(([(t, b, o) for t, b, o in layout] + [(-1, b"", off)], fut))
        self._pack_raw += off
        self._seg, self._seg_bytes = [], 0
        self._inflight.append(fut)
        while len(self._inflight) > self._max_inflight:
            self._inflight.pop(0).result()
        done = [f.result() for _, f in self._pack if f.done()]
        if done:
            raw_done = sum(lay[-1][2] for lay, f in self._pack if f.done())
            self._ratio = max(0.05, sum(map(len, done)) / max(1, raw_done))
        if self._pack_raw * self._ratio >= PACK_TARGET:
            self._close_pack()

    def _close_pack(self) -> None:
        if not self._pack:
            return
        segs, self._pack, self._pack_raw = self._pack, [], 0
        self.uploads.append(self.uploader.submit(self._finish_pack, segs))
        while sum(1 for u in self.uploads if not u.done()) > 2:
            next(u for u in self.uploads if not u.done()).result()

    def _finish_pack(self, segs) -> tuple[bytes, list[fmt.BlobEntry]]:
        parts: list[bytes] = []
        entries: list[fmt.BlobEntry] = []
        pos = 0
        for layout, fut in segs:
            frame = fut.result()
            for i, (typ, blob, off) in enumerate(layout[:-1]):
                entries.append(fmt.BlobEntry(typ, blob, pos, len(frame), off,
                                             layout[i + 1][2] - off))
            parts.append(frame)
            pos += len(frame)
        parts.append(fmt.encode_pack_tail(entries))
        pack = b"".join(parts)
        pack_id = fmt.blob_id(pack)
        self.store.put(fmt.pack_key(pack_id), pack)
        self.on_upload(len(pack))
        return pack_id, entries

    def finish(self) -> dict[bytes, list[fmt.BlobEntry]]:
        """Close the open segment and pack, wait for every upload, return what was written."""
        self._close_segment()
        self._close_pack()
        return dict(u.result() for u in self.uploads)
