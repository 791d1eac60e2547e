"""The remote half of sync: ``tether agent sync ROOT`` speaking frames on stdin/stdout.

The engine starts it over one SSH exec channel. It is a small file server for one root: it
scans (keeping its stat cache for the whole session, and sending only what changed since its
last TREE), hands out chunk signatures, applies batches of changes through
:class:`~tether.sync.fs.Receiver` and streams files back for GET. With ``watch`` in HELLO a
watchdog observer (inotify on Linux) sends NOTIFY when something under the root changes.

One thread reads requests and answers them in order; the watcher thread only ever writes
whole NOTIFY frames, under the same lock as the replies.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from tether import errors
from tether.sync import protocol as P
from tether.sync.fs import Receiver, chunk_sigs, send_frames
from tether.sync.reconcile import Entry
from tether.sync.scan import Scanner

FLUSH_AT = 1 << 20
NOTIFY_DEBOUNCE_S = 0.005
POLL_S = 2.0  # without inotify: how often to rescan everything


class _Out:
    """Buffered frame writer to a file descriptor; ``flush`` at the end of each reply."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.lock = threading.Lock()

    def write(self, frame: bytes) -> None:
        with self.lock:
            self.buf += frame
            if len(self.buf) >= FLUSH_AT:
                self._flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if not self.buf:
            return
        data, self.buf = self.buf, bytearray()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


class Agent:
    def __init__(self, root: str, out: _Out) -> None:
        self.root = root
        self.out = out
        self.scanner: Scanner | None = None
        self.sent: dict[str, Entry] = {}  # the tree as the engine knows it
        self.receiver: Receiver | None = None
        self.observer: Any = None
        self.dirty: Any = None  # watch.DirtySet while watching
        self.cache_file: str | None = None

    # -- requests ----------------------------------------------------------------------
    def hello(self, msg: dict) -> None:
        if msg.get("v") != P.VERSION:
            raise errors.ProtocolError(f"sync protocol version {msg.get('v')!r} is not "
                                       f"supported (this agent speaks {P.VERSION})",
                                       "install the same tether version on both sides")
        root = os.path.abspath(os.path.expanduser(msg.get("root") or self.root))
        if os.path.lexists(root) and not os.path.isdir(root):
            raise errors.UsageError(f"{root} is not a directory on the workspace",
                                    "choose another REMOTE folder")
        if msg.get("create"):
            os.makedirs(root, exist_ok=True)
        self.root = root
        self.scanner = Scanner(root, msg.get("excludes") or ())
        if msg.get("cache"):
            self.cache_file = _cache_file(root)
            self.scanner.load_cache(self.cache_file)
        self.receiver = Receiver(self.scanner)
        if msg.get("watch"):
            self._watch()
        self.out.write(P.encode_json(P.T.READY, {"v": P.VERSION, "root": root,
                                                 "pid": os.getpid()}))

    def scan(self, msg: dict) -> None:
        assert self.scanner is not None
        if msg.get("partial") and self.dirty is not None:
            result = self.scanner.scan_paths(self.dirty.take())
        else:
            if self.dirty is not None:
                self.dirty.take()
            result = self.scanner.scan()
        delta = P.tree_delta(self.sent, result.tree, full=bool(msg.get("full")),
                             unstable=result.unstable, root_missing=result.root_missing,
                             only=result.changed)
        self.sent = result.tree
        self.out.write(P.encode(P.T.TREE, P.encode_tree(delta)))

    def sigs(self, msg: dict) -> None:
        assert self.scanner is not None
        self.out.write(P.encode(P.T.SIGS_REPLY, P.encode_sigs(
            self._sigs(p) for p in msg.get("paths", []))))

    def _sigs(self, rel: str) -> list[P.Chunk]:
        assert self.scanner is not None
        try:
            return chunk_sigs(self.scanner.full(rel))
        except OSError:
            return []

    def commit(self) -> None:
        assert self.receiver is not None
        done, failed = self.receiver.result()
        for path, entry in done:  # keep `sent` equal to the engine's view of this side
            if entry is None:
                self.sent.pop(path, None)
            else:
                self.sent[path] = entry
        self.out.write(P.encode_json(P.T.RESULT, {"done": [p for p, _ in done],
                                                  "failed": failed}))

    def get(self, msg: dict, sigs: list[list[P.Chunk]]) -> None:
        """Stream files the engine wants (each as BEGIN/DATA|RANGE/END), then RESULT."""
        assert self.scanner is not None
        it = iter(sigs)
        for path, entry_j, expect_j, dest, has_sigs in msg.get("items", []):
            entry = P.entry_from_json(entry_j)
            assert entry is not None
            theirs = next(it) if has_sigs else None
            for frame in send_frames(self.scanner, path, entry, P.entry_from_json(expect_j),
                                     theirs, dest=dest):
                self.out.write(frame)
        self.out.write(P.encode_json(P.T.RESULT, {}))

    # -- watching ----------------------------------------------------------------------
    def _watch(self) -> None:
        from tether.sync.watch import DirtySet, start_observer

        pending = threading.Event()
        self.dirty = DirtySet()

        def on_paths(paths: list[str]) -> None:
            self.dirty.add(paths)
            pending.set()

        def notifier() -> None:
            while True:
                pending.wait()
                time.sleep(NOTIFY_DEBOUNCE_S)
                pending.clear()
                self.out.write(P.encode_json(P.T.NOTIFY, {}))
                self.out.flush()

        threading.Thread(target=notifier, name="sync-notify", daemon=True).start()
        try:
            self.observer = start_observer(self.root, on_paths)
        except OSError:  # e.g. the inotify watch limit: fall back to periodic full rescans
            def poll() -> None:
                while True:
                    time.sleep(POLL_S)
                    on_paths([""])  # "" = the root: a full rescan

            threading.Thread(target=poll, name="sync-poll", daemon=True).start()

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.result()  # drops an unfinished temp file (the link died mid-file)
        if self.observer is not None:
            self.observer.stop()
        if self.cache_file and self.scanner is not None:
            try:
                self.scanner.save_cache(self.cache_file)
            except OSError:
                pass  # only a cache: the next session hashes again


