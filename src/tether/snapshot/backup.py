"""Push: walk a folder once, store new content, write trees, then commit a snapshot.

One depth-first pass (tar order, so neighbouring files compress together): each file costs
one ``lstat``; a file whose stat matches the stat cache is not read. New content goes to a
``PackWriter`` whose segments compress in worker threads (zstd and BLAKE3 release the GIL)
while this thread keeps walking. Directories are opened once and everything below is reached
relative to their fd with O_NOFOLLOW, so a symlink swapped in mid-walk is never followed.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from pyfastcdc import FastCDC

from tether.errors import LocalIOError, NotFoundError, PeerError, UsageError
from tether.snapshot import format as fmt
from tether.snapshot import venvs as venvmod
from tether.snapshot.repo import PackWriter, RepoLock, Repository
from tether.snapshot.restore import MAX_DEPTH
from tether.snapshot.scan import Excluder, StatCache, is_cachedir
from tether.snapshot.stores.base import Store

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _NOATIME


@dataclass
class PushResult:
    snapshot_id: str
    tree: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0
    bytes_new: int = 0          # plaintext of blobs the repository did not have
    bytes_uploaded: int = 0     # everything put to the store, packs, trees, index, snapshot
    packs: int = 0
    adopted_packs: int = 0      # finished packs of an interrupted push that were reused
    duration_s: float = 0.0
    skipped: list[str] = field(default_factory=list)


class CountingStore:
    """Wraps a Store and counts the bytes put (the benchmark and PushResult need them)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.bytes_put = 0

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        self.bytes_put += len(data)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)
        self.bytes_put += path.stat().st_size

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class _Walker:
    def __init__(self, repo: Repository, data: PackWriter, trees: PackWriter,
                 cache: StatCache, excluder: Excluder, progress: Callable[[int], None],
                 *, trusted: bool = True, collect: bool = False) -> None:
        self.repo = repo
        self.have = repo.index().blobs
        self.data = data
        self.trees = trees
        self.cache = cache
        self.excluder = excluder
        self.progress = progress
        self.seen: set[bytes] = set()
        # ``trusted`` False: some indexed content went missing, so every cached id is
        # looked up again (and re-read when it is gone).
        self.trusted = trusted and cache.trusted(repo.index().index_keys)
        # Every blob id the snapshot reaches (hex), kept when the push must check afterwards
        # that the store still holds all of them (stores whose listing may drop objects).
        self.used: set[str] | None = set() if collect else None
        cfg = repo.config
        self.large = cfg.large_file
        self.cdc = FastCDC(avg_size=cfg.chunk_avg, min_size=cfg.chunk_min,
                           max_size=cfg.chunk_max)
        self.files = self.dirs = self.bytes = self.files_read = self.bytes_read = 0
        self.skipped: list[str] = []
        self.venvs: list[fmt.Venv] = []

    def _store(self, typ: int, data: bytes, writer: PackWriter) -> str:
        blob = blake3.blake3(data).digest()
        if blob not in self.have and blob not in self.seen:
            self.seen.add(blob)
            writer.add(typ, blob, data)
        return blob.hex()

    def _read_file(self, dfd: int, name: str, rel: str, size: int) -> tuple[list[str], int]:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
        except PermissionError:  # O_NOATIME needs ownership; a readable file is still fine
            fd = os.open(name, _FILE_FLAGS & ~_NOATIME, dir_fd=dfd)
        try:
            if size < self.large:
                data = os.read(fd, size + 1)
                while len(data) > size:  # grew while we read: take all of it
                    more = os.read(fd, 1 << 20)
                    if not more:
                        break
                    data += more
                    size = len(data)
                self.bytes_read += len(data)
                return ([self._store(fmt.DATA, data, self.data)] if data else []), len(data)
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                ids = [self._store(fmt.DATA, mm[o:o + n], self.data)
                       for o, n in self._cuts(mm)]
                self.bytes_read += len(mm)
                return ids, len(mm)
        finally:
            os.close(fd)

    def _cuts(self, mm: mmap.mmap) -> list[tuple[int, int]]:
        view = memoryview(mm)
        try:
            return [(c.offset, c.length) for c in self.cdc.cut_buf(view)]
        finally:
            view.release()

    def walk(self, dfd: int, rel: str, dst: os.stat_result) -> tuple[str, bool] | None:
        """Store the directory open at ``dfd`` and return (tree id, clean): clean when it and
        everything below match the stat cache, so the cached tree id is reused unencoded.
        None: the directory is a cache (CACHEDIR.TAG) and is skipped."""
        rows: list[list] = []
        entries = list(os.scandir(dfd))
        if rel and any(e.name == "CACHEDIR.TAG" for e in entries) and is_cachedir(dfd):
            return None
        cached_tree = self.cache.dir_tree(rel, dst)
        clean = cached_tree is not None
        if any(e.name == "pyvenv.cfg" for e in entries):
            venv = venvmod.describe(dfd, rel)
            if venv is not None:
                self.venvs.append(venv)
        prefix = rel + "/" if rel else ""
        for e in entries:
            name = e.name
            path = prefix + name
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            if self.excluder.skip(name, path, is_dir):
                continue
            if stat.S_ISREG(mode):
                ids = self.cache.lookup(path, st)
                size = st.st_size
                if ids is None or not (self.trusted or
                                       all(bytes.fromhex(i) in self.have for i in ids)):
                    clean = False
                    try:
                        ids, size = self._read_file(dfd, name, path, size)
                    except (FileNotFoundError, PermissionError) as exc:
                        self.skipped.append(f"{path}: {exc.strerror}")
                        continue
                    self.files_read += 1
                    if size == st.st_size:
                        self.cache.remember(path, st, ids)
                elif not self.cache.remember(path, st, ids):
                    clean = False
                self.progress(size)  # all of the folder, read or not: the total is its size
                if self.used is not None:
                    self.used.update(ids)
                rows.append([name, "f", mode & 0o7777, st.st_mtime_ns, size, ids])
                self.files += 1
                self.bytes += size
            elif is_dir:
                if path.count("/") >= MAX_DEPTH:  # restore refuses deeper trees: do not write one
                    self.skipped.append(f"{path}/: nested deeper than {MAX_DEPTH} directories")
                    clean = False
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except (FileNotFoundError, PermissionError) as exc:
                    self.skipped.append(f"{path}/: {exc.strerror}")
                    clean = False
                    continue
                try:
                    walked = self.walk(sub, path, st)
                finally:
                    os.close(sub)
                if walked is None:  # a cache directory: skipped, remembered as such
                    clean = clean and self.cache.dir_tree(path, st) == ""
                    self.cache.remember_dir(path, st, "")
                    continue
                tree, sub_clean = walked
                clean = clean and sub_clean
                rows.append([name, "d", mode & 0o7777, st.st_mtime_ns, 0, tree])
            elif stat.S_ISLNK(mode):
                clean = self.cache.link_matches(path, st) and clean
                target = os.readlink(name, dir_fd=dfd)
                rows.append([name, "l", 0o777, st.st_mtime_ns, 0, target])
            else:
                self.skipped.append(f"{path}: not a regular file, directory or symlink")
                clean = False
        self.dirs += 1
        if clean and cached_tree and (self.trusted or bytes.fromhex(cached_tree) in self.have):
            tree = cached_tree
        else:
            clean = False
            rows.sort(key=lambda r: r[0])
            data = json.dumps({"v": fmt.VERSION, "entries": rows},
                              separators=(",", ":")).encode()
            tree = self._store(fmt.TREE, data, self.trees)
        if self.used is not None:
            self.used.add(tree)
        self.cache.remember_dir(rel, dst, tree)
        return tree, clean

    def packs_needed(self) -> set[bytes] | None:
        """The packs holding every blob this walk reached; None if one is in no pack."""
        blobs = self.repo.index().blobs
        out: set[bytes] = set()
        for h in self.used or ():
            loc = blobs.get(bytes.fromhex(h))
            if loc is None:
                return None
            out.add(loc.pack)
        return out


