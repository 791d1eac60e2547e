"""What a push skips (default excludes, CACHEDIR.TAG, .tetherignore) and the local stat cache.

The stat cache remembers, per pushed folder and repository, each file's (size, mtime_ns,
inode, ctime_ns) and content ids, so an unchanged file costs one ``lstat`` and no read.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

from tether import paths

DEFAULT_EXCLUDE_NAMES = frozenset({"__pycache__", ".cache"})
DEFAULT_EXCLUDE_SUFFIXES = (".pyc",)
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
IGNORE_FILE = ".tetherignore"
CACHE_VERSION = 2
# RACE: a file changed within the same timestamp tick as our read looks unchanged next time.
# Entries whose mtime is this close to the scan start are not trusted (git's "racily clean").
RACY_NS = 2_000_000_000


@dataclass
class Excluder:
    """Decides per name whether the walk skips it; ``spec`` is the root .tetherignore."""

    spec: object | None = None

    digest: str = ""

    @classmethod
    def for_root(cls, root: Path) -> Excluder:
        try:
            text = (root / IGNORE_FILE).read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return cls(None)
        import pathspec

        return cls(pathspec.PathSpec.from_lines("gitignore", text.splitlines()),
                   blake3.blake3(text.encode()).hexdigest())

    skip_paths: frozenset[str] = frozenset()   # exact relpaths, e.g. a store inside the folder

    def skip(self, name: str, rel: str, is_dir: bool) -> bool:
        if name in DEFAULT_EXCLUDE_NAMES or name.endswith(DEFAULT_EXCLUDE_SUFFIXES):
            return True
        if rel in self.skip_paths:
            return True
        if self.spec is not None:
            return self.spec.match_file(rel + "/" if is_dir else rel)  # type: ignore[attr-defined]
        return False


def is_cachedir(dir_fd: int) -> bool:
    """A directory holding a CACHEDIR.TAG with the standard signature (bford.info/cachedir)."""
    try:
        fd = os.open("CACHEDIR.TAG", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    finally:
        os.close(fd)


class StatCache:
    """What the last push of one folder to one repository saw, to skip work that is unchanged.

    ``files``: relpath -> [size, mtime_ns, ino, ctime_ns, [content ids]]; ``links``: relpath ->
    [mtime_ns, ino, ctime_ns]; ``dirs``: relpath -> [mtime_ns, ino, ctime_ns, tree id] (a
    directory whose own stat and every child match needs no new tree: ids are reused).
    ``index``: the index objects that held every cached id; while they all still exist the ids
    need no re-check (only prune removes index objects). ``ignore``: the .tetherignore hash;
    when it changes, the directory entries are stale (the same stats may list other names).
    """

    def __init__(self, repo_id: str, root: Path, ignore_hash: str = "") -> None:
        key = blake3.blake3(f"{repo_id}\0{root}".encode(errors="surrogateescape")).hexdigest()
        self.path = paths.cache_dir() / "snapshot" / "stat" / f"{key[:32]}.json"
        self.ignore_hash = ignore_hash
        self.files: dict[str, list] = {}
        self.links: dict[str, list] = {}
        self.dirs: dict[str, list] = {}
        self.index: list[str] = []
        self.new_files: dict[str, list] = {}
        self.new_links: dict[str, list] = {}
        self.new_dirs: dict[str, list] = {}
        self.started_ns = time.time_ns()

    def load(self) -> StatCache:
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            doc = json.loads(self.path.read_bytes())
            if isinstance(doc, dict) and doc.get("v") == CACHE_VERSION:
                self.files = doc.get("files") or {}
                self.index = doc.get("index") or []
                if doc.get("ignore") == self.ignore_hash:
                    self.links = doc.get("links") or {}
                    self.dirs = doc.get("dirs") or {}
        return self

    def trusted(self, index_keys: set[str]) -> bool:
        """Every cached id is still indexed (none of the index objects went away)."""
        return bool(self.index) and index_keys.issuperset(self.index)

    def lookup(self, rel: str, st: os.stat_result) -> list[str] | None:
        row = self.files.get(rel)
        if (row is not None and row[0] == st.st_size and row[1] == st.st_mtime_ns
                and row[2] == st.st_ino and row[3] == st.st_ctime_ns):
            return row[4]
        return None

    def remember(self, rel: str, st: os.stat_result, ids: list[str]) -> bool:
        """Cache a file; False if it is too fresh to trust next time (racily clean)."""
        if self.started_ns - st.st_mtime_ns > RACY_NS:
            self.new_files[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, ids]
            return True
        return False

    def link_matches(self, rel: str, st: os.stat_result) -> bool:
        row = self.links.get(rel)
        ok = row == [st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        if self.started_ns - st.st_mtime_ns > RACY_NS:
            self.new_links[rel] = [st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        return ok

    def dir_tree(self, rel: str, st: os.stat_result) -> str | None:
        """The cached tree id of the directory if its own stat is unchanged."""
        row = self.dirs.get(rel)
        if row is not None and row[:3] == [st.st_mtime_ns, st.st_ino, st.st_ctime_ns]:
            return row[3]
        return None

    def remember_dir(self, rel: str, st: os.stat_result, tree: str) -> None:
        if self.started_ns - st.st_mtime_ns > RACY_NS:
            self.new_dirs[rel] = [st.st_mtime_ns, st.st_ino, st.st_ctime_ns, tree]

    def save(self, index_keys: set[str]) -> None:
        if (self.new_files == self.files and self.new_links == self.links
                and self.new_dirs == self.dirs and sorted(index_keys) == self.index):
            return  # the no-change push: nothing to write
        data = json.dumps({"v": CACHE_VERSION, "ignore": self.ignore_hash,
                           "index": sorted(index_keys), "files": self.new_files,
                           "links": self.new_links, "dirs": self.new_dirs},
                          separators=(",", ":"))
        paths.atomic_write(self.path, data)
