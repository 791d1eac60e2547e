"""Scanning a sync root into a tree of :class:`~tether.sync.reconcile.Entry` values.

Speed comes from two caches kept between scans of one :class:`Scanner`:

- a stat cache: path -> (mode, size, mtime_ns, ctime_ns, inode, entry); a file whose stat is
  unchanged is not read again (ctime catches ``chmod``, which leaves mtime alone);
- a directory cache: a directory whose mtime is unchanged has the same names, so its listing
  and ignore decisions are reused and only its files are ``lstat``-ed.

RACE: a file rewritten within one timestamp tick with the same size keeps a stale digest
until its next change (the same window git's index has); ns timestamps make it small.

A file that changes while it is hashed (stat before != fstat after) is reported in
``unstable`` and not cached: the engine leaves it alone this cycle and reads it again next.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Sequence
from dataclasses import dataclass, field

from tether.sync.ignore import IGNORE_FILES, Rules
from tether.sync.reconcile import DIR, Entry, Kind

READ_SIZE = 1 << 20
CACHE_MAGIC = b"TSC1"  # stat cache file format, version 1
_EXEC = st.S_IXUSR


@dataclass
class ScanResult:
    tree: dict[str, Entry]
    unstable: set[str] = field(default_factory=set)
    hashed_bytes: int = 0
    root_missing: bool = False
    changed: set[str] | None = None  # partial scans: the paths whose entry changed


def hash_file(path: str, size_hint: int = 0) -> tuple[bytes, os.stat_result]:
    """BLAKE3 of a file read in 1 MiB pieces, and its fstat after the read."""
    import blake3

    if size_hint < READ_SIZE:  # most files: one read, no buffers
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            want = size_hint + 1  # a bigger buffer costs a big allocation per file
            data = os.read(fd, want)
            if len(data) < want:
                return blake3.blake3(data).digest(), os.fstat(fd)
            hasher = blake3.blake3(data)
            while more := os.read(fd, READ_SIZE):  # it grew while we read it
                hasher.update(more)
            return hasher.digest(), os.fstat(fd)
        finally:
            os.close(fd)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if size_hint > 8 * READ_SIZE \
        else blake3.blake3()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as fh:
            buf = bytearray(READ_SIZE)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                hasher.update(view[:n])
        return hasher.digest(), os.fstat(fd)
    finally:
        os.close(fd)


def _diff(old: dict[str, Entry], new: dict[str, Entry], rels: set[str]) -> set[str]:
    """Paths at or below ``rels`` whose entry differs between ``old`` and ``new``."""
    prefixes = tuple(r + "/" for r in rels)
    affected = set(rels)
    if prefixes:
        affected.update(p for p in old if p.startswith(prefixes))
        affected.update(p for p in new if p.startswith(prefixes))
    return {p for p in affected if old.get(p) != new.get(p)}


class Scanner:
    """Scans one root again and again, reusing what did not change."""

    def __init__(self, root: str | os.PathLike, excludes: Sequence[str] = ()) -> None:
        self.root = os.fspath(root).rstrip("/") or "/"
        self.rules = Rules.root(list(excludes))
        # rel -> (mode, size, mtime_ns, ctime_ns, ino, entry)
        self.cache: dict[str, tuple] = {}
        self.edits = 0  # bumped on every change to `cache` (saving an unchanged one is waste)
        # rel dir -> (mtime_ns, parent rules, ignore stats, [(name, is_dir)], own rules)
        self.dirs: dict[str, tuple] = {}
        self.last: ScanResult | None = None  # the latest result, for partial rescans

    def full(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def scan(self) -> ScanResult:
        try:
            top = os.lstat(self.root)
        except FileNotFoundError:
            return ScanResult({}, root_missing=True)
        if not st.S_ISDIR(top.st_mode):
            return ScanResult({}, root_missing=True)
        result = ScanResult({})
        seen_dirs: set[str] = set()
        self._walk("", top.st_mtime_ns, self.rules, result, seen_dirs)
        for stale in set(self.dirs) - seen_dirs:
            del self.dirs[stale]
        for stale in set(self.cache) - result.tree.keys():
            del self.cache[stale]
            self.edits += 1
        self.last = result
        return result

    def scan_paths(self, rels: set[str]) -> ScanResult:
        """Rescan only ``rels`` (from watch events) on top of the last result.

        Falls back to a full scan when there is no earlier result or a path's parent is not
        a directory the last scan knew (its ignore rules are unknown then).
        """
        last = self.last
        if last is None or last.root_missing or "" in rels:
            return self.scan()
        result = ScanResult(dict(last.tree))
        tree = result.tree
        seen: set[str] = set()
        for rel in sorted(rels):
            if any(rel.startswith(done + "/") for done in seen):
                continue  # inside a subtree already rescanned
            parent = rel.rpartition("/")[0]
            known = self.dirs.get(parent)
            if known is None or (parent and tree.get(parent) is not DIR):
                return self.scan()
            self._drop(tree, rel)
            name = rel.rpartition("/")[2]
            try:
                s = os.lstat(self.full(rel))
            except (FileNotFoundError, NotADirectoryError):
                continue
            is_dir = st.S_ISDIR(s.st_mode)
            if known[4].excluded(rel, is_dir, name):
                continue
            if is_dir:
                tree[rel] = DIR
                self._walk(rel, s.st_mtime_ns, known[4], result, seen)
                seen.add(rel)
                continue
            hit = self.cache.get(rel)
            if hit is not None and hit[0] == (s.st_mode, s.st_size, s.st_mtime_ns,
                                              s.st_ctime_ns, s.st_ino):
                tree[rel] = hit[1]
            else:
                entry = self._entry(self.full(rel), rel, s, result)
                if entry is not None:
                    tree[rel] = entry
        result.changed = _diff(last.tree, tree, rels)
        self.last = result
        return result

    def _drop(self, tree: dict[str, Entry], rel: str) -> None:
        """Forget ``rel`` and everything below it (it is about to be looked at again)."""
        tree.pop(rel, None)
        if self.cache.pop(rel, None) is not None:
            self.edits += 1
        prefix = rel + "/"
        for p in [p for p in tree if p.startswith(prefix)]:
            del tree[p]

    def _listing(self, rel: str, mtime_ns: int, rules: Rules) -> tuple[list, Rules]:
        """Names to visit in ``rel`` and the rules inside it (cached while mtime holds)."""
        path = self.full(rel)
        ignore_stats = []
        for name in IGNORE_FILES:
            try:
                s = os.stat(os.path.join(path, name))
                ignore_stats.append((s.st_mtime_ns, s.st_size, s.st_ino))
            except OSError:
                ignore_stats.append(None)
        cached = self.dirs.get(rel)
        if (cached is not None and cached[0] == mtime_ns and cached[1] is rules
                and cached[2] == ignore_stats):
            return cached[3], cached[4]
        texts = []
        for name, s in zip(IGNORE_FILES, ignore_stats):
            if s is not None:
                try:
                    with open(os.path.join(path, name), encoding="utf-8",
                              errors="replace") as fh:
                        texts.append(fh.read())
                except OSError:
                    pass
        own = rules.child(rel, texts)
        names = []
        with os.scandir(path) as it:
            for de in it:
                is_dir = de.is_dir(follow_symlinks=False)
                child = f"{rel}/{de.name}" if rel else de.name
                if not own.excluded(child, is_dir, de.name):
                    names.append((de.name, is_dir))
        self.dirs[rel] = (mtime_ns, rules, ignore_stats, names, own)
        return names, own

    def _walk(self, rel: str, mtime_ns: int, rules: Rules, out: ScanResult,
              seen_dirs: set[str]) -> None:
        seen_dirs.add(rel)
        try:
            names, own = self._listing(rel, mtime_ns, rules)
        except (FileNotFoundError, NotADirectoryError):
            return  # RACE: removed while we walked; the next scan sees it gone
        except PermissionError:
            # Unreadable: its contents are unknown, not gone. Marking the directory
            # unstable makes the reconciler leave everything below it alone.
            out.unstable.add(rel)
            return
        tree, cache, stat = out.tree, self.cache, os.stat
        base = self.full(rel) + "/" if rel else self.root.rstrip("/") + "/"
        prefix = rel + "/" if rel else ""
        subdirs = []
        try:
            # stat relative to an open directory: the kernel resolves one name, not the path
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError:
            out.unstable.add(rel)
            return
        try:
            for name, _ in names:
                child = prefix + name
                try:
                    s = stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                mode = s.st_mode
                if st.S_ISDIR(mode):
                    tree[child] = DIR
                    subdirs.append((child, s.st_mtime_ns))
                    continue
                hit = cache.get(child)
                if hit is not None and hit[0] == (mode, s.st_size, s.st_mtime_ns,
                                                  s.st_ctime_ns, s.st_ino):
                    tree[child] = hit[1]
                    continue
                entry = self._entry(base + name, child, s, out)
                if entry is not None:
                    tree[child] = entry
        finally:
            os.close(dfd)
        for child, m in subdirs:
            self._walk(child, m, own, out, seen_dirs)

    def _entry(self, full: str, rel: str, s: os.stat_result, out: ScanResult) -> Entry | None:
        mode = s.st_mode
        key = (mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
        if st.S_ISLNK(mode):
            try:
                entry = Entry(Kind.SYMLINK, target=os.readlink(full))
            except OSError:
                return None
        elif st.S_ISREG(mode):
            try:
                digest, after = hash_file(full, s.st_size)
            except FileNotFoundError:
                return None
            except PermissionError:
                out.unstable.add(rel)  # unreadable now: leave it alone, do not delete it
                return self.cache.get(rel, (None, None))[1]
            out.hashed_bytes += s.st_size
            entry = Entry(Kind.FILE, digest, after.st_size, bool(after.st_mode & _EXEC))
            if (after.st_size, after.st_mtime_ns) != (s.st_size, s.st_mtime_ns):
                out.unstable.add(rel)  # written while we read it: try again next cycle
                if self.cache.pop(rel, None) is not None:
                    self.edits += 1
                return entry
        else:
            return None  # fifos, sockets, devices are not synced
        self.cache[rel] = (key, entry)
        self.edits += 1
        return entry

    # -- a stat cache that outlives the process ------------------------------------------
    def load_cache(self, path: str) -> bool:
        """Load a cache written by :meth:`save_cache` for this root; False if unusable.

        marshal, not pickle: loading it can fail but never run code. The file lives in
        tether's own 0600 state or cache directory.
        """
        import marshal

        try:
            with open(path, "rb") as fh:
                if fh.read(4) != CACHE_MAGIC:
                    return False
                root, items = marshal.loads(fh.read())
        except (OSError, EOFError, ValueError, TypeError):
            return False
        if root != self.root or not isinstance(items, dict):
            return False
        try:
            self.cache = {rel: (tuple(key), Entry(Kind(e[0]), e[1], e[2], e[3], e[4]))
                          for rel, (key, e) in items.items()}
        except (TypeError, ValueError, IndexError):
            self.cache = {}
            return False
        return True

    def save_cache(self, path: str) -> None:
        import marshal

        items = {rel: (key, (int(e.kind), e.digest, e.size, e.executable, e.target))
                 for rel, (key, e) in self.cache.items()}
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(CACHE_MAGIC)
            fh.write(marshal.dumps((self.root, items)))
        os.replace(tmp, path)

    def remember(self, rel: str, entry: Entry) -> None:
        """Record a file this side just wrote, so the next scan does not read it again."""
        if entry.kind is Kind.DIR:
            return
        try:
            s = os.lstat(self.full(rel))
        except OSError:
            return
        self.cache[rel] = ((s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino),
                           entry)
        self.edits += 1

    def remember_stat(self, rel: str, s: os.stat_result, entry: Entry) -> None:
        """:meth:`remember` with a stat the caller already has (an fstat of the new file)."""
        self.cache[rel] = ((s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino),
                           entry)
        self.edits += 1

    def forget(self, rel: str) -> None:
        if self.cache.pop(rel, None) is not None:
            self.edits += 1
