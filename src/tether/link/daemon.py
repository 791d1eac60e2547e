"""The local link daemon: keeps SSH connections warm for `tether exec`, `shell`, `status`
and `cp`.

A fresh SSH connection through the gateway costs 400-650 ms; the CLI instead hands its
request to this daemon over a unix socket (frames in :mod:`tether.link.wire`, spec in
docs/link-daemon.md) and the daemon runs it on a warm connection: a command (``exec``), the
status probe (``status``) or a whole SFTP copy (``copy``, with the CLI's cwd for its relative
local paths; progress streams back as ``P`` frames). The CLI starts it on demand
(:func:`tether.link.daemon_client.connect`); it exits after ``TETHER_LINK_DAEMON_IDLE``
seconds (default 600) without a client.

Trust: the socket lives in ``state_dir()/link`` (0700) and is itself 0600; every client's
uid is checked with SO_PEERCRED. One daemon per state dir, held by an flock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from tether import errors, paths
from tether._compat import TaskGroup
from tether.link import wire

log = logging.getLogger("tether.link.daemon")
HIGH_WATER = 1 << 20  # bytes queued to a client before remote output is paused
DEFAULT_IDLE_S = 600.0
PROGRESS_EVERY_S = 0.1  # copy progress is coalesced to at most this often (Rich's refresh)


def link_dir() -> Path:
    return paths.state_dir() / "link"


def socket_path() -> Path:
    return link_dir() / "daemon.sock"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _error_payload(exc: errors.TetherError) -> dict:
    return {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint}


class _Interrupted(Exception):
    """The client sent a SIGNAL frame during a status/copy: the work was cancelled."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _ClientGone(Exception):
    """The client hung up during a status/copy: the work was cancelled, nobody to answer."""


async def _wait_for_cancel(reader: asyncio.StreamReader) -> str | None:
    """The first SIGNAL frame's name, or None once the client hangs up (other frames are
    ignored: a status or copy takes no input)."""
    try:
        while True:
            kind, payload = await _read_frame(reader)
            if kind == wire.SIGNAL:
                return payload.decode("ascii", "replace") or "INT"
    except (asyncio.IncompleteReadError, ConnectionError, wire.WireError):
        return None