def _cache_file(root: str) -> str:
    """Where this machine keeps the stat cache of ``root`` between sessions."""
    import hashlib

    from tether import paths

    d = paths.ensure_dir(paths.cache_dir() / "sync")
    return str(d / (hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
                    + ".scan"))


READ_BUF = 1 << 20
BIG_FRAME = 256 << 10  # frames above this are read into a buffer of their own
MIN_READ = 64 << 10  # less room than this at the end of the buffer: compact first


def read_frames(fd: int, before_read: Callable[[], None] = lambda: None
                ) -> Iterator[P.Frame]:
    """Frames from ``fd`` until end of input, with at most one copy of each byte;
    ``before_read`` runs whenever the next frame needs more input.

    Bytes are read into one fixed buffer; a DATA payload is handed out as a memoryview of
    it, valid until the next frame is asked for (the receiver writes and hashes it at
    once), other payloads are copied out once. A frame too big for the buffer gets a
    buffer of its own that the rest of it is read straight into.
    """
    buf = bytearray(READ_BUF)
    view = memoryview(buf)
    start = end = 0  # unread bytes are buf[start:end]
    big: bytearray | None = None
    while True:
        need = P.HEAD_SIZE  # bytes from `start` the next frame needs
        while end - start >= P.HEAD_SIZE:
            length, ftype = P.frame_head(buf, start)
            need = P.HEAD_SIZE + length
            if start + need > end:
                break
            at, start = start + P.HEAD_SIZE, start + need
            yield P.Frame(ftype, view[at:start] if ftype is P.T.DATA
                          else bytes(view[at:start]))
            need = P.HEAD_SIZE
        if need > BIG_FRAME:  # its own buffer, read straight into: no copy through `buf`
            if big is None or len(big) < length:
                big = bytearray(length)
            bview = memoryview(big)[:length]
            have = end - start - P.HEAD_SIZE
            bview[:have] = view[start + P.HEAD_SIZE:end]
            start = end = 0
            while have < length:
                before_read()
                n = os.readv(fd, [bview[have:]])
                if not n:
                    return  # the engine went away mid-frame: nothing to apply
                have += n
            yield P.Frame(ftype, bview if ftype is P.T.DATA else bytes(bview))
            continue
        if start == end:
            start = end = 0
        elif start + need > READ_BUF or READ_BUF - end < MIN_READ:
            n = end - start  # move the frame in progress to the front (at most BIG_FRAME)
            view[:n] = view[start:end]
            start, end = 0, n
        before_read()
        n = os.readv(fd, [view[end:]])
        if not n:
            return
        end += n


PIPE_SIZE = 1 << 20


def _widen_pipe(fd: int) -> None:
    """Give a pipe (sshd's end of the channel) 1 MiB instead of 64 KiB: a 200 MB upload
    then takes ~16x fewer wake-ups and reads here and writes in sshd. Best effort."""
    import fcntl

    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if setsz is None:
        return
    try:
        if os.fstat(fd).st_mode & 0o170000 == 0o010000:  # S_IFIFO
            fcntl.fcntl(fd, setsz, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size for this user, or not ours to change


def serve(root: str, fd_in: int = 0, fd_out: int = 1) -> int:
    """Run the agent until BYE or end of input. Returns the process exit code."""
    for fd in (fd_in, fd_out):
        _widen_pipe(fd)
    out = _Out(fd_out)
    agent = Agent(root, out)
    get_msg: dict | None = None
    try:
        # replies go out whenever the agent would wait for more input (as they did after
        # each read before), so a request never waits on its own answer
        for frame in read_frames(fd_in, out.flush):
            t = frame.type
            if agent.receiver is not None and agent.receiver.handle(frame):
                continue
            if t is P.T.HELLO:
                agent.hello(frame.json())
            elif agent.scanner is None:
                raise errors.ProtocolError("the first sync frame must be HELLO")
            elif t is P.T.SCAN:
                agent.scan(frame.json())
            elif t is P.T.SIGS:
                agent.sigs(frame.json())
            elif t is P.T.COMMIT:
                agent.commit()
            elif t is P.T.GET:
                get_msg = frame.json()
                continue  # its SIGS_REPLY frame follows
            elif t is P.T.SIGS_REPLY and get_msg is not None:
                msg, get_msg = get_msg, None
                agent.get(msg, P.decode_sigs(frame.payload))
            elif t is P.T.BYE:
                out.flush()
                return 0
            else:
                raise errors.ProtocolError(f"unexpected sync frame {t.name}")
        out.flush()
        return 0
    except errors.TetherError as exc:
        out.write(P.encode_json(P.T.ERROR, {"message": exc.message, "hint": exc.hint}))
        out.flush()
        return 1
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            return 0  # the engine went away; nothing half-written stays visible
        where = exc.filename or agent.root
        out.write(P.encode_json(P.T.ERROR, {
            "message": f"{where}: {exc.strerror or exc}",
            "hint": "check the remote folder (it must be a directory you can write)"}))
        out.flush()
        return 1
    finally:
        agent.stop()


def main(root: str) -> int:
    try:
        return serve(root)
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stderr.flush()


__all__ = ["Agent", "main", "serve"]
