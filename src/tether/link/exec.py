"""Running commands on a workspace over an open SSH connection.

The pure part builds the remote command line (cwd, environment) and maps an SSH exit
status or exit signal to a process exit code the way OpenSSH users expect (a command killed
by SIGTERM exits 128+15). The I/O part, :func:`start`, streams stdout and stderr to
callbacks as they arrive, feeds stdin with backpressure, and can ask for a PTY. Commands
without a PTY on a connection with an exec agent run under it (no login-shell rc cost per
command: :mod:`tether.link.agent_link`); the rest get their own SSH session channel.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import signal as _signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether import errors
from tether._compat import timeout as _timeout

if TYPE_CHECKING:  # pragma: no cover
    from tether.link.agent_link import AgentProcess

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STDOUT, STDERR = 1, 2


@dataclass(frozen=True)
class PtySpec:
    """A terminal to allocate on the remote side."""

    term: str = "xterm-256color"
    cols: int = 80
    rows: int = 24


@dataclass(frozen=True)
class ExecResult:
    """What a remote command did. ``exit_code`` is 128+N when it died of signal N."""

    command: str
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: str | None = None  # e.g. "TERM" when the command was killed by a signal
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> ExecResult:
        """Return self, or raise PeerError carrying the tail of stderr when it failed."""
        if self.exit_code != 0:
            tail = self.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise errors.PeerError(f"remote command exited with {self.exit_code}: "
                                   f"{self.command}" + (f" ({tail[0]})" if tail[0] else ""))
        return self


@dataclass
class SessionOutcome:
    exit_code: int
    signal: str | None


# -- pure -----------------------------------------------------------------------------------


def parse_env(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["K=V", ...]`` -> ((K, V), ...); UsageError for anything else."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(key):
            raise errors.UsageError(f"bad --env value {item!r}",
                                    "use --env NAME=VALUE (NAME: letters, digits, _)")
        out.append((key, value))
    return tuple(out)


def build_command(command: str | Sequence[str], *, cwd: str | None = None,
                  env: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> str:
    """The command line the remote shell runs.

    A string is shell text (pipes and globs work, like ``ssh host 'a | b'``); a sequence is
    an argv whose items are quoted, so ``["echo", "a b"]`` prints ``a b``. The environment
    is exported by the remote shell rather than sent as SSH ``env`` requests, which sshd
    drops unless its AcceptEnv lists them.
    """
    if isinstance(command, str):
        text = command
    else:
        if not command:
            raise errors.UsageError("no command given", "tether exec NAME -- COMMAND [ARGS...]")
        text = shlex.join(command)
    if not text.strip():
        raise errors.UsageError("no command given", "tether exec NAME -- COMMAND [ARGS...]")
    pairs = list(env.items()) if isinstance(env, Mapping) else list(env)
    prefix = []
    for key, value in pairs:
        if not _ENV_NAME.match(key):
            raise errors.UsageError(f"bad environment variable name {key!r}")
        prefix.append(f"{key}={shlex.quote(value)}")
    parts = []
    if cwd:
        parts.append(f"cd -- {shlex.quote(cwd)} &&")
    if prefix:
        parts.append("export " + " ".join(prefix) + " &&")
    parts.append(text)
    return " ".join(parts)


_SIGNALS = frozenset({"INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2"})


def tag_command(command: str, exec_id: str) -> str:
    """Mark the command's processes so :func:`kill_script` can find their session."""
    return f"export TETHER_EXEC_ID={exec_id}; {command}"


def kill_script(exec_id: str, signal_name: str) -> str:
    """A shell script that signals the whole remote session running ``exec_id``.

    OpenSSH's sshd ignores SSH "signal" requests unless it runs with privilege separation
    as root (tether's own sshd runs as the user), so signals go out of band: find a process
    whose environment carries the tag, take its session id (sshd makes every session its own
    session), and signal that process group (Linux /proc; elsewhere a no-op).
    """
    if signal_name not in _SIGNALS or not re.fullmatch(r"[0-9a-f]{8,32}", exec_id):
        raise errors.UsageError(f"cannot forward signal {signal_name!r}")
    # The tag is matched in a process's command line (the shell itself: `sh -c "export
    # TETHER_EXEC_ID=..; ..."`) or its environment (children). One grep per kind, not one per
    # process: hosts run hundreds. The pattern is assembled at run time so this script's own
    # command line never matches; grep's own pid is not in the glob, expanded before it ran.
    return (
        f'pat="TETHER_EXEC_ID=""{exec_id}"; '
        'f=$( { grep -lazF -- "$pat;" /proc/[0-9]*/cmdline; '
        'grep -lazxF -- "$pat" /proc/[0-9]*/environ; } 2>/dev/null | head -n 1); '
        '[ -n "$f" ] || exit 1; p=${f#/proc/}; p=${p%%/*}; '
        's=$(ps -o sid= -p "$p" 2>/dev/null | tr -d " "); '
        f'[ -n "$s" ] && kill -s {signal_name} -- "-$s"')


def exit_code_of(exit_status: int | None, exit_signal: str | None) -> int | None:
    """OpenSSH-compatible exit code; None when the session ended without either."""
    if exit_signal:
        try:
            return 128 + int(_signal.Signals["SIG" + exit_signal.removeprefix("SIG")])
        except KeyError:
            return 255
    if exit_status is not None and exit_status >= 0:
        return exit_status
    return None


# -- I/O ------------------------------------------------------------------------------------