class Daemon:
    def __init__(self, idle_s: float) -> None:
        from tether.link.pool import LinkPool

        self.pool = LinkPool()
        self.idle_s = idle_s
        self.active = 0
        self.last_used = time.monotonic()
        self.stop = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            uid = _peer_uid(writer)
            if uid is not None and uid != os.getuid():
                log.warning("refused a client with uid %s", uid)
                return
            await self._serve_client(reader, writer)
        except (ConnectionError, wire.WireError, asyncio.IncompleteReadError) as exc:
            log.info("client went away: %s", exc)
        except Exception:  # noqa: BLE001 - one broken client must not end the daemon
            log.exception("client handler failed")
        finally:
            self.active -= 1
            self.last_used = time.monotonic()
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        kind, payload = await _read_frame(reader)
        if kind != wire.OPEN:
            raise wire.WireError("first frame must be OPEN")
        request = json.loads(payload)
        if request.get("v") != wire.VERSION:
            writer.write(wire.encode_json(wire.ERROR, _error_payload(errors.ProtocolError(
                f"link daemon speaks v{wire.VERSION}, client sent v{request.get('v')}",
                "an older daemon is running; it exits when idle (or kill the pid in daemon.log)"))))
            return
        op = request.get("op")
        if op == "ping":
            writer.write(wire.encode_json(wire.REPLY, {"pid": os.getpid(),
                                                       "hosts": self.pool.names(),
                                                       "agents": self.pool.agent_states(),
                                                       "opens": self.pool.open_counts()}))
        elif op == "shutdown":
            writer.write(wire.encode_json(wire.REPLY, {"pid": os.getpid()}))
            self.stop.set()
        elif op == "exec":
            try:
                outcome = await self._exec(request, reader, writer)
            except errors.TetherError as exc:
                writer.write(wire.encode_json(wire.ERROR, _error_payload(exc)))
            else:
                writer.write(wire.encode_json(wire.EXIT, outcome))
        elif op in ("status", "copy"):
            # "accepted" first: a client that sees the socket close before any frame knows it
            # met an older daemon (which drops unknown ops) and runs the request itself.
            writer.write(wire.encode_json(wire.PROGRESS, {"event": "accepted"}))
            work = self._status(request) if op == "status" else self._copy(request, writer)
            try:
                answer = await self._cancellable(reader, work)
            except errors.TetherError as exc:
                writer.write(wire.encode_json(wire.ERROR, _error_payload(exc)))
            except _Interrupted as exc:
                number = getattr(signal, f"SIG{exc.name}", signal.SIGINT)
                writer.write(wire.encode_json(wire.EXIT, {"exit_code": 128 + int(number),
                                                          "signal": exc.name}))
            except _ClientGone:
                return
            else:
                writer.write(wire.encode_json(wire.REPLY, answer))
        else:
            payload = _error_payload(errors.ProtocolError(
                f"the link daemon does not know the request {op!r}",
                "an older daemon is running; it exits when idle"))
            writer.write(wire.encode_json(wire.ERROR, {**payload, "unknown_op": True}))
        await writer.drain()

    async def _cancellable(self, reader: asyncio.StreamReader, work: Any) -> Any:
        """Run ``work`` until it ends, or until the client sends a SIGNAL frame or hangs up:
        then cancel it and wait for its clean-up (a copy removes its temporaries on that
        path) before raising _Interrupted / _ClientGone."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_wait_for_cancel(reader))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done() and not watch.done():  # the daemon itself is stopping
                task.cancel()
                watch.cancel()
        if task.done():
            watch.cancel()
            await asyncio.wait({watch}, timeout=1.0)
            return task.result()
        task.cancel()
        await asyncio.wait({task})  # the clean-up (no timeout: the client decides how long)
        if not task.cancelled() and task.exception() is not None:
            log.info("cancelled request ended with %r", task.exception())
        name = watch.result()
        if name is None:
            raise _ClientGone
        raise _Interrupted(name)

    async def _status(self, request: dict) -> dict:
        from tether.link.api import status_async

        name = request.get("name")
        if not isinstance(name, str):
            raise errors.ProtocolError("a status request needs a host 'name'")
        return (await status_async(name, pool=self.pool)).to_dict()

    async def _copy(self, request: dict, writer: asyncio.StreamWriter) -> dict:
        import dataclasses

        from tether.link.copy import copy_on, split_direction

        sources, dest, cwd = request.get("sources"), request.get("dest"), request.get("cwd")
        if not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)
                and isinstance(dest, str)):
            raise errors.ProtocolError("a copy request needs 'sources' and 'dest' strings")
        if not (isinstance(cwd, str) and os.path.isabs(cwd)):
            # The daemon's own cwd is "/": it never resolves a client's relative path itself.
            raise errors.ProtocolError("a copy request needs the client's absolute 'cwd'")
        host, upload, paths, target = split_direction(sources, dest)
        conn = await self.pool.get(host)
        progress = _CopyProgress(writer) if request.get("progress", True) else None
        result = await copy_on(conn, (host, upload, paths, target),
                               recursive=bool(request.get("recursive")),
                               on_plan=progress.on_plan if progress else None, local_cwd=cwd)
        if progress is not None:
            progress.flush()
        return dataclasses.asdict(result)

    async def _exec(self, request: dict, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> dict:
        from tether.link import exec as lexec

        command = request.get("command")
        line = None
        if command:
            line = command[0] if len(command) == 1 else command
            env = lexec.parse_env([f"{k}={v}" for k, v in request.get("env") or []])
            line = lexec.build_command(line, cwd=request.get("cwd"), env=env)
        elif request.get("cwd") or request.get("env"):
            raise errors.UsageError("--cwd and --env need a command")
        pty = request.get("pty")
        pty_spec = lexec.PtySpec(pty["term"], pty["cols"], pty["rows"]) if pty else None
        conn = await self.pool.get(request["name"])
        paused = False
        proc: lexec.RemoteProcess | None = None
        tasks: list[asyncio.Task] = []

        async def drain_then_resume() -> None:
            nonlocal paused
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            paused = False
            if proc is not None:
                proc.resume_output()

        def on_output(stream: int, data: bytes) -> None:
            nonlocal paused
            writer.write(wire.encode(wire.STDOUT if stream == lexec.STDOUT else wire.STDERR,
                                     data))
            if (not paused and proc is not None
                    and writer.transport.get_write_buffer_size() > HIGH_WATER):
                paused = True
                proc.pause_output()
                tasks[:] = [t for t in tasks if not t.done()]
                tasks.append(asyncio.get_running_loop().create_task(drain_then_resume()))

        proc = await lexec.start(conn, line, on_output=on_output, pty=pty_spec)
        if not request.get("stdin", True):
            proc.write_eof()
        tasks.append(asyncio.create_task(self._client_input(reader, proc)))
        try:
            outcome = await proc.wait()
        finally:
            for task in tasks:  # the input pump and any pending drain: none outlives the exec
                task.cancel()
            # Not gather(): on 3.11 asyncssh's run() (wait_for inside) can swallow a cancel
            # that lands as it finishes, and the pump would then wait for the next frame.
            await asyncio.wait(tasks, timeout=1.0)
            proc.close()
        return {"exit_code": outcome.exit_code, "signal": outcome.signal}

    async def _client_input(self, reader: asyncio.StreamReader, proc: Any) -> None:
        """Client frames -> the remote process; the client hanging up closes the channel."""
        try:
            while not proc.finished:
                kind, payload = await _read_frame(reader)
                if kind == wire.STDIN:
                    await proc.write(payload)
                elif kind == wire.WINCH:
                    size = json.loads(payload)
                    proc.resize(int(size["cols"]), int(size["rows"]))
                elif kind == wire.SIGNAL:
                    name = payload.decode("ascii")
                    delivered = await proc.send_signal(name)
                    log.info("SIG%s for %r: %s", name, proc.command,
                             "delivered" if delivered else "no process found")
        except (asyncio.IncompleteReadError, ConnectionError):
            # The user's process is gone (Ctrl-C twice, killed): hang up the remote command
            # like a closing terminal would, instead of leaving it running unattended.
            if not proc.finished:
                await proc.send_signal("HUP")
            proc.close()

    async def watch_idle(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(min(1.0, self.idle_s))
            if self.active == 0 and time.monotonic() - self.last_used > self.idle_s:
                log.info("idle for %.0fs, exiting", self.idle_s)
                self.stop.set()


class _CopyProgress:
    """A copy's progress as ``P`` events: the plan once, then byte counts coalesced to one
    event per ``PROGRESS_EVERY_S`` (asyncssh reports every block)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending = 0
        self.sent_at = 0.0

    def on_plan(self, plan: Any) -> Any:
        self._send({"event": "plan", "files": len(plan.files), "bytes": plan.total_bytes})
        return self.advance

    def advance(self, n: int) -> None:
        self.pending += n
        if time.monotonic() - self.sent_at >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self._send({"event": "advance", "bytes": self.pending})
            self.pending = 0

    def _send(self, event: dict) -> None:
        self.sent_at = time.monotonic()
        if not self.writer.is_closing():
            self.writer.write(wire.encode_json(wire.PROGRESS, event))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(wire.HEADER.size)
    kind, size = wire.HEADER.unpack(header)
    if kind not in wire.KINDS or size > wire.MAX_PAYLOAD:
        raise wire.WireError(f"bad frame {kind!r}/{size}")
    return kind, await reader.readexactly(size) if size else b""


