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

import os
import secrets
import stat as st
from collections.abc import Iterator

from tether.sync import protocol as P
from tether.sync.ignore import TEMP_PREFIX
from tether.sync.reconcile import Entry, Kind
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


def file_frames(path: str, sigs: list[P.Chunk] | None) -> Iterator[bytes]:
    """Encoded DATA/RANGE frames carrying the file at ``path``."""
    if not sigs:
        with open(path, "rb", buffering=0) as fh:
            while data := fh.read(READ_SIZE):
                if len(data) == READ_SIZE and data == _ZERO_BLOCK:
                    yield P.encode_zeros(len(data))  # sparse images, preallocated files
                else:
                    yield P.encode(P.T.DATA, data)
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


def current_entry(scanner: Scanner, rel: str) -> Entry | None | bool:
    """What ``rel`` holds now as far as the last scan knows; False: changed since that scan."""
    full = scanner.full(rel)
    try:
        s = os.lstat(full)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    if st.S_ISDIR(s.st_mode):
        return Entry(Kind.DIR)
    if st.S_ISLNK(s.st_mode):
        return Entry(Kind.SYMLINK, target=os.readlink(full))
    hit = scanner.cache.get(rel)
    key = (s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
    if hit is None or hit[0] != key:
        return False
    return hit[1]


class Receiver:
    """Applies one batch of incoming changes to ``scanner.root``."""

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.done: list[tuple[str, Entry | None]] = []  # applied: path -> what it holds now
        self.failed: list[list[str]] = []
        self._path: str | None = None
        self._entry: Entry | None = None
        self._expect: Entry | None = None
        self._tmp: str | None = None
        self._out = None
        self._old = None
        self._hash = None
        self._skip = False
        self._holes = False
        self._dirs: set[str] = set()  # directories known to exist during this batch
        self.bytes_written = 0

    def _fail(self, path: str, reason: str) -> None:
        self.failed.append([path, reason])

    def _parents_real(self, rel: str) -> bool:
        """No ancestor of ``rel`` is a symlink: a write must never land outside the root."""
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            full = self.scanner.full("/".join(parts[:i]))
            if full in self._dirs:
                continue
            try:
                s = os.lstat(full)
            except FileNotFoundError:
                return True  # created below as real directories
            if not st.S_ISDIR(s.st_mode):
                return False
            self._dirs.add(full)
        return True

    def _check(self, rel: str | None, expect: Entry | None, path: str) -> bool:
        if rel is None:
            self._fail(path, "unsafe path")
            return False
        if not self._parents_real(rel):
            self._fail(path, "a parent directory is a symlink or a file here; retried "
                             "next cycle")
            return False
        now = current_entry(self.scanner, rel)
        if now is False or now != expect:
            self._fail(path, "changed since the scan; retried next cycle")
            return False
        return True

    def begin(self, path: str, entry: Entry, expect: Entry | None) -> None:
        self._abandon()
        rel = safe_rel(path)
        self._skip = True
        if not self._check(rel, expect, path):
            return
        assert rel is not None
        full = self.scanner.full(rel)
        try:
            parent = os.path.dirname(full)
            if parent not in self._dirs:  # one mkdir per directory, not one per file
                os.makedirs(parent, exist_ok=True)
                self._dirs.add(parent)
            if entry.kind is Kind.DIR:
                self._make_dir(full, expect)
                self.done.append((path, entry))
                return
            tmp = os.path.join(parent, f"{TEMP_PREFIX}{secrets.token_hex(6)}")
            if entry.kind is Kind.SYMLINK:
                os.symlink(entry.target, tmp)
                self._replace(tmp, full, expect)
                self.done.append((path, entry))
                return
            import blake3

            if expect is not None and expect.kind is Kind.FILE:
                self._old = open(full, "rb")  # noqa: SIM115 - closed in end()/_abandon()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._out = os.fdopen(fd, "wb")
            self._tmp, self._path, self._entry, self._expect = tmp, rel, entry, expect
            self._hash = blake3.blake3()
            self._holes = False
            self._skip = False
        except OSError as exc:
            self._abandon()
            self._fail(path, f"{exc.strerror or exc}")

    def _make_dir(self, full: str, expect: Entry | None) -> None:
        if expect is not None and expect.kind is not Kind.DIR:
            os.unlink(full)
        os.makedirs(full, exist_ok=True)

    def _replace(self, tmp: str, full: str, expect: Entry | None) -> None:
        if expect is not None and expect.kind is Kind.DIR:
            os.rmdir(full)  # only when empty: its contents were deleted first or it stays
        os.rename(tmp, full)

    def data(self, payload: bytes) -> None:
        if self._skip or self._out is None:
            return
        try:
            self._out.write(payload)
        except OSError as exc:
            self._fail(self._path or "", exc.strerror or str(exc))
            self._abandon()
            return
        self._hash.update(payload)
        self.bytes_written += len(payload)

    def zeros(self, length: int) -> None:
        """A hole: seek instead of writing (the file stays sparse), hash the zeros."""
        if self._skip or self._out is None:
            return
        try:
            self._out.seek(length, os.SEEK_CUR)
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
        if self._skip or self._out is None:
            return
        rel = safe_rel(source)
        if rel is None or not self._parents_real(rel):
            self._fail(self._path or "", "unsafe clone source")
            self._abandon()
            return
        try:
            with open(self.scanner.full(rel), "rb", buffering=0) as fh:
                while data := fh.read(READ_SIZE):
                    self.data(data)
                    if self._out is None:
                        return
        except OSError as exc:
            self._fail(self._path or "", f"clone source: {exc.strerror or exc}")
            self._abandon()

    def copy_range(self, offset: int, length: int) -> None:
        if self._skip or self._out is None:
            return
        if self._old is None:
            self._fail(self._path or "", "a range was sent but there is no old file")
            self._abandon()
            return
        self._old.seek(offset)
        while length > 0:
            data = self._old.read(min(length, READ_SIZE))
            if not data:
                self._fail(self._path or "", "old file shorter than expected")
                self._abandon()
                return
            length -= len(data)
            self.data(data)

    def end(self) -> None:
        if self._skip or self._out is None:
            self._abandon()
            return
        path, entry, tmp = self._path, self._entry, self._tmp
        assert path is not None and entry is not None and tmp is not None
        try:
            if self._holes:  # a trailing hole: make the size right
                self._out.truncate(self._out.tell())
            self._out.close()
            self._out = None
            if self._hash.digest() != entry.digest:
                self._fail(path, "the source changed while it was sent; retried next cycle")
                return
            os.chmod(tmp, 0o755 if entry.executable else 0o644)
            full = self.scanner.full(path)
            if current_entry(self.scanner, path) != self._expect:  # edited while we wrote
                self._fail(path, "changed since the scan; retried next cycle")
                return
            self._replace(tmp, full, self._expect)
            self._tmp = None
            self.scanner.remember(path, entry)
            self.done.append((path, entry))
        except OSError as exc:
            self._fail(path, exc.strerror or str(exc))
        finally:
            self._abandon()

    def delete(self, path: str, expect: Entry | None) -> None:
        rel = safe_rel(path)
        if not self._check(rel, expect, path):
            return
        assert rel is not None
        full = self.scanner.full(rel)
        try:
            if expect is not None and expect.kind is Kind.DIR:
                os.rmdir(full)
            else:
                os.unlink(full)
            self.scanner.forget(rel)
            self.done.append((path, None))
        except FileNotFoundError:
            self.done.append((path, None))
        except OSError as exc:
            self._fail(path, exc.strerror or str(exc))

    def _abandon(self) -> None:
        for fh in (self._out, self._old):
            if fh is not None:
                fh.close()
        self._out = self._old = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass  # already gone; nothing half-written is visible under a real name
        self._tmp = None
        self._skip = True

    def handle(self, frame: P.Frame) -> bool:
        """Apply one frame; False when it is not a change frame (the caller handles it)."""
        t = frame.type
        if t is P.T.DATA:
            self.data(frame.payload)
        elif t is P.T.RANGE:
            self.copy_range(*P.decode_range(frame.payload))
        elif t is P.T.ZEROS:
            self.zeros(P.decode_zeros(frame.payload))
        elif t is P.T.CLONE:
            self.clone(str(frame.json().get("from", "")))
        elif t is P.T.END:
            self.end()
        elif t is P.T.BEGIN:
            msg = frame.json()
            self.begin(msg["path"], P.entry_from_json(msg["entry"]),  # type: ignore[arg-type]
                       P.entry_from_json(msg.get("expect")))
        elif t is P.T.DELETE:
            msg = frame.json()
            self.delete(msg["path"], P.entry_from_json(msg.get("expect")))
        else:
            return False
        return True

    def result(self) -> tuple[list[tuple[str, Entry | None]], list[list[str]]]:
        """(applied, failed) since the last call; resets both."""
        self._abandon()
        self._dirs.clear()
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
            yield from file_frames(scanner.full(path), sigs)
        except OSError:
            pass  # gone or unreadable now: the receiver's digest check fails the file
        yield P.encode(P.T.END)
