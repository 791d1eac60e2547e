"""Reading and writing one side's files for sync (both the engine and the agent use this).

:class:`Receiver` applies incoming BEGIN/DATA/RANGE/END/DELETE frames to a root. Its rules:

- Every write lands under a temporary name (``.tether-sync-XXXX`` in the target's directory,
  ignored by scans) and is renamed over the target only when complete and its BLAKE3 matches
  the entry it was announced with: a half-written file is never visible under its name.
- A change applies only if the target still holds what the reconciler saw (``expect``); a
  file edited since the scan fails this check and is retried next cycle rather than lost.
  RACE: an edit between that check and the rename can still be replaced; the window is one
  rename, and the editor's own save (temp + rename) usually wins it.
- Paths are relative, normalised and may not climb out of the root.

:func:`file_frames` streams a file as DATA frames, or, given the receiver's chunk signatures,
as RANGE frames for chunks the receiver already has and DATA for the rest (FastCDC chunks,
BLAKE3-identified): a large file changed in part sends only the changed parts.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat as st
from collections.abc import Iterator

from tether.sync import protocol as P
from tether.sync.ignore import TEMP_PREFIX
from tether.sync.reconcile import DIR, Entry, Kind
from tether.sync.scan import READ_SIZE, Scanner

_ZERO_BLOCK = bytes(READ_SIZE)
DELTA_MIN = 1 << 20  # smaller files are sent whole: signatures would cost a round trip more
CDC = {"min_size": 16 << 10, "avg_size": 64 << 10, "max_size": 256 << 10}


def safe_rel(path: str) -> str | None:
    """``path`` if it is a clean relative path inside the root, else None."""
    if not path or path.startswith("/") or "\0" in path:
        return None
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return path


def chunk_sigs(path: str) -> list[P.Chunk]:
    """FastCDC chunks of a file as (offset, length, BLAKE3[:16]), streamed."""
    import blake3
    import pyfastcdc

    cdc = pyfastcdc.FastCDC(**CDC)
    with open(path, "rb") as fh:
        return [(c.offset, c.length, blake3.blake3(c.data).digest(16))
                for c in cdc.cut_stream(fh)]


def file_frames(path: str, sigs: list[P.Chunk] | None,
                size_hint: int = READ_SIZE) -> Iterator[bytes | bytearray]:
    """Encoded DATA/RANGE frames carrying the file at ``path`` (``size_hint``: its size
    as scanned, so a small file costs one read of the right size)."""
    if not sigs:
        yield from _whole_file_frames(path, size_hint)
        return
    import blake3
    import pyfastcdc

    have = {d: (off, n) for off, n, d in sigs}
    pending = bytearray()
    run: list[int] | None = None  # [offset, length] of a growing RANGE
    with open(path, "rb") as fh:
        for c in pyfastcdc.FastCDC(**CDC).cut_stream(fh):
            hit = have.get(blake3.blake3(c.data).digest(16))
            if hit is not None and hit[1] == c.length:
                if pending:
                    yield P.encode(P.T.DATA, pending)
                    pending = bytearray()
                if run is not None and run[0] + run[1] == hit[0]:
                    run[1] += hit[1]
                    continue
                if run is not None:
                    yield P.encode_range(*run)
                run = [hit[0], hit[1]]
                continue
            if run is not None:
                yield P.encode_range(*run)
                run = None
            pending += c.data
            if len(pending) >= P.DATA_SIZE:
                yield P.encode(P.T.DATA, pending)
                pending = bytearray()
    if run is not None:
        yield P.encode_range(*run)
    if pending:
        yield P.encode(P.T.DATA, pending)


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _whole_file_frames(path: str, size_hint: int) -> Iterator[bytes | bytearray]:
    # Each DATA frame is read straight into its own buffer after a 5-byte header: no copy
    # of the content in Python. A read of the expected size + 1 that comes back short is
    # the end of the file (what hash_file assumes too), so a small file costs one read; a
    # file that grew is read on, and the receiver's digest check catches any change.
    fd = os.open(path, _READ_FLAGS)
    try:
        left = max(size_hint, 0)
        while True:
            want = min(left + 1, READ_SIZE)
            frame = bytearray(P.HEAD_SIZE + want)
            n = os.readv(fd, [memoryview(frame)[P.HEAD_SIZE:]])
            if n == 0:
                return
            # count() scans the whole block: test the first and last bytes before it
            if n == READ_SIZE and frame[P.HEAD_SIZE] == 0 and frame[-1] == 0 \
                    and frame.count(0, P.HEAD_SIZE) == READ_SIZE:
                yield P.encode_zeros(n)  # sparse images, preallocated files
            else:
                if n < want:
                    del frame[P.HEAD_SIZE + n:]
                P.put_head(frame, P.T.DATA, n)
                yield frame
            if n < want:
                return
            left -= n
            if left < 0:  # it grew since the scan: read on in whole frames
                left = READ_SIZE
    finally:
        os.close(fd)


def current_entry(scanner: Scanner, rel: str) -> Entry | None | bool:
    """What ``rel`` holds now as far as the last scan knows; False: changed since that scan."""
    full = scanner.full(rel)
    try:
        s = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _known(scanner, rel, s, lambda: os.readlink(full))


def _known(scanner: Scanner, rel: str, s: os.stat_result, readlink) -> Entry | None | bool:
    """The entry a fresh ``lstat`` result stands for, judged against the stat cache."""
    mode = s.st_mode
    if st.S_ISDIR(mode):
        return DIR
    if st.S_ISLNK(mode):
        return Entry(Kind.SYMLINK, target=readlink())
    hit = scanner.cache.get(rel)
    if hit is None or hit[0] != (mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino):
        return False
    return hit[1]


# Directories are opened one component at a time with O_NOFOLLOW and every write, rename
# and stat below them is relative to that descriptor: no symlink is ever followed on the way
# down (a symlinked or replaced parent fails the open), and the kernel resolves one name per
# call instead of the whole path.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_OLD_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
MAX_DIR_FDS = 256  # open directory descriptors kept per batch (well under RLIMIT_NOFILE)


class _NotReal(Exception):
    """A parent of the target is a symlink or a file."""


class Receiver:
    """Applies one batch of incoming changes to ``scanner.root``."""

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.done: list[tuple[str, Entry | None]] = []  # applied: path -> what it holds now
        self.failed: list[list[str]] = []
        self._path: str | None = None
        self._entry: Entry | None = None
        self._expect: Entry | None = None
        self._tmp: str | None = None  # temp name in the directory `_pfd`
        self._pfd = -1  # the target's directory
        self._name = ""  # the target's name in it
        self._out = -1  # the temp file being written
        self._old = -1  # the target's current content (RANGE frames copy from it)
        self._hash = None
        self._skip = False
        self._holes = False
        self._dfds: dict[str, int] = {}  # rel dir -> descriptor, for this batch
        # Temp names: one random stem per receiver and a counter. O_EXCL makes a clash (a
        # leftover from a crashed run) an error that picks a new stem, never an overwrite.
        self._stem = secrets.token_hex(4)
        self._seq = 0
        self.bytes_written = 0

    def _fail(self, path: str, reason: str) -> None:
        self.failed.append([path, reason])

    def _dir(self, rel: str, create: bool) -> int | None:
        """Descriptor of directory ``rel`` ("" = the root), None when it does not exist
        (``create``: made as real directories). Raises _NotReal for a symlink or file."""
        fd = self._dfds.get(rel)
        if fd is not None:
            return fd
        if not rel:
            fd = os.open(self.scanner.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        else:
            head, _, name = rel.rpartition("/")
            pfd = self._dir(head, create)
            if pfd is None:
                return None
            try:
                fd = self._open_dir(name, pfd)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(name, 0o777, dir_fd=pfd)
                except FileExistsError:
                    pass  # made meanwhile: the open below checks what it is
                fd = self._open_dir(name, pfd)
        self._dfds[rel] = fd
        return fd

    @staticmethod
    def _open_dir(name: str, pfd: int) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except OSError as exc:
            if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                raise _NotReal(name) from exc
            raise

    def _close_dirs(self) -> None:
        for fd in self._dfds.values():
            os.close(fd)
        self._dfds.clear()

    def _now(self, pfd: int | None, name: str, rel: str) -> Entry | None | bool:
        """What ``name`` in directory ``pfd`` holds now (see :func:`current_entry`)."""
        if pfd is None:
            return None
        try:
            s = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _known(self.scanner, rel, s, lambda: os.readlink(name, dir_fd=pfd))

    def _locate(self, path: str, expect: Entry | None,
                check: bool = True) -> tuple[str, int | None, str] | None:
        """(rel, parent descriptor, name) when ``path`` is safe and (``check``) still holds
        ``expect``; otherwise the failure is recorded and None returned."""
        rel = safe_rel(path)
        if rel is None:
            self._fail(path, "unsafe path")
            return None
        head, _, name = rel.rpartition("/")
        try:
            pfd = self._dir(head, create=False)
        except _NotReal:
            self._fail(path, "a parent directory is a symlink or a file here; retried "
                             "next cycle")
            return None
        except OSError as exc:
            self._fail(path, f"{exc.strerror or exc}")
            return None
        if not check:
            return rel, pfd, name
        now = self._now(pfd, name, rel)
        if now is False or now != expect:
            self._fail(path, "changed since the scan; retried next cycle")
            return None
        return rel, pfd, name

    def _temp_name(self) -> str:
        self._seq += 1
        return f"{TEMP_PREFIX}{self._stem}{self._seq:x}"

    def begin(self, path: str, entry: Entry, expect: Entry | None) -> None:
        self._abandon()
        self._skip = True
        if len(self._dfds) >= MAX_DIR_FDS:  # only here: no file is open between frames
            self._close_dirs()
        # A new file (nothing expected) is checked once, at END right before its rename:
        # that check is the one that counts, and an early one cost a failed stat per file
        # of an initial sync. Everything else is checked here too, before any work.
        where = self._locate(path, expect,
                             check=expect is not None or entry.kind is not Kind.FILE)
        if where is None:
            return
        rel, pfd, name = where
        try:
            if pfd is None:  # missing parents (checks passed): made as real directories
                pfd = self._dir(rel.rpartition("/")[0], create=True)
                assert pfd is not None
            if entry.kind is Kind.DIR:
                self._make_dir(pfd, name, expect)
                self.done.append((path, entry))
                return
            if entry.kind is Kind.SYMLINK:
                tmp = self._temp_name()
                try:
                    os.symlink(entry.target, tmp, dir_fd=pfd)
                except FileExistsError:
                    self._stem = secrets.token_hex(4)
                    tmp = self._temp_name()
                    os.symlink(entry.target, tmp, dir_fd=pfd)
                self._tmp, self._pfd = tmp, pfd
                self._replace(pfd, tmp, name, expect)
                self._tmp = None
                if expect is not None and expect.kind is Kind.DIR:
                    self._forget_dir(rel)
                self.done.append((path, entry))
                return
            import blake3

            if expect is not None and expect.kind is Kind.FILE:
                self._old = os.open(name, _OLD_FLAGS, dir_fd=pfd)
            tmp = self._temp_name()
            try:
                self._out = os.open(tmp, _NEW_FLAGS, 0o600, dir_fd=pfd)
            except FileExistsError:
                self._stem = secrets.token_hex(4)
                tmp = self._temp_name()
                self._out = os.open(tmp, _NEW_FLAGS, 0o600, dir_fd=pfd)
            self._tmp, self._pfd, self._name = tmp, pfd, name
            self._path, self._entry, self._expect = rel, entry, expect
            self._hash = blake3.blake3()
            self._holes = False
            self._skip = False
        except _NotReal:
            self._fail(path, "a parent directory is a symlink or a file here; retried "
                             "next cycle")
        except OSError as exc:
            self._abandon()
            self._fail(path, f"{exc.strerror or exc}")

    @staticmethod
    def _make_dir(pfd: int, name: str, expect: Entry | None) -> None:
        if expect is not None and expect.kind is not Kind.DIR:
            os.unlink(name, dir_fd=pfd)
        try:
            os.mkdir(name, 0o777, dir_fd=pfd)
        except FileExistsError:
            if not st.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                raise

    @staticmethod
    def _replace(pfd: int, tmp: str, name: str, expect: Entry | None) -> None:
        if expect is not None and expect.kind is Kind.DIR:
            os.rmdir(name, dir_fd=pfd)  # only when empty: its contents were deleted first
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)

    def data(self, payload: bytes | memoryview) -> None:
        if self._skip or self._out < 0:
            return
        try:
            n = os.write(self._out, payload)
            if n < len(payload):  # a regular file takes it all unless the disk is full
                view = memoryview(payload)
                while n < len(view):
                    n += os.write(self._out, view[n:])
        except OSError as exc:
            self._fail(self._path or "", exc.strerror or str(exc))
            self._abandon()
            return
        self._hash.update(payload)
        self.bytes_written += len(payload)

    def zeros(self, length: int) -> None:
        """A hole: seek instead of writing (the file stays sparse), hash the zeros."""
        if self._skip or self._out < 0:
            return
        try:
            os.lseek(self._out, length, os.SEEK_CUR)
            self._holes = True
        except OSError as exc:
            self._fail(self._path or "", exc.strerror or str(exc))
            self._abandon()
            return
        block = _ZERO_BLOCK
        while length > 0:
            n = min(length, len(block))
            self._hash.update(block if n == len(block) else block[:n])
            length -= n

    def clone(self, source: str) -> None:
        """The content is this side's own file ``source`` (a rename or copy elsewhere):
        read locally instead of over the link; END still checks the digest."""
        if self._skip or self._out < 0:
            return
        rel = safe_rel(source)
        try:
            if rel is None:
                raise _NotReal(source)
            head, _, name = rel.rpartition("/")
            sfd = self._dir(head, create=False)
            if sfd is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), source)
            fd = os.open(name, _OLD_FLAGS, dir_fd=sfd)
        except _NotReal:
            self._fail(self._path or "", "unsafe clone source")
            self._abandon()
            return
        except OSError as exc:
            self._fail(self._path or "", f"clone source: {exc.strerror or exc}")
            self._abandon()
            return
        try:
            while data := os.read(fd, READ_SIZE):
                self.data(data)
                if self._out < 0:
                    return
        except OSError as exc:
            self._fail(self._path or "", f"clone source: {exc.strerror or exc}")
            self._abandon()
        finally:
            os.close(fd)

    def copy_range(self, offset: int, length: int) -> None:
        if self._skip or self._out < 0:
            return
        if self._old < 0:
            self._fail(self._path or "", "a range was sent but there is no old file")
            self._abandon()
            return
        while length > 0:
            data = os.pread(self._old, min(length, READ_SIZE), offset)
            if not data:
                self._fail(self._path or "", "old file shorter than expected")
                self._abandon()
                return
            length -= len(data)
            offset += len(data)
            self.data(data)

    def end(self) -> None:
        if self._skip or self._out < 0:
            self._abandon()
            return
        path, entry, tmp, pfd, name = self._path, self._entry, self._tmp, self._pfd, self._name
        assert path is not None and entry is not None and tmp is not None
        out = self._out
        try:
            if self._holes:  # a trailing hole: make the size right
                os.ftruncate(out, os.lseek(out, 0, os.SEEK_CUR))
            if self._hash.digest() != entry.digest:
                self._fail(path, "the source changed while it was sent; retried next cycle")
                return
            os.fchmod(out, 0o755 if entry.executable else 0o644)
            if self._now(pfd, name, path) != self._expect:  # edited while we wrote
                self._fail(path, "changed since the scan; retried next cycle")
                return
            self._replace(pfd, tmp, name, self._expect)
            self._tmp = None
            if self._expect is not None and self._expect.kind is Kind.DIR:
                self._forget_dir(path)
            # fstat after the rename (which sets ctime): the stat the next scan will see,
            # so it does not read this file again
            self.scanner.remember_stat(path, os.fstat(out), entry)
            self.done.append((path, entry))
        except OSError as exc:
            self._fail(path, exc.strerror or str(exc))
        finally:
            self._abandon()

    def delete(self, path: str, expect: Entry | None) -> None:
        where = self._locate(path, expect)
        if where is None:
            return
        rel, pfd, name = where
        if pfd is None:  # the parent is gone, and `expect` was nothing: done
            self.done.append((path, None))
            return
        try:
            if expect is not None and expect.kind is Kind.DIR:
                os.rmdir(name, dir_fd=pfd)
                self._forget_dir(rel)
            else:
                os.unlink(name, dir_fd=pfd)
            self.scanner.forget(rel)
            self.done.append((path, None))
        except FileNotFoundError:
            self.done.append((path, None))
        except OSError as exc:
            self._fail(path, exc.strerror or str(exc))

    def _forget_dir(self, rel: str) -> None:
        fd = self._dfds.pop(rel, None)
        if fd is not None:
            os.close(fd)

    def _abandon(self) -> None:
        for fd in (self._out, self._old):
            if fd >= 0:
                os.close(fd)
        self._out = self._old = -1
        if self._tmp is not None:
            try:
                os.unlink(self._tmp, dir_fd=self._pfd)
            except OSError:
                pass  # already gone; nothing half-written is visible under a real name
        self._tmp = None
        self._skip = True

    def handle(self, frame: P.Frame) -> bool:
        """Apply one frame; False when it is not a change frame (the caller handles it)."""
        t = frame.type
        if t is P.T.DATA:
            self.data(frame.payload)
        elif t is P.T.END:
            self.end()
        elif t is P.T.BEGIN:
            msg = frame.json()
            self.begin(msg["path"], P.entry_from_json(msg["entry"]),  # type: ignore[arg-type]
                       P.entry_from_json(msg.get("expect")))
        elif t is P.T.RANGE:
            self.copy_range(*P.decode_range(frame.payload))
        elif t is P.T.ZEROS:
            self.zeros(P.decode_zeros(frame.payload))
        elif t is P.T.CLONE:
            self.clone(str(frame.json().get("from", "")))
        elif t is P.T.DELETE:
            msg = frame.json()
            self.delete(msg["path"], P.entry_from_json(msg.get("expect")))
        else:
            return False
        return True

    def result(self) -> tuple[list[tuple[str, Entry | None]], list[list[str]]]:
        """(applied, failed) since the last call; resets both."""
        self._abandon()
        self._close_dirs()
        out = (self.done, self.failed)
        self.done, self.failed = [], []
        return out


def send_frames(scanner: Scanner, path: str, entry: Entry, expect: Entry | None,
                sigs: list[P.Chunk] | None, dest: str | None = None,
                clone_from: str | None = None) -> Iterator[bytes]:
    """BEGIN + content + END for sending ``path`` (written as ``dest`` on the other side).

    ``clone_from``: the receiver already holds this content at that path; send no bytes.
    """
    yield P.encode_json(P.T.BEGIN, {"path": dest or path, "entry": P.entry_to_json(entry),
                                    "expect": P.entry_to_json(expect)})
    if entry.kind is Kind.FILE and clone_from:
        yield P.encode_json(P.T.CLONE, {"from": clone_from})
        yield P.encode(P.T.END)
    elif entry.kind is Kind.FILE:
        try:
            yield from file_frames(scanner.full(path), sigs, entry.size)
        except OSError:
            pass  # gone or unreadable now: the receiver's digest check fails the file
        yield P.encode(P.T.END)
