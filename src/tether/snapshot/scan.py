"""What a push skips (default excludes, CACHEDIR.TAG, .tetherignore) and the local stat cache.

The stat cache remembers, per pushed folder and repository, each file's (size, mtime_ns,
inode, ctime_ns) and content ids, so an unchanged file costs one ``lstat`` and no read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

from tether import paths

DEFAULT_EXCLUDE_NAMES = frozenset({"__pycache__", ".cache"})
DEFAULT_EXCLUDE_SUFFIXES = (".pyc",)
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
IGNORE_FILE = ".tetherignore"
CACHE_VERSION = 1
# RACE: a file changed within the same timestamp tick as our read looks unchanged next time.
# Entries whose mtime is this close to the scan start are not trusted (git's "racily clean").
RACY_NS = 2_000_000_000


@dataclass
class Excluder:
    """Decides per name whether the walk skips it; ``spec`` is the root .tetherignore."""

    spec: object | None = None

    @classmethod
    def for_root(cls, root: Path) -> Excluder:
        try:
            text = (root / IGNORE_FILE).read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return cls(None)
        import pathspec

        return cls(pathspec.PathSpec.from_lines("gitignore", text.splitlines()))

    def skip(self, name: str, rel: str, is_dir: bool) -> bool:
        if name in DEFAULT_EXCLUDE_NAMES or name.endswith(DEFAULT_EXCLUDE_SUFFIXES):
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
    """relpath -> [size, mtime_ns, ino, ctime_ns, [content ids hex]] for one (repo, root)."""

    def __init__(self, repo_id: str, root: Path) -> None:
        key = blake3.blake3(f"{repo_id}\0{root}".encode(errors="surrogateescape")).hexdigest()
        self.path = paths.cache_dir() / "snapshot" / "stat" / f"{key[:32]}.json"
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.started_ns = time.time_ns()

    def load(self) -> StatCache:
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            doc = json.loads(self.path.read_bytes())
            if isinstance(doc, dict) and doc.get("v") == CACHE_VERSION:
                self.old = doc.get("files") or {}
        return self

    def lookup(self, rel: str, st: os.stat_result) -> list[str] | None:
        row = self.old.get(rel)
        if (row is not None and row[0] == st.st_size and row[1] == st.st_mtime_ns
                and row[2] == st.st_ino and row[3] == st.st_ctime_ns):
            return row[4]
        return None

    def remember(self, rel: str, st: os.stat_result, ids: list[str]) -> None:
        if self.started_ns - st.st_mtime_ns > RACY_NS:
            self.new[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, ids]

    def save(self) -> None:
        data = json.dumps({"v": CACHE_VERSION, "files": self.new}, separators=(",", ":"))
        paths.atomic_write(self.path, data)


def kind_of(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return None
