"""``file:///path``: a repository in a local folder (the embedded default store).

Each key is a file under the root. Puts write a hidden temp file in the target directory and
rename it into place, so a reader (or a push killed mid-write) never leaves a partial object
under a real key; hidden names (leading ".") are never keys (``check_key``), so ``list``
skips leftover temp files. ``flush`` fsyncs what was written since the last flush, so the
repository's ordering (packs durable before the snapshot that names them) survives power loss:
each put fsyncs its file before the rename (in the uploading thread, overlapping other work)
and ``flush`` fsyncs the directories that got new names.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tether.errors import LocalIOError, NotFoundError, UsageError
from tether.snapshot.stores.base import StoreCapabilities, check_key, check_prefix

CAPABILITIES = StoreCapabilities(atomic_put=True, consistent_list=True, batched=False,
                                 max_object_size=None)


def open(url: str, *, durable: bool = True) -> LocalStore:  # noqa: A001
    """Open ``file:///abs/path``; the folder is created by the first put, not by opening."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise UsageError(f"not a local store URL: {url!r}", "use file:///absolute/path")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise UsageError(f"store path must be absolute: {url!r}", "use file:///absolute/path")
    return LocalStore(path, durable=durable)


class LocalStore:
    capabilities = CAPABILITIES

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.url = "file://" + str(root)
        self.durable = durable
        self._dirs: set[Path] = set()
        self._dirty: set[Path] = set()  # directories with renames not yet fsynced
        self._lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _mkdir(self, path: Path) -> None:
        if path in self._dirs:
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _io("create", path, exc) from exc
        with self._lock:
            self._dirs.add(path)

    def _commit(self, tmp: Path, final: Path) -> None:
        os.replace(tmp, final)
        if self.durable:
            with self._lock:
                self._dirty.add(final.parent)

    def _tmp(self, final: Path) -> Path:
        return final.with_name(f".tmp-{secrets.token_hex(6)}-{final.name}")

    # -- Store -----------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        final = self._path(key)
        self._mkdir(final.parent)
        tmp = self._tmp(final)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.durable:
                    os.fsync(fd)  # here, in the caller's (upload) thread, not all at flush
            finally:
                os.close(fd)
            self._commit(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _io("write", final, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        final = self._path(key)
        self._mkdir(final.parent)
        tmp = self._tmp(final)
        try:
            shutil.copyfile(path, tmp)
            if self.durable:
                _fsync(tmp, os.O_RDONLY)
            self._commit(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _io("write", final, exc) from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise NotFoundError(f"{key} not found in {self.url}") from exc
        except OSError as exc:
            raise _io("read", path, exc) from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                if offset < 0:
                    size = os.fstat(fh.fileno()).st_size
                    offset = max(0, size + offset)
                fh.seek(offset)
                return fh.read(max(0, length))
        except FileNotFoundError as exc:
            raise NotFoundError(f"{key} not found in {self.url}") from exc
        except OSError as exc:
            raise _io("read", path, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_key.split("/")) if base_key else self.root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            head = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if prefix and not (head.startswith(prefix) or prefix.startswith(head)):
                dirnames[:] = []
                continue
            keys.extend(head + f for f in filenames
                        if not f.startswith(".") and (head + f).startswith(prefix))
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _io("delete", path, exc) from exc

    def flush(self) -> None:
        with self._lock:
            dirs, self._dirty = self._dirty, set()
        try:
            for path in dirs:
                with contextlib.suppress(FileNotFoundError):
                    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise _io("sync", self.root, exc) from exc

    def close(self) -> None:
        return None


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io(action: str, path: Path, exc: OSError) -> LocalIOError:
    hint = "free some disk space" if exc.errno == 28 else f"check permissions on {path.parent}"
    return LocalIOError(f"could not {action} {path}: {exc.strerror or exc}", hint)