# A store that drops what a push uploaded this many times in a row is not racing one other
# writer: it is broken or overwhelmed, and the push stops instead of uploading forever.
HEAL_ROUNDS = 4


class _Push:
    """One push, in rounds: walk, packs, index, flush, [check], snapshot, flush, [check].

    Normally one round. The checks run on stores whose listing may drop objects
    (``consistent_list`` false: a Kaggle version made by another writer from an older file
    list replaces ours). When a pack the snapshot needs, or our index or snapshot object,
    is gone, the next round forgets those packs and walks again: files whose content went
    missing are read and uploaded again, everything else costs one ``lstat``.
    """

    def __init__(self, repo: Repository, counting: CountingStore, root: Path,
                 pool: ThreadPoolExecutor, uploader: ThreadPoolExecutor, threads: int,
                 progress: Callable[[int], None], status: Callable[[str], None]) -> None:
        self.repo, self.store, self.root = repo, counting, root
        self.pool, self.uploader, self.threads = pool, uploader, threads
        self.progress, self.status = progress, status
        self.excluder = Excluder.for_root(root)
        store_root = getattr(counting.inner, "root", None)  # never back up a repo into itself
        if isinstance(store_root, Path) and store_root.is_relative_to(root) and store_root != root:
            self.excluder.skip_paths = frozenset({str(store_root.relative_to(root))})
        self.cache = StatCache(repo.config.id, root, self.excluder.digest).load()
        self.check = not counting.capabilities.consistent_list
        self.mine: dict[bytes, list[fmt.BlobEntry]] = {}  # packs our index names
        self.written = self.adopted = self.bytes_new = 0

    def total_estimate(self) -> int | None:
        """The folder's size at its last push (from the stat cache): free, and close."""
        return sum(row[0] for row in self.cache.files.values()) or None

    def absorb(self, present: set[bytes]) -> bool:
        """Take in what the store holds now: adopt unindexed packs, forget indexed packs that
        are gone (keeping other copies of their blobs). True if some content is lost and
        must be uploaded again."""
        idx = self.repo.index()
        adopted = self.repo.adopt_orphans(present)
        self.mine.update(adopted)
        self.adopted += len(adopted)
        lost = idx.prefer_present(present)
        gone = idx.packs - present
        for pack in gone:
            self.mine.pop(pack, None)
        idx.drop_packs(gone)
        return bool(lost)

    def walk(self, trusted: bool) -> tuple[str, _Walker]:
        data = PackWriter(self.store, self.pool, self.uploader, max_inflight=2 * self.threads)
        trees = PackWriter(self.store, self.pool, self.uploader)
        walker = _Walker(self.repo, data, trees, self.cache, self.excluder, self.progress,
                         trusted=trusted, collect=self.check)
        try:
            dfd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise LocalIOError(f"cannot open {self.root}: {exc.strerror}") from exc
        try:
            tree, _ = walker.walk(dfd, "", os.fstat(dfd))  # type: ignore[misc]  # root: never None
        finally:
            os.close(dfd)
        written = data.finish()
        written.update(trees.finish())
        idx = self.repo.index()
        for pack, entries in written.items():
            idx.add_pack(pack, entries)
        self.mine.update(written)
        self.written += len(written)
        self.bytes_new += data.bytes_added + trees.bytes_added
        return tree, walker

    def missing(self, walker: _Walker, index_key: str | None, sid: str | None = None) -> bool:
        """Whether the store lost something this snapshot needs (one listing)."""
        keys = set(self.store.list())
        present = {p for k in keys if k.startswith("packs/")
                   and (p := fmt.pack_id_of_key(k)) is not None}
        needed = walker.packs_needed()
        ok = (needed is not None and needed <= present
              and (index_key is None or index_key in keys)
              and (sid is None or f"snapshots/{sid}" in keys))
        if not ok:
            self.absorb(present)
        return not ok

    def flush(self, what: str | None) -> None:
        # A batched store uploads everything at flush (Kaggle: the whole repository), which
        # can take long after the walk's progress has ended: say what is going on.
        if what and self.store.capabilities.batched:
            self.status(f"{what} {self.store.url}")
        self.store.flush()

    def run(self, lock: RepoLock, tags: tuple[str, ...]) -> tuple[str, str, _Walker]:
        repo = self.repo
        trusted = not self.absorb(repo.packs_present())
        snap: fmt.Snapshot | None = None
        sid: str | None = None
        for _ in range(HEAL_ROUNDS):
            tree, walker = self.walk(trusted)
            trusted = False  # from the second round on, something went missing
            index_key = repo.write_index(self.mine)
            # packs and index durable before the snapshot naming them
            self.flush("uploading new content to" if index_key else None)
            if self.check and self.missing(walker, index_key):
                continue
            old, snap = sid, _snapshot(self.root, tree, walker, tags, snap)
            sid = repo.write_snapshot(snap)
            if old is not None and old != sid:
                self.store.delete(f"snapshots/{old}")  # ours, naming content that is gone
            lock.release()
            self.flush("committing to")  # the commit point
            # RACE: on Kaggle a version made by another writer from a file list older than
            # ours can still replace ours after this check; see docs/snapshot-stores.md.
            if not (self.check and self.missing(walker, index_key, sid)):
                return sid, tree, walker
            lock.reacquire()
        raise PeerError(f"{self.store.url} lost objects this push uploaded {HEAL_ROUNDS} "
                        "times in a row", "another writer may be pushing in a loop; push "
                        "again when it is done, then run `tether snapshot verify`")


