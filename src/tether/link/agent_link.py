"""The local half of the exec agent: commands without the login shell's rc cost.

sshd runs each command as ``$SHELL -c CMD``, and on Debian bash then sources ~/.bashrc, which
on real hosts (``pyenv init``, conda, nvm) costs 100-400 ms per command. On a warm connection
:class:`AgentLink` instead opens ONE long-lived session channel running the remote agent
(:mod:`tether.link.exec_agent`, shipped over the channel; python3 is all the host needs). It
is started through the login shell once, so it captures the environment the rc files produce,
and spawns every later command itself with that environment and the rc files skipped.
Concurrent commands are multiplexed on that channel (frames: docs/exec-agent.md).

Which commands go through it (:func:`tether.link.exec.start`): those without a PTY on a
connection whose pool enabled agents (:func:`enable`); the rest, and every command on a host
without python3, use a plain SSH session channel as before. The environment is captured
when the agent starts, i.e. once per warm connection: rc-file changes apply to new
connections. ``TETHER_EXEC_AGENT=0`` turns the agent off.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import shlex
import struct
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from tether import errors
from tether._compat import timeout

log = logging.getLogger("tether.link.agent")

VERSION = 1
MARK = b"\x00TETHER-EXEC-AGENT\x00"
HEADER = struct.Struct(">cII")
CREDIT = struct.Struct(">I")
MAX_PAYLOAD = 1 << 20
OUT_WINDOW = 1 << 20  # output bytes a command may have in flight before the agent waits
GRANT_AT = OUT_WINDOW // 4
START_TIMEOUT_S = 30.0
NO_PYTHON = 97  # the launch script's exit status when the host has no python3
MAX_RESTARTS = 3

# local -> agent
HELLO, RUN, STDIN, SIGNAL, GRANT, CLOSE = b"V", b"R", b"I", b"S", b"W", b"K"
# agent -> local (HELLO too)
STDOUT, STDERR, EXIT, FAILED, INPUT_CREDIT, FATAL = b"O", b"E", b"X", b"F", b"C", b"Z"
KINDS_OUT = frozenset({HELLO, STDOUT, STDERR, EXIT, FAILED, INPUT_CREDIT, FATAL})
# what the agent may be asked to send (any other name is a protocol error there)
SIGNALS = frozenset({"INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "WINCH", "CONT",
                     "STOP", "TSTP", "ALRM"})

BOOTSTRAP = ('import os;f=os.fdopen(3,"rb");n=int(f.readline());'
             'exec(compile(f.read(n),"tether-exec-agent","exec"))')


# -- pure -----------------------------------------------------------------------------------


def launch_command() -> str:
    """What the login shell runs to start the agent (any shell: it only ``exec``s sh).

    fd 3 keeps the channel's stdin (the agent's frames); fd 0 of python3 gets ``env -0``: the
    environment exactly as the login shell left it, before a python wrapper (pyenv's shims
    prepend to PATH) touches it. -I -S: no PYTHON* variables, no site-packages, no .pth.
    """
    script = ("exec 3<&0; { env -0 2>/dev/null || :; } | "
              f"{{ command -v python3 >/dev/null 2>&1 || exit {NO_PYTHON}; "
              f"exec python3 -I -S -c {shlex.quote(BOOTSTRAP)}; }}")
    return "exec /bin/sh -c " + shlex.quote(script)


def encode(kind: bytes, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, ident, len(payload)) + payload


def encode_json(kind: bytes, ident: int, obj: object) -> bytes:
    return encode(kind, ident, json.dumps(obj, separators=(",", ":")).encode())


class Decoder:
    """Agent output -> frames. Bytes before the agent's mark (rc-file noise) are skipped."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.marked = False
        self.skipped = b""

    def feed(self, data: bytes) -> list[tuple[bytes, int, bytes]]:
        self._buf += data
        if not self.marked:
            at = self._buf.find(MARK)
            if at < 0:
                keep = len(MARK) - 1  # a mark split across reads
                self.skipped = (self.skipped + bytes(self._buf[:-keep]))[-4096:]
                del self._buf[:-keep]
                return []
            self.skipped = (self.skipped + bytes(self._buf[:at]))[-4096:]
            del self._buf[:at + len(MARK)]
            self.marked = True
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, ident, size = HEADER.unpack_from(self._buf)
            if kind not in KINDS_OUT:
                raise errors.ProtocolError(f"the exec agent sent an unknown frame {kind!r}")
            if size > MAX_PAYLOAD:
                raise errors.ProtocolError(f"the exec agent sent a {size}-byte frame")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append((kind, ident, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames


@lru_cache(maxsize=1)
def agent_source() -> bytes:
    from importlib import resources

    return resources.files("tether.link").joinpath("exec_agent.py").read_bytes()


# -- I/O ------------------------------------------------------------------------------------


class State(enum.Enum):
    IDLE = "idle"  # not started (or restartable after the agent died)
    STARTING = "starting"
    READY = "ready"
    UNAVAILABLE = "unavailable"  # cannot start here (no python3...): plain channels


class AgentProcess:
    """A command running under the agent; the same surface as exec.RemoteProcess."""

    def __init__(self, link: AgentLink, ident: int, command: str,
                 on_output: Callable[[int, bytes], None]) -> None:
        self.link = link
        self.id = ident
        self.command = command
        self.on_output = on_output
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.in_credit = link.in_window
        self.has_credit = asyncio.Event()
        self.has_credit.set()
        self.owed = 0
        self.paused = False
        self.eof_sent = False
        self.closed = False

    @property
    def finished(self) -> bool:
        return self.done.done()

    # called by the link
    def _output(self, stream: int, data: bytes) -> None:
        if self.closed:
            return
        self.on_output(stream, data)
        self.owed += len(data)
        if not self.paused and self.owed >= GRANT_AT:
            self._grant()

    def _grant(self) -> None:
        if self.owed and not self.finished:
            self.link.send(GRANT, self.id, CREDIT.pack(self.owed))
        self.owed = 0

    def _credit(self, n: int) -> None:
        self.in_credit += n
        self.has_credit.set()

    def _finish(self, result: Any) -> None:
        self.has_credit.set()
        if self.done.done():
            return
        if isinstance(result, BaseException):
            self.done.set_exception(result)
            self.done.exception()  # retrieved: a closed, unwaited process must not warn
        else:
            self.done.set_result(result)

    # the RemoteProcess surface
    async def write(self, data: bytes) -> None:
        if not data:
            self.write_eof()
            return
        view = memoryview(data)
        while view and not self.finished and not self.eof_sent:
            await self.has_credit.wait()
            if self.finished:
                return
            n = min(self.in_credit, len(view), MAX_PAYLOAD)
            self.link.send(STDIN, self.id, bytes(view[:n]))
            view = view[n:]
            self.in_credit -= n
            if self.in_credit <= 0:
                self.has_credit.clear()

    def write_eof(self) -> None:
        if not self.finished and not self.eof_sent:
            self.eof_sent = True
            self.link.send(STDIN, self.id, b"")

    async def send_signal(self, name: str) -> bool:
        name = name.removeprefix("SIG")
        if self.finished or name not in SIGNALS:
            return False
        self.link.send(SIGNAL, self.id, name.encode("ascii"))
        return True

    def resize(self, cols: int, rows: int) -> None:
        pass  # no terminal: PTY commands never come here

    def pause_output(self) -> None:
        self.paused = True

    def resume_output(self) -> None:
        self.paused = False
        self._grant()

    def close(self) -> None:
        if self.finished or self.closed:
            return
        self.closed = True
        self.link.send(CLOSE, self.id)
        self.link.forget(self.id)
        self._finish(errors.ConnectError(f"{self.command!r} was closed before it finished"))

    async def wait(self) -> Any:
        from tether.link.exec import SessionOutcome, exit_code_of

        status, signal = await asyncio.shield(self.done)
        code = exit_code_of(status, signal)
        if code is None:
            raise errors.ProtocolError(f"the exec agent reported no exit status for "
                                       f"{self.command!r}")
        return SessionOutcome(code, signal)


class _Channel:
    """asyncssh session callbacks of the agent channel -> its link."""

    def __init__(self, link: AgentLink) -> None:
        self.link = link
        self.exit_status: int | None = None
        self.stderr = b""

    def connection_made(self, chan: Any) -> None:
        pass

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if datatype is None:
            self.link._received(data)
        else:
            self.stderr = (self.stderr + data)[-4096:]

    def eof_received(self) -> bool:
        return False

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, *args: Any) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(self, exc)

    def pause_writing(self) -> None:
        pass  # bounded by the per-command credits

    def resume_writing(self) -> None:
        pass


class AgentLink:
    """The agent of one SSH connection: started on first use, shared by its commands."""

    def __init__(self, conn: Any) -> None:
        self._conn = weakref.ref(conn)  # weak: the registry's key must be able to die
        self.state = State.IDLE
        self.reason = ""
        self.info: dict = {}
        self.in_window = 1 << 20
        self.restarts = 0
        self._chan: Any = None
        self._session: _Channel | None = None
        self._decoder = Decoder()
        self._hello: asyncio.Future | None = None
        self._lock = asyncio.Lock()
        self._procs: dict[int, AgentProcess] = {}
        self._next_id = 1

    async def start(self, command: str, on_output: Callable[[int, bytes], None],
                    ) -> AgentProcess | None:
        """Run ``command`` under the agent; None when the agent is unavailable here."""
        if len(command) > MAX_PAYLOAD - 64:  # a RUN frame could not carry it
            return None
        if self.state is not State.READY and not await self._ensure():
            return None
        ident = self._next_id
        self._next_id += 1
        proc = AgentProcess(self, ident, command, on_output)
        self.send_json(RUN, ident, {"cmd": command, "window": OUT_WINDOW})
        self._procs[ident] = proc  # no frame for it can arrive before this loop turn ends
        return proc

    async def _ensure(self) -> bool:
        async with self._lock:
            if self.state is State.READY:
                return True
            if self.state is State.UNAVAILABLE:
                return False
            self.state = State.STARTING
            try:
                await self._launch()
            except errors.TetherError as exc:
                self._give_up(exc.message)
                return False
            self.state = State.READY
            return True

    async def _launch(self) -> None:
        from tether.link._asyncssh import asyncssh

        conn = self._conn()
        if conn is None or conn.is_closed():
            raise errors.ConnectError("the connection is closed")
        self._decoder = Decoder()
        self._hello = asyncio.get_running_loop().create_future()
        try:
            chan, session = await conn.create_session(
                lambda: _Channel(self), launch_command(), encoding=None)
        except (asyncssh.Error, ConnectionError, OSError) as exc:
            raise errors.ConnectError(f"cannot open the exec agent's channel: {exc}") from exc
        self._chan, self._session = chan, session
        source = agent_source()
        chan.write(b"%d\n" % len(source) + source)
        try:
            async with timeout(START_TIMEOUT_S):
                hello = await self._hello
        except TimeoutError as exc:
            chan.close()
            raise errors.DeadlineError(f"no answer within {START_TIMEOUT_S:g}s") from exc
        if hello.get("v") != VERSION:
            chan.close()
            raise errors.ProtocolError(f"the agent speaks v{hello.get('v')}, not v{VERSION}")
        self.info = hello
        self.in_window = int(hello.get("in_window") or self.in_window)
        chan.write(encode_json(HELLO, 0, {"v": VERSION}))
        log.info("exec agent up (pid %s, python %s, shell %s)", hello.get("pid"),
                 hello.get("python"), hello.get("shell"))

    def _give_up(self, reason: str) -> None:
        self.state = State.UNAVAILABLE
        self.reason = reason
        log.info("exec agent unavailable, using plain channels: %s", reason)
        if self._chan is not None:
            self._chan.close()

    def send(self, kind: bytes, ident: int, payload: bytes = b"") -> None:
        if self.state is not State.READY or self._chan is None:
            raise errors.ConnectError("the exec agent's channel is closed",
                                      "the link dropped; try again")
        self._chan.write(encode(kind, ident, payload))

    def send_json(self, kind: bytes, ident: int, obj: object) -> None:
        self.send(kind, ident, json.dumps(obj, separators=(",", ":")).encode())

    def forget(self, ident: int) -> None:
        self._procs.pop(ident, None)

    # -- from the channel

    def _received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except errors.ProtocolError as exc:
            self._broken(exc)
            return
        for kind, ident, payload in frames:
            if kind == HELLO:
                if self._hello is not None and not self._hello.done():
                    self._hello.set_result(json.loads(payload))
                continue
            if kind == FATAL:
                self._broken(errors.ProtocolError(
                    f"the exec agent stopped: {json.loads(payload).get('message')}"))
                return
            proc = self._procs.get(ident)
            if proc is None:
                continue  # closed by us; its last frames may still arrive
            if kind in (STDOUT, STDERR):
                proc._output(1 if kind == STDOUT else 2, payload)
            elif kind == INPUT_CREDIT:
                proc._credit(CREDIT.unpack(payload)[0])
            elif kind == EXIT:
                result = json.loads(payload)
                del self._procs[ident]
                proc._finish((result.get("status"), result.get("signal")))
            elif kind == FAILED:
                del self._procs[ident]
                proc._finish(errors.PeerError(f"the host could not start {proc.command!r}: "
                                              f"{json.loads(payload).get('message')}"))

    def _broken(self, exc: errors.TetherError) -> None:
        log.warning("%s", exc.message)
        if self._chan is not None:
            self._chan.close()

    def _lost(self, session: _Channel, exc: Exception | None) -> None:
        if session is not self._session:
            return
        self._chan = self._session = None
        if self._hello is not None and not self._hello.done():
            if session.exit_status == NO_PYTHON:
                why = "python3 is not installed on the host"
            else:
                tail = session.stderr.decode(errors="replace").strip().splitlines()[-1:]
                why = (f"it exited with {session.exit_status}"
                       + (f": {tail[0]}" if tail else ""))
            self._hello.set_exception(errors.PeerError(why))
            return
        # An exit status means the agent ended and sshd said so: the connection is fine.
        conn = self._conn()
        alive = (session.exit_status is not None and conn is not None
                 and not conn.is_closed())
        what = "the exec agent on the host stopped" if alive else "the link dropped"
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            proc._finish(errors.ConnectError(
                f"{what} while running {proc.command!r}" + (f": {exc}" if exc else ""),
                "check the host, then run it again"))
        if self.state is State.READY:
            self.restarts += 1
            self.state = (State.IDLE if alive and self.restarts < MAX_RESTARTS
                          else State.UNAVAILABLE)
            self.reason = "the agent's channel closed"
            tail = session.stderr.decode(errors="replace").strip()[-500:]
            if alive and tail:  # the agent itself failed (the link dropping is no news)
                log.warning("exec agent exited (status %s): %s", session.exit_status, tail)
            else:
                log.info("exec agent's channel closed (status %s)", session.exit_status)

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()


_links: weakref.WeakKeyDictionary[Any, AgentLink] = weakref.WeakKeyDictionary()


def enable(conn: Any) -> AgentLink:
    """Route ``conn``'s non-PTY commands through an agent (started on first use)."""
    link = _links.get(conn)
    if link is None:
        link = _links[conn] = AgentLink(conn)
    return link


def link_for(conn: Any) -> AgentLink | None:
    return _links.get(conn)