class _Session:
    """asyncssh client session callbacks -> the caller's sinks, no intermediate tasks."""

    def __init__(self, on_output: Callable[[int, bytes], None]) -> None:
        self.on_output = on_output
        self.chan: Any = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.on_output(STDOUT if datatype is None else STDERR, data)

    def eof_received(self) -> bool:
        return False

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str,
                             lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(None)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


@dataclass
class RemoteProcess:
    """A started remote command: feed it, signal it, resize it, wait for it."""

    session: _Session
    command: str
    conn: Any = None
    exec_id: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return self.session.done.done()

    async def write(self, data: bytes) -> None:
        if not data:
            self.session.chan.write_eof()
            return
        await self.session.can_write.wait()
        if not self.session.done.done():
            self.session.chan.write(data)

    def write_eof(self) -> None:
        if not self.session.done.done():
            self.session.chan.write_eof()

    async def send_signal(self, name: str) -> bool:
        """Deliver SIGname to the remote command's session; False if nothing was signalled."""
        from tether.link._asyncssh import asyncssh

        if self.session.done.done() or self.exec_id is None:
            return False
        try:
            result = await self.conn.run(kill_script(self.exec_id, name), check=False,
                                         timeout=15)
        except (asyncssh.Error, OSError, TimeoutError):
            return False
        return result.exit_status == 0

    def resize(self, cols: int, rows: int) -> None:
        if not self.session.done.done():
            self.session.chan.change_terminal_size(cols, rows)

    def pause_output(self) -> None:
        self.session.chan.pause_reading()

    def resume_output(self) -> None:
        self.session.chan.resume_reading()

    def close(self) -> None:
        if self.session.chan is not None:
            self.session.chan.close()

    async def wait(self) -> SessionOutcome:
        from tether.link._asyncssh import asyncssh

        try:
            await asyncio.shield(self.session.done)  # a cancelled waiter must not end it
        except (asyncssh.Error, ConnectionError, OSError) as exc:
            raise errors.ConnectError(f"the link dropped while running {self.command!r}: "
                                      f"{exc}", "check the host, then run it again") from exc
        code = exit_code_of(self.session.exit_status, self.session.exit_signal)
        if code is None:
            raise errors.ConnectError(
                f"the session ended without an exit status while running {self.command!r}",
                "the link or the remote sshd dropped; check the host and try again")
        return SessionOutcome(code, self.session.exit_signal)


async def start(conn: Any, command: str | None, *, on_output: Callable[[int, bytes], None],
                pty: PtySpec | None = None) -> RemoteProcess | AgentProcess:
    """Start ``command`` (None: the login shell) and return the live process.

    A command without a PTY on a connection with an exec agent (:mod:`tether.link.agent_link`)
    runs under the agent, skipping the login shell's rc files; everything else gets its own
    SSH session channel.
    """
    if command is not None and pty is None:
        from tether.link.agent_link import link_for

        link = link_for(conn)
        if link is not None:
            proc = await link.start(command, on_output)
            if proc is not None:
                return proc
    return await _start_session(conn, command, on_output=on_output, pty=pty)


async def _start_session(conn: Any, command: str | None, *,
                         on_output: Callable[[int, bytes], None],
                         pty: PtySpec | None) -> RemoteProcess:
    import secrets

    from tether.link._asyncssh import asyncssh

    kwargs: dict[str, Any] = {"encoding": None}
    if pty is not None:
        kwargs.update(term_type=pty.term, term_size=(pty.cols, pty.rows))
    exec_id = secrets.token_hex(8) if command is not None else None
    line = tag_command(command, exec_id) if command is not None and exec_id else command
    try:
        _, session = await conn.create_session(lambda: _Session(on_output), line, **kwargs)
    except asyncssh.ChannelOpenError as exc:
        raise errors.ConnectError(f"the workspace refused a new session: {exc.reason}",
                                  "the connection may be stale; try again") from exc
    except (asyncssh.Error, ConnectionError, OSError) as exc:
        raise errors.ConnectError(f"could not start a remote session: {exc}",
                                  "the link may have dropped; try again") from exc
    return RemoteProcess(session, command or "<shell>", conn, exec_id)


async def run_captured(conn: Any, command: str, *, input: bytes | None = None,
                       timeout: float | None = None,
                       on_output: Callable[[int, bytes], Awaitable[None] | None] | None = None,
                       ) -> ExecResult:
    """Run ``command`` to completion, collecting stdout and stderr separately."""
    out: list[bytes] = []
    err: list[bytes] = []

    def collect(stream: int, data: bytes) -> None:
        (out if stream == STDOUT else err).append(data)
        if on_output is not None:
            on_output(stream, data)

    began = time.monotonic()
    proc = await start(conn, command, on_output=collect)
    try:
        if input:
            await proc.write(input)
        proc.write_eof()
        try:
            async with _timeout(timeout):
                outcome = await proc.wait()
        except TimeoutError as exc:
            await proc.send_signal("KILL")  # closing alone leaves a non-tty command running
            raise errors.DeadlineError(f"{command!r} did not finish within {timeout:g}s",
                                       "raise the timeout, or run it in the background") from exc
        except asyncio.CancelledError:  # Ctrl-C in the sync API, a cancelled task
            await asyncio.shield(proc.send_signal("TERM"))
            raise
    finally:
        proc.close()
    return ExecResult(command, outcome.exit_code, b"".join(out), b"".join(err),
                      outcome.signal, time.monotonic() - began)