def _snapshot(root: Path, tree: str, walker: _Walker, tags: tuple[str, ...],
              previous: fmt.Snapshot | None) -> fmt.Snapshot:
    """The snapshot object; a round that found the same tree again keeps its time (and so
    its id: re-putting it is idempotent)."""
    if previous is not None and previous.tree == bytes.fromhex(tree):
        return previous
    return fmt.Snapshot(tree=bytes.fromhex(tree), time_ns=time.time_ns(),
                        hostname=socket.gethostname(), path=str(root), tags=tuple(tags),
                        files=walker.files, dirs=walker.dirs, bytes=walker.bytes,
                        venvs=tuple(walker.venvs))


def push(store: Store, path: Path, *, tags: tuple[str, ...] = (),
         progress: Callable[[int], None] | None = None, threads: int | None = None,
         on_total: Callable[[int], None] | None = None,
         on_status: Callable[[str], None] | None = None) -> PushResult:
    """Snapshot the folder ``path`` into ``store`` (created on first push).

    ``progress(n)``: n more bytes of the folder walked; ``on_total(n)``: the folder's size
    as of its last push (not called on a first push); ``on_status(text)``: what a long
    upload to a batched store is doing.
    """
    started = time.perf_counter()
    root = Path(os.path.abspath(path))
    if not root.is_dir():
        raise NotFoundError(f"{path} is not a directory", "push takes a folder")
    for t in tags:
        if not t or any(c.isspace() for c in t) or len(t) > 128:
            raise UsageError(f"invalid tag {t!r}", "tags are short words without spaces")
    counting = CountingStore(store)
    repo = Repository.open(counting, create=True)
    # Twice the cores: zstd and BLAKE3 release the GIL, and on a shared machine more runnable
    # threads keep the pipeline fed when some are descheduled (measured: 2 cores under load,
    # median push 1.4 s with 4 threads against 2.6 s with 2).
    threads = threads or 2 * max(1, os.cpu_count() or 1)
    with repo.lock("push") as lock, ThreadPoolExecutor(threads) as pool, \
            ThreadPoolExecutor(1) as uploader:
        job = _Push(repo, counting, root, pool, uploader, threads,
                    progress or (lambda n: None), on_status or (lambda s: None))
        total = job.total_estimate()
        if on_total is not None and total:
            on_total(total)
        sid, tree, walker = job.run(lock, tuple(tags))
    job.cache.save(repo.index().index_keys)
    return PushResult(snapshot_id=sid, tree=tree, files=walker.files, dirs=walker.dirs,
                      bytes=walker.bytes, files_read=walker.files_read,
                      bytes_read=walker.bytes_read, bytes_new=job.bytes_new,
                      bytes_uploaded=counting.bytes_put, packs=job.written,
                      adopted_packs=job.adopted, duration_s=time.perf_counter() - started,
                      skipped=walker.skipped)
