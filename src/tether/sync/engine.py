"""The local half of sync: drive one agent over one SSH exec channel of the link.

A cycle: ask the agent to SCAN (skipped in watch mode while the remote has not NOTIFYed,
since the engine's mirror of the remote tree is then current) while scanning locally, check
the halt rules, reconcile, then apply:

- uploads as one batch (BEGIN/DATA|RANGE/END, DELETE ... COMMIT -> RESULT): one round trip,
  plus one for chunk signatures when a large file changed in part;
- downloads as one GET (with this side's chunk signatures) streamed back and written through
  the same :class:`~tether.sync.fs.Receiver` the agent uses.

Then the base advances by what was applied, and is saved. Watch mode waits for watchdog
events (debounced) or the agent's NOTIFY, and survives a dropped link by reconnecting with
backoff and rescanning in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether import errors
from tether.sync import protocol as P
from tether.sync import state
from tether.sync.fs import DELTA_MIN, Receiver, chunk_sigs, send_frames
from tether.sync.ignore import check_patterns
from tether.sync.reconcile import (
    Action,
    Conflict,
    Entry,
    Keep,
    Kind,
    Mode,
    Op,
    Side,
    advance_base,
    halt_reason,
    reconcile,
)
from tether.sync.scan import Scanner

DRAIN_AT = 1 << 20
COALESCE_AT = 256 << 10
QUEUE_FRAMES = 32  # frames read ahead of the receiver (DATA frames are <= 1 MiB)
BASE_SAVE_EVERY_S = 2.0
RESCAN_EVERY_S = 30.0  # watch mode: a full rescan now and then, in case an event was lost
POLL_S = 2.0  # the same without a working watcher (inotify limit reached)
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
MAX_ONESHOT_CYCLES = 3


@dataclass(frozen=True)
class SyncOptions:
    """One sync session: a host profile, two roots, a mode and extra excludes."""

    name: str
    local: Path
    remote: str
    mode: Mode = Mode.TWO_WAY_SAFE
    excludes: tuple[str, ...] = ()
    agent_command: str | None = None  # how to start the agent remotely (default: probe)

    @property
    def id(self) -> str:
        return state.session_id(self.name, self.local, self.remote)


@dataclass
class CycleReport:
    uploaded: int = 0
    downloaded: int = 0
    deleted_local: int = 0
    deleted_remote: int = 0
    conflicts: list[Conflict] = field(default_factory=list)  # open ones
    auto_resolved: list[Conflict] = field(default_factory=list)  # two-way-resolved
    new_copies: int = 0  # conflict copies made this cycle (they sync next cycle)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (side, path, why)
    unstable: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_s: float = 0.0

    @property
    def changed(self) -> int:
        return self.uploaded + self.downloaded + self.deleted_local + self.deleted_remote


@dataclass
class SyncResult:
    """What a sync run did (summed over its cycles)."""

    session: str
    name: str
    local: str
    remote: str
    mode: str
    cycles: int = 0
    uploaded: int = 0
    downloaded: int = 0
    deleted_local: int = 0
    deleted_remote: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    auto_resolved: list[Conflict] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_s: float = 0.0

    def add(self, r: CycleReport) -> None:
        self.cycles += 1
        self.uploaded += r.uploaded
        self.downloaded += r.downloaded
        self.deleted_local += r.deleted_local
        self.deleted_remote += r.deleted_remote
        self.conflicts = r.conflicts
        self.auto_resolved += r.auto_resolved
        self.failed = r.failed
        self.bytes_sent += r.bytes_sent
        self.bytes_received += r.bytes_received

    def to_dict(self) -> dict:
        return {"session": self.session, "name": self.name, "local": self.local,
                "remote": self.remote, "mode": self.mode, "cycles": self.cycles,
                "uploaded": self.uploaded, "downloaded": self.downloaded,
                "deleted_local": self.deleted_local, "deleted_remote": self.deleted_remote,
                "conflicts": [c.to_dict() for c in self.conflicts],
                "auto_resolved": [c.to_dict() for c in self.auto_resolved],
                "failed": [{"side": s, "path": p, "reason": w} for s, p, w in self.failed],
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "duration_s": round(self.duration_s, 3)}


def agent_command_line(opts: SyncOptions) -> str:
    """The remote shell command that starts the agent on ``opts.remote``.

    Order: an explicit command, ``$TETHER_SYNC_AGENT``, then the first ``tether`` found among
    PATH, ``~/.local/bin`` and the absolute path of this install (sshd sessions often lack
    the login PATH, e.g. pyenv shims; a workspace set up like this machine has it there).
    """
    root = shlex.quote(opts.remote)
    explicit = opts.agent_command or os.environ.get("TETHER_SYNC_AGENT")
    if explicit:
        return f"exec {explicit} {root}"
    here = Path(sys.executable).parent / "tether"
    mine = str(here) if os.access(here, os.X_OK) else (shutil.which("tether") or "tether")
    return (f'for t in tether "$HOME/.local/bin/tether" {shlex.quote(mine)}; do '
            f'if command -v "$t" >/dev/null 2>&1; then exec "$t" agent sync {root}; fi; done; '
            'echo "tether is not installed on the workspace" >&2; exit 127')


class RemoteAgent:
    """Frames to and from ``tether agent sync`` on one SSH exec channel."""

    def __init__(self, conn: Any, name: str, on_notify: Callable[[], None],
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.on_bytes = on_bytes or (lambda n: None)
        self.conn = conn
        self.name = name
        self.on_notify = on_notify
        self.proc: Any = None
        self.queue: asyncio.Queue[P.Frame | None] = asyncio.Queue(maxsize=QUEUE_FRAMES)
        self._eof = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self._unflushed = 0
        self._out = bytearray()
        self._stderr = bytearray()
        self._tasks: list[asyncio.Task] = []

    async def start(self, command: str, hello: Mapping[str, Any]) -> dict:
        from tether.link._asyncssh import asyncssh

        try:
            self.proc = await self.conn.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise errors.ConnectError(f"cannot start the sync agent on {self.name!r}: {exc}",
                                      "is tether installed on the workspace?") from exc
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._errors())]
        await self.send(P.encode_json(P.T.HELLO, hello))
        ready = (await self.expect(P.T.READY)).json()
        if ready.get("v") != P.VERSION:
            raise errors.ProtocolError(
                f"the sync agent on {self.name!r} speaks protocol {ready.get('v')!r}, "
                f"this tether speaks {P.VERSION}", "install the same tether version on both sides")
        return ready

    async def _read(self) -> None:
        decoder = P.FrameDecoder()
        try:
            while data := await self.proc.stdout.read(1 << 20):
                self.bytes_received += len(data)
                self.on_bytes(len(data))
                for frame in decoder.feed(data):
                    if frame.type is P.T.NOTIFY:
                        self.on_notify()
                    else:
                        await self.queue.put(frame)  # bounded: a slow disk slows the reader
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any read failure means the channel is gone
            self._stderr += f"\nerror: {exc}".encode()
        self._eof = True
        await self.queue.put(None)

    async def _errors(self) -> None:
        # stderr only feeds error messages: a failure reading it ends it, nothing more
        with contextlib.suppress(Exception):
            while data := await self.proc.stderr.read(4096):
                self._stderr += data
                del self._stderr[:-4000]

    def _gone(self) -> errors.ConnectError:
        lines = [ln for ln in self._stderr.decode(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("hint:")]
        why = f": {lines[-1].removeprefix('error: ')}" if lines else ""
        return errors.ConnectError(f"the link to {self.name!r} dropped or the sync agent "
                                   f"exited{why}", "check `tether status NAME`; watch mode "
                                   "reconnects by itself")

    async def send(self, frame: bytes) -> None:
        """Queue a frame; small frames are coalesced so a batch of files costs few SSH
        packets (each channel write is at least one packet, with its own MAC and padding)."""
        if self.put(frame):
            await self.flush()

    def put(self, frame: bytes | bytearray) -> bool:
        """:meth:`send` without the await (a batch queues three frames per file): True
        when the caller should ``await flush()`` now."""
        self._out += frame
        n = len(frame)
        self.bytes_sent += n
        self.on_bytes(n)
        return len(self._out) >= COALESCE_AT

    async def flush(self) -> None:
        from tether.link._asyncssh import asyncssh

        if not self._out:
            return
        data, self._out = self._out, bytearray()
        try:
            self.proc.stdin.write(data)  # asyncssh copies it into its own buffer
            self._unflushed += len(data)
            if self._unflushed >= DRAIN_AT:
                self._unflushed = 0
                await self.proc.stdin.drain()
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise self._gone() from exc

    async def recv(self) -> P.Frame:
        await self.flush()  # whatever we wait on may depend on what we queued
        if self._eof and self.queue.empty():
            raise self._gone()  # every recv after the end fails the same way
        frame = await self.queue.get()
        if frame is None:
            raise self._gone()
        if frame.type is P.T.ERROR:
            msg = frame.json()
            raise errors.PeerError(f"sync agent on {self.name!r}: {msg.get('message')}",
                                   msg.get("hint"))
        return frame

    async def expect(self, ftype: P.T) -> P.Frame:
        frame = await self.recv()
        if frame.type is not ftype:
            raise errors.ProtocolError(f"sync agent sent {frame.type.name}, "
                                       f"expected {ftype.name}")
        return frame

    async def aclose(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):  # the channel may be gone already
                self.proc.stdin.write(bytes(self._out) + P.encode_json(P.T.BYE, {}))
                self.proc.stdin.write_eof()
            self.proc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


class Session:
    """One sync session's state between cycles: base, local scanner, mirror of the remote."""

    def __init__(self, opts: SyncOptions, *, watch: bool = False,
                 on_cycle: Callable[[CycleReport], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.on_bytes = on_bytes
        self.opts = opts
        self.sid = opts.id
        self.watching = watch
        self.on_cycle = on_cycle
        self.base = state.load_base(self.sid)
        self.scanner = Scanner(opts.local, opts.excludes)
        self.cache_file = str(state.sync_dir() / f"{self.sid}.scan")
        self.scanner.load_cache(self.cache_file)  # a fresh process need not hash it all
        self.cache_saved = self.scanner.edits  # the file holds the cache as of this edit
        self.remote_tree: dict[str, Entry] = {}
        self.remote_unstable: set[str] = set()
        self.remote_dirty = True
        self.full_next = True
        self.full_rescan = True  # both sides scan everything (first cycle, periodic, retries)
        self.agent: RemoteAgent | None = None
        self.conn: Any = None
        self.prescan: asyncio.Future | None = None  # a one-shot's first local scan, begun early
        self.changes: Any = None  # watch.Debouncer in watch mode
        self.conflicts: dict[str, Conflict] = {}
        self.remote_changed: set[str] | None = None  # paths the last TREE delta touched
        self.retry: set[str] = set()  # unstable or failed last cycle: look again
        self.base_dirty = False
        self.base_saved = 0.0
        self.record_sig: tuple = ()
        self.record_saved = 0.0
        self.record = state.SessionRecord(
            id=self.sid, name=opts.name, local=str(opts.local), remote=opts.remote,
            mode=opts.mode.value, watch=watch, pid=os.getpid(), started=time.time(),
            excludes=list(opts.excludes))

    # -- connection --------------------------------------------------------------------
    def _remote_changed(self) -> None:
        self.remote_dirty = True
        if self.changes is not None:
            self.changes.poke_now()

    async def connect(self) -> None:
        from tether.link.profiles import load_profile
        from tether.link.transport import open_ssh

        profile = load_profile(self.opts.name)
        self.conn = await open_ssh(profile, keepalive_s=10.0 if self.watching else None)
        agent = RemoteAgent(self.conn, self.opts.name, self._remote_changed, self.on_bytes)
        try:
            ready = await agent.start(agent_command_line(self.opts), {
                "v": P.VERSION, "root": self.opts.remote, "excludes": list(self.opts.excludes),
                "create": not self.base, "watch": self.watching,
                "cache": os.environ.get("TETHER_SYNC_REMOTE_CACHE", "1") != "0"})
        except errors.ConnectError as exc:
            alive = not self.conn.is_closed()
            await agent.aclose()
            self.conn.close()
            if alive:  # the link is fine: the agent itself could not start
                raise errors.PeerError(
                    f"the sync agent did not start on {self.opts.name!r}"
                    f"{exc.message.partition('exited')[2]}",
                    "install tether on the workspace (the same version), or point "
                    "TETHER_SYNC_AGENT at it, e.g. '/opt/venv/bin/tether agent sync'") from exc
            raise
        except BaseException:
            await agent.aclose()
            self.conn.close()
            raise
        self.agent = agent
        self.record.agent_pid = ready.get("pid")
        self.remote_tree, self.remote_dirty, self.full_next = {}, True, True

    async def disconnect(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await agent.aclose()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):  # it is going away regardless
                await asyncio.wait_for(conn.wait_closed(), 2.0)

    # -- one cycle ---------------------------------------------------------------------
    async def _scan_both(self) -> Any:
        agent = self.agent
        assert agent is not None
        scan_remote = self.remote_dirty or not self.watching
        if scan_remote:
            self.remote_dirty = False
            await agent.send(P.encode_json(P.T.SCAN, {
                "full": self.full_next, "partial": self.watching and not self.full_rescan}))
            await agent.flush()  # the agent scans while we do
        if self.prescan is not None:
            prescan, self.prescan = self.prescan, None
            local = await prescan
        elif self.watching and not self.full_rescan and self.scanner.last is not None:
            local = self.scanner.scan_paths(self.changes.dirty.take())  # small: inline
        else:
            if self.changes is not None:
                self.changes.dirty.take()
            local = await asyncio.to_thread(self.scanner.scan)
        self.full_rescan = False
        if scan_remote:
            delta = P.decode_tree((await agent.expect(P.T.TREE)).payload)
            self.full_next = False
            self.remote_tree = P.apply_delta(self.remote_tree, delta)
            self.remote_unstable = set(delta.unstable)
            self.remote_changed = None if delta.full or not self.watching \
                else set(delta.changed) | set(delta.removed)
        else:
            self.remote_changed = set()
        return local

    def _check_halt(self, local: Any) -> None:
        if local.root_missing and not self.base:
            raise errors.UsageError(f"the local sync root {self.opts.local} does not exist",
                                    "create it, or check the path")
        reason = halt_reason(self.base, local.tree, self.remote_tree, self.opts.mode)
        if reason:
            raise errors.SyncHaltedError(
                f"sync {self.sid} halted: {reason}; nothing was deleted on the other side",
                "restore the folder; if the deletion is meant, delete the same files on "
                "the other side too and sync again")

    def _candidates(self, local: Any, resolutions: Mapping[str, Keep]) -> set[str] | None:
        """Paths that may need work this cycle; None: all of them (after a full scan)."""
        if local.changed is None or self.remote_changed is None:
            return None
        out = local.changed | self.remote_changed | self.retry | set(resolutions)
        out |= local.unstable | self.remote_unstable
        return out

    async def cycle(self) -> CycleReport:
        t0 = time.monotonic()
        agent = self.agent
        assert agent is not None
        sent0, recv0 = agent.bytes_sent, agent.bytes_received
        local = await self._scan_both()
        self._check_halt(local)
        resolutions = state.take_resolutions(self.sid)
        paths = self._candidates(local, resolutions)
        skip = local.unstable | self.remote_unstable
        actions, conflicts = reconcile(
            self.base, local.tree, self.remote_tree, self.opts.mode, stamp=_stamp(),
            skip=skip, resolutions=resolutions, paths=paths)
        open_ = [c for c in conflicts if c.resolved is None]
        if paths is None:
            self.conflicts = {c.path: c for c in open_}
        else:  # a conflict changes only when one of its paths does
            for p in paths:
                self.conflicts.pop(p, None)
            self.conflicts.update((c.path, c) for c in open_)
        report = CycleReport(conflicts=sorted(self.conflicts.values(), key=lambda c: c.path),
                             unstable=sorted(skip),
                             auto_resolved=[c for c in conflicts if c.resolved])
        report.new_copies = sum(1 for a in actions if a.source)
        done: list[Action] = []
        up = [a for a in actions if a.dst is Side.REMOTE]
        down = [a for a in actions if a.dst is Side.LOCAL]
        if up:
            done += await self._upload(up, report)
        if down:
            done += await self._download(down, report)
        new_base = advance_base(self.base, local.tree, self.remote_tree, done, paths)
        for a in done:
            if a.dst is Side.REMOTE:
                if a.op is Op.DELETE:
                    self.remote_tree.pop(a.path, None)
                else:
                    self.remote_tree[a.path] = a.entry  # type: ignore[assignment]
        touched = (paths | {a.path for a in done}) if paths is not None else None
        if touched is None:
            self.base_dirty |= new_base != self.base
        else:
            self.base_dirty |= any(new_base.get(p) != self.base.get(p) for p in touched)
        self.base = new_base
        self.retry = set(skip) | {p for _, p, _ in report.failed}
        if self.base_dirty and (not self.watching or
                                time.monotonic() - self.base_saved >= BASE_SAVE_EVERY_S):
            self.flush_base()
        report.bytes_sent = agent.bytes_sent - sent0
        report.bytes_received = agent.bytes_received - recv0
        report.duration_s = time.monotonic() - t0
        return report

    def flush_base(self) -> None:
        """Save the base (and the stat cache) if it changed. Watch mode saves at most every
        few seconds: a base that is a little old is safe (both sides equal on a path is
        never a conflict), and a stale stat cache only costs hashing."""
        if self.base_dirty:
            state.save_base(self.sid, self.base)
            self.base_dirty = False
            self.base_saved = time.monotonic()
            self.save_cache()

    def save_cache(self) -> None:
        """Write the stat cache if it changed since it was last written (a one-shot run
        used to write the same 10k entries twice: after the cycle and on the way out)."""
        edits = self.scanner.edits
        if edits == self.cache_saved:
            return
        try:
            self.scanner.save_cache(self.cache_file)
            self.cache_saved = edits
        except OSError:
            pass  # only a cache: the next run hashes again

    @staticmethod
    def _count(done: list[Action], report: CycleReport) -> None:
        for a in done:
            if a.op is Op.DELETE:
                if a.dst is Side.LOCAL:
                    report.deleted_local += 1
                else:
                    report.deleted_remote += 1
            elif a.dst is Side.LOCAL:
                report.downloaded += 1
            else:
                report.uploaded += 1

    @staticmethod
    def _settle(actions: list[Action], side: Side, done_paths: set[str],
                failed: Sequence[Sequence[str]], report: CycleReport) -> list[Action]:
        by_path = {a.path: a for a in actions}
        report.failed += [(side.value, p, why) for p, why in failed]
        done = [by_path[p] for p in done_paths if p in by_path]
        Session._count(done, report)
        return done

    async def _upload(self, actions: list[Action], report: CycleReport) -> list[Action]:
        agent = self.agent
        assert agent is not None
        delta = [a for a in actions if a.op is Op.COPY and _delta_worthy(a)]
        sigs: dict[str, list] = {}
        if delta:
            await agent.send(P.encode_json(P.T.SIGS, {"paths": [a.path for a in delta]}))
            reply = await agent.expect(P.T.SIGS_REPLY)
            sigs = dict(zip((a.path for a in delta), P.decode_sigs(reply.payload)))
        clones = _clone_sources(actions, self.remote_tree)
        for a in _sources_last(actions, clones):
            if a.op is Op.DELETE:
                await agent.send(P.encode_json(P.T.DELETE, {
                    "path": a.path, "expect": P.entry_to_json(a.expect)}))
                continue
            assert a.entry is not None
            for frame in send_frames(self.scanner, a.src_path, a.entry, a.expect,
                                     sigs.get(a.path), dest=a.path,
                                     clone_from=clones.get(a.path)):
                if agent.put(frame):
                    await agent.flush()
        await agent.send(P.encode_json(P.T.COMMIT, {}))
        result = (await agent.expect(P.T.RESULT)).json()
        return self._settle(actions, Side.REMOTE, set(result.get("done", [])),
                            result.get("failed", []), report)

    async def _download(self, actions: list[Action], report: CycleReport) -> list[Action]:
        agent = self.agent
        assert agent is not None
        receiver = Receiver(self.scanner)
        local_tree = self.scanner.last.tree if self.scanner.last else {}
        clones = _clone_sources(actions, local_tree)
        copies = []
        for a in _sources_last(actions, clones):
            if a.op is Op.DELETE:
                receiver.delete(a.path, a.expect)
            elif a.path in clones:  # a rename here: no bytes over the link
                receiver.begin(a.path, a.entry, a.expect)  # type: ignore[arg-type]
                receiver.clone(clones[a.path])
                receiver.end()
            else:
                copies.append(a)
        if copies:
            items, sig_lists = [], []
            for a in copies:
                worthy = _delta_worthy(a)
                if worthy:
                    try:
                        sig_lists.append(await asyncio.to_thread(
                            chunk_sigs, self.scanner.full(a.path)))
                    except OSError:
                        sig_lists.append([])
                items.append([a.src_path, P.entry_to_json(a.entry), P.entry_to_json(a.expect),
                              a.path, worthy])
            await agent.send(P.encode_json(P.T.GET, {"items": items}))
            await agent.send(P.encode(P.T.SIGS_REPLY, P.encode_sigs(sig_lists)))
            await agent.flush()
            while True:
                frame = await agent.recv()
                if frame.type is P.T.RESULT:
                    break
                if not receiver.handle(frame):
                    raise errors.ProtocolError(f"unexpected {frame.type.name} in a GET reply")
        applied, failed = receiver.result()
        return self._settle(actions, Side.LOCAL, {p for p, _ in applied}, failed, report)


def _clone_sources(actions: list[Action], tree: Mapping[str, Entry]) -> dict[str, str]:
    """New large files whose content the receiving side already holds at another path
    (renames, copies): dest path -> that path."""
    wanted = {a.entry.digest: a for a in actions if a.op is Op.COPY and a.entry is not None
              and a.entry.kind is Kind.FILE and a.entry.size >= DELTA_MIN}
    if not wanted:
        return {}
    out: dict[str, str] = {}
    for path, e in tree.items():
        a = wanted.get(e.digest) if e.kind is Kind.FILE else None
        if a is not None and path != a.path and a.path not in out:
            out[a.path] = path
    return out


def _sources_last(actions: list[Action], clones: Mapping[str, str]) -> list[Action]:
    """Deletes of clone sources run after the copies that read them (a rename: the old
    name goes only once the new one exists); everything else keeps its order."""
    if not clones:
        return actions
    sources = set(clones.values())
    held = [a for a in actions if a.op is Op.DELETE and a.path in sources]
    return [a for a in actions if not (a.op is Op.DELETE and a.path in sources)] + held


def _delta_worthy(a: Action) -> bool:
    return (a.entry is not None and a.entry.kind is Kind.FILE and a.entry.size >= DELTA_MIN
            and a.expect is not None and a.expect.kind is Kind.FILE)


# -- running sessions ------------------------------------------------------------------------


def make_options(name: str, local: str | os.PathLike, remote: str | None = None, *,
                 mode: Mode | str = Mode.TWO_WAY_SAFE, excludes: Sequence[str] = (),
                 agent_command: str | None = None) -> SyncOptions:
    """Validated options: the local root must be a directory; REMOTE defaults to its name."""
    try:
        mode = Mode(mode)
    except ValueError as exc:
        raise errors.UsageError(f"unknown sync mode {mode!r}",
                                "one of: " + ", ".join(m.value for m in Mode)) from exc
    root = Path(local).expanduser().resolve()
    if not root.is_dir():
        raise errors.UsageError(f"the local sync root {root} is not a directory",
                                "create it first, or check the path")
    check_patterns(list(excludes))
    from tether.link.profiles import load_profile

    load_profile(name)  # NotFoundError (hint: tether hosts) before any session is recorded
    if remote is not None and not remote.strip():
        raise errors.UsageError("the remote root is empty", "give a path, e.g. work/proj")
    return SyncOptions(name, root, remote or root.name, mode, tuple(excludes), agent_command)


def _note(session: Session, report: CycleReport | None, status: str,
          error: str | None = None, *, lazy: bool = False) -> None:
    """Update the session record; ``lazy``: write only if something a reader sees changed
    (status, conflicts) or a few seconds passed (watch mode writes it after every cycle)."""
    rec = session.record
    if lazy and report is not None:
        sig = (status, error, tuple(c.path for c in report.conflicts))
        now = time.monotonic()
        if sig == session.record_sig and now - session.record_saved < BASE_SAVE_EVERY_S:
            rec.cycles += 1
            return
        session.record_sig, session.record_saved = sig, now
    elif not lazy:
        session.record_sig = ()  # the next lazy note writes again
    rec.status, rec.error = status, error
    if report is not None:
        rec.cycles += 1
        rec.last_cycle = time.time()
        rec.conflicts = [c.to_dict() for c in report.conflicts]
        rec.stats = {"uploaded": report.uploaded, "downloaded": report.downloaded,
                     "deleted_local": report.deleted_local,
                     "deleted_remote": report.deleted_remote,
                     "failed": len(report.failed), "duration_s": round(report.duration_s, 4)}
    state.save_record(rec)


async def run_session(opts: SyncOptions, *, watch: bool = False,
                      on_cycle: Callable[[CycleReport], None] | None = None,
                      stop: asyncio.Event | None = None,
                      on_bytes: Callable[[int], None] | None = None) -> SyncResult:
    """Sync until in step (one-shot) or until stopped (watch). Records itself for `sync list`.

    ``on_bytes(n)`` is called for every n bytes crossing the link (progress bars).
    """
    _refuse_second(opts)
    session = Session(opts, watch=watch, on_cycle=on_cycle, on_bytes=on_bytes)
    result = SyncResult(session.sid, opts.name, str(opts.local), opts.remote, opts.mode.value)
    t0 = time.monotonic()
    _note(session, None, "starting")
    try:
        if watch:
            await _watch(session, result, on_cycle, stop)
        else:
            # The local scan (hashing included) needs no link: run it while the connection
            # and the remote agent start. The remote side scans only after SCAN, so it
            # still looks later than this side, as it does in every cycle.
            session.prescan = asyncio.ensure_future(asyncio.to_thread(session.scanner.scan))
            try:
                await session.connect()
            except BaseException:
                with contextlib.suppress(Exception):  # the connect error is the one to report
                    await session.prescan
                session.prescan = None
                raise
            for _ in range(MAX_ONESHOT_CYCLES):
                report = await session.cycle()
                result.add(report)
                if on_cycle:
                    on_cycle(report)
                # Another cycle only when this one left work for it: conflict copies to
                # carry across, files that were busy or changed under an apply.
                if not (report.new_copies or report.failed or report.unstable):
                    break
            _note(session, report, "idle")
    except errors.SyncHaltedError as exc:
        _note(session, None, "halted", exc.message)
        raise
    except errors.TetherError as exc:
        _note(session, None, "error", exc.message)
        raise
    except asyncio.CancelledError:
        _note(session, None, "stopped")
        raise
    finally:
        session.flush_base()
        session.save_cache()
        await session.disconnect()
        result.duration_s = time.monotonic() - t0
    return result


def _refuse_second(opts: SyncOptions) -> None:
    """Two processes must not run one session: both would advance the same base."""
    try:
        rec = state.load_record(opts.id)
    except errors.NotFoundError:
        return
    if rec.running and rec.pid != os.getpid():
        raise errors.InUseError(f"sync session {rec.id} is already running (pid {rec.pid})",
                                f"tether sync stop {rec.id}, or let it do the work")


async def _watch(session: Session, result: SyncResult,
                 on_cycle: Callable[[CycleReport], None] | None,
                 stop: asyncio.Event | None) -> None:
    from tether.sync.watch import Debouncer, start_observer

    session.changes = Debouncer()
    try:
        observer = start_observer(str(session.opts.local), session.changes.poke)
        idle_s = RESCAN_EVERY_S
    except OSError:  # e.g. the inotify watch limit: rescan everything every few seconds
        observer, idle_s = None, POLL_S
    loop = asyncio.get_running_loop()
    try:  # `tether sync resolve` sends SIGUSR1: run a cycle now to apply the resolution
        loop.add_signal_handler(signal.SIGUSR1, session.changes.poke_now)
    except (RuntimeError, ValueError, NotImplementedError):
        pass  # not the main thread: resolutions wait for the next change or rescan
    attempt = 0
    stopper = asyncio.create_task(_poke_on(stop, session.changes)) if stop else None
    try:
        while stop is None or not stop.is_set():
            try:
                if session.agent is None:
                    await session.connect()
                    session.full_rescan = True
                    attempt = 0
                report = await session.cycle()
            except errors.ConnectError as exc:
                await session.disconnect()
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                _note(session, None, "reconnecting", exc.message)
                await session.changes.wait(delay)  # a stop request cuts it short
                continue
            result.add(report)
            if on_cycle:
                on_cycle(report)
            _note(session, report, "watching", lazy=True)
            if report.unstable or report.failed:
                # retry soon: a file was mid-write, or changed under an apply
                retry = report.unstable + [p for _, p, _ in report.failed]
                asyncio.get_running_loop().call_later(0.2, session.changes.poke, retry)
                session.remote_dirty = True
            got = await session.changes.wait(BASE_SAVE_EVERY_S if session.base_dirty
                                             else idle_s)
            if not got and session.base_dirty:
                session.flush_base()  # quiet now: write the base down
                got = await session.changes.wait(idle_s)
            if not got:
                session.remote_dirty = session.full_rescan = True  # now and then: everything
            if stop is not None and stop.is_set():
                break
        _note(session, None, "stopped")
    finally:
        if observer is not None:
            observer.stop()
        if stopper is not None:
            stopper.cancel()
        try:
            loop.remove_signal_handler(signal.SIGUSR1)
        except (RuntimeError, ValueError, NotImplementedError):
            pass


async def _poke_on(stop: asyncio.Event, changes: Any) -> None:
    await stop.wait()
    changes.poke_now()


async def sync_once_async(name: str, local: str | os.PathLike, remote: str | None = None, *,
                          mode: Mode | str = Mode.TWO_WAY_SAFE, excludes: Sequence[str] = (),
                          agent_command: str | None = None,
                          on_bytes: Callable[[int], None] | None = None) -> SyncResult:
    """Sync ``local`` with ``remote`` on host ``name`` once (until both sides are in step)."""
    opts = make_options(name, local, remote, mode=mode, excludes=excludes,
                        agent_command=agent_command)
    return await run_session(opts, on_bytes=on_bytes)


async def watch_async(name: str, local: str | os.PathLike, remote: str | None = None, *,
                      mode: Mode | str = Mode.TWO_WAY_SAFE, excludes: Sequence[str] = (),
                      agent_command: str | None = None,
                      on_cycle: Callable[[CycleReport], None] | None = None,
                      stop: asyncio.Event | None = None) -> SyncResult:
    """Keep ``local`` and ``remote`` in step until ``stop`` is set or the task is cancelled."""
    opts = make_options(name, local, remote, mode=mode, excludes=excludes,
                        agent_command=agent_command)
    return await run_session(opts, watch=True, on_cycle=on_cycle, stop=stop)