def _listen(path: Path) -> socket.socket:
    """Bind the socket 0600 (umask during bind: no window where it is wider)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


async def serve(idle_s: float) -> None:
    directory = paths.ensure_dir(link_dir())
    os.chmod(directory, paths.PRIVATE_DIR_MODE)
    lock = open(directory / "daemon.lock", "a+")  # noqa: SIM115 - held for the lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another daemon holds %s; exiting", directory / "daemon.lock")
        return
    daemon = Daemon(idle_s)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # clean exit: no stale socket
        asyncio.get_running_loop().add_signal_handler(signum, daemon.stop.set)
    server = await asyncio.start_unix_server(daemon.handle, sock=_listen(socket_path()))
    log.info("listening on %s (pid %s)", socket_path(), os.getpid())
    try:
        async with TaskGroup() as tg:
            idle = tg.create_task(daemon.watch_idle())
            await daemon.stop.wait()
            idle.cancel()
    finally:
        with contextlib.suppress(FileNotFoundError):
            socket_path().unlink()
        server.close()
        await daemon.pool.aclose()
        lock.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # it logs every channel
    os.chdir("/")
    idle = float(os.environ.get("TETHER_LINK_DAEMON_IDLE", DEFAULT_IDLE_S))
    asyncio.run(serve(idle))


if __name__ == "__main__":
    main()
