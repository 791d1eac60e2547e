"""Helpers for the snapshot tests: a tree with every kind of entry, a tree comparer, and a
store wrapper that "crashes" after N puts (crash injection)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tether.snapshot.stores.base import Store

PAST_NS = 1_600_000_000_123_456_789   # well before any racy-clean window
BIG = 9 * 1024 * 1024 + 12345          # above the 8 MiB chunking threshold


def make_tree(root: Path, *, big: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("hello\n" * 100)
    (root / "empty").write_bytes(b"")
    (root / "unicodé ☃.txt").write_text("snow")
    (root / os.fsdecode(b"raw-\xff\xfe.bin")).write_bytes(b"not utf-8 name")
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    (root / "ro.txt").write_text("read only")
    os.chmod(root / "ro.txt", 0o444)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "x.txt").write_text("deep")
    (root / "sub" / "same-as-a.txt").write_text("hello\n" * 100)  # dedup within a push
    (root / "empty_dir").mkdir()
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "secret").write_text("s")
    os.symlink("a.txt", root / "rel_link")
    os.symlink("/usr/bin/python3", root / "abs_link")       # absolute, as in venvs
    os.symlink("/nonexistent/target", root / "dangling")
    os.symlink("sub", root / "dir_link")
    if big:
        chunk = os.urandom(1 << 20)
        (root / "big.bin").write_bytes(b"".join(chunk[i:] + chunk[:i] for i in range(9))
                                       + os.urandom(BIG - 9 * (1 << 20)))
    set_times(root)
    return root


def set_times(root: Path, ns: int = PAST_NS) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns), follow_symlinks=False)
        os.utime(dirpath, ns=(ns, ns))


def describe(root: Path) -> dict[str, tuple]:
    """path -> (kind, mode, mtime_ns, content or link target), for equality checks."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(full, "rb") as fh:
                    out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, fh.read())
    return out


class CrashAfter:
    """A Store wrapper that raises instead of doing the first put ``when(key, data, n)``
    accepts (``n``: puts done so far, locks and config not counted), like a push killed
    at that moment."""

    class Crash(Exception):
        pass

    def __init__(self, inner: Store, when) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.when = when
        self.done = 0
        self.put_keys: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        if not key.startswith(("locks/", "config")):
            if self.when(key, data, self.done):
                raise CrashAfter.Crash(f"crash before put {key}")
            self.done += 1
        self.inner.put(key, data)
        self.put_keys.append(key)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def forge_snapshot(store: Store, build) -> str:
    """Write a snapshot whose trees ``build(blob)`` returns as raw bytes, bypassing every
    check the writer does: how a hostile or corrupt repository looks to a reader.

    ``build`` gets ``blob(type, data) -> hex id`` to store content and subtrees.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tether.snapshot import format as fmt
    from tether.snapshot.repo import PackWriter, Repository

    repo = Repository.open(store, create=True)
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as up:
        w = PackWriter(store, pool, up)
        seen: set[bytes] = set()

        def blob(typ: int, data: bytes) -> str:
            bid = fmt.blob_id(data)
            if bid not in seen:
                seen.add(bid)
                w.add(typ, bid, data)
            return bid.hex()

        root = blob(fmt.TREE, build(blob))
        repo.write_index(w.finish())
    return repo.write_snapshot(fmt.Snapshot(tree=bytes.fromhex(root), time_ns=time.time_ns(),
                                            hostname="forger", path="/nowhere"))


def raw_tree(*rows) -> bytes:
    import json

    return json.dumps({"v": 1, "entries": [list(r) for r in rows]}).encode()
