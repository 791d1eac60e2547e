"""File access inside a sandbox's writable layer that never follows a symlink.

The layer is written by untrusted code: it can plant ``workspace/x -> /root/.ssh``. Every path
below is resolved one component at a time with ``O_NOFOLLOW`` relative to an open directory
descriptor, so neither a planted link nor a link swapped in mid-walk (the sandbox may run
concurrently) can make a host-side read or write leave the layer.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tether.errors import LocalIOError, NotFoundError, UsageError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the layer must not hang the host-side reader.
_FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def split_relative(rel: str) -> list[str]:
    """'a/b/../c' -> ['a', 'c'] without ever climbing above the root."""
    parts: list[str] = []
    for part in PurePosixPath(rel).parts:
        if part in ("/", "."):
            continue
        if part == "..":
            if not parts:
                raise UsageError(f"path {rel!r} leaves the sandbox's writable layer")
            parts.pop()
        else:
            parts.append(part)
    return parts


def _is_link(dir_fd: int | None, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _err(exc: OSError, where: str, dir_fd: int | None = None, name: str = "") -> Exception:
    # O_NOFOLLOW on a link fails with ELOOP, O_DIRECTORY|O_NOFOLLOW with ENOTDIR
    if exc.errno == 40 or (name and _is_link(dir_fd, name)):
        return UsageError(f"{where} is a symlink; tether does not follow links out of a sandbox")
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{where} does not exist in the sandbox")
    if exc.errno == 20:  # ENOTDIR
        return UsageError(f"{where}: a path component is not a directory")
    return LocalIOError(f"{where}: {exc.strerror}")


def open_dir(root: Path, parts: list[str], *, create: bool = False) -> int:
    """An O_DIRECTORY fd for root/parts, walking with O_NOFOLLOW; the caller closes it."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            where = "/".join(parts[: i + 1])
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _err(exc, where, fd, part) from exc
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _err(exc, where, fd, part) from exc
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(root: Path, rel: str) -> bytes:
    parts = split_relative(rel)
    if not parts:
        raise UsageError("name a file, not the top of the layer")
    dfd = open_dir(root, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], _FILE_READ, dir_fd=dfd)
        except OSError as exc:
            raise _err(exc, rel, dfd, parts[-1]) from exc
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UsageError(f"{rel} is not a regular file")
        return fh.read()


def write_file(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp name and rename, so a reader inside sees the old or the new file."""
    parts = split_relative(rel)
    if not parts:
        raise UsageError("name a file, not the top of the layer")
    dfd = open_dir(root, parts[:-1], create=True)
    tmp = f".{parts[-1]}.tether-tmp"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode, dir_fd=dfd)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            raise _err(exc, rel, dfd, parts[-1]) from exc
    finally:
        os.close(dfd)


def kind_of(root: Path, rel: str) -> str:
    """'file', 'dir' or 'missing' (a symlink is refused)."""
    parts = split_relative(rel)
    if not parts:
        return "dir"
    try:
        dfd = open_dir(root, parts[:-1])
    except NotFoundError:
        return "missing"
    try:
        st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    finally:
        os.close(dfd)
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{rel} is a symlink; tether does not follow links out of a sandbox")
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def walk_files(root: Path, rel: str) -> Iterator[tuple[str, bytes]]:
    """(relative path, content) of every regular file under root/rel; links are skipped."""
    parts = split_relative(rel)
    top = open_dir(root, parts)
    try:
        for dirpath, _dirs, files, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in files:
                try:
                    fd = os.open(name, _FILE_READ, dir_fd=dfd)
                except OSError:  # a symlink (ELOOP) or a file gone meanwhile: not copied
                    continue
                with os.fdopen(fd, "rb") as fh:
                    if stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                        yield os.path.normpath(os.path.join(dirpath, name)), fh.read()
    finally:
        os.close(top)
