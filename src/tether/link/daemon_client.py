"""The CLI side of the link daemon: blocking, select-based, stdlib only.

`tether exec` must start in well under 150 ms including Python, so this module imports no
asyncio, asyncssh or Rich. It connects to the daemon's socket (starting the daemon when there
is none), sends one request, then shuttles stdin, signals and window sizes one way and
stdout, stderr and the exit status the other (:func:`run_exec`), or, for `tether status` and
`tether cp`, waits for one answer while passing progress events on (:func:`run_op`).

What the CLI calls: :func:`run_cli` (exec/shell), :func:`status_cli`, :func:`copy_cli`. Each
goes through the daemon when this process owns real stdio fds and ``TETHER_LINK_DAEMON`` is
not ``0``; otherwise, or when a still-running older daemon does not know the request, it runs
in-process through :mod:`tether.link.api`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

from tether import errors
from tether.link import wire

TYPE_CHECKING = False  # not `typing`'s: the exec fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tether.link.copy import CopyResult
    from tether.link.status import HostStatus

SPAWN_WAIT_S = 15.0
# After a Ctrl-C, how long the client waits for the daemon to cancel a status/copy and clean
# up (a copy removes its temporaries) before it leaves anyway; a second Ctrl-C leaves at once.
CANCEL_GRACE_S = 5.0


def socket_path() -> str:
    from tether import paths

    return str(paths.state_dir() / "link" / "daemon.sock")


def _try_connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _spawn_daemon() -> None:
    import subprocess

    from tether import paths

    directory = paths.ensure_dir(paths.state_dir() / "link")
    with open(directory / "daemon.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tether.link.daemon"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True, close_fds=True, cwd="/")
    # The daemon outlives this CLI, which never waits for it: say so, or Popen's finaliser
    # warns "subprocess ... is still running" as a `tether status`/`cp` exits normally.
    proc.returncode = 0


def connect(*, spawn: bool = True) -> socket.socket:
    """A connected socket to the daemon; starts one when none answers."""
    path = socket_path()
    sock = _try_connect(path)
    if sock is not None or not spawn:
        if sock is None:
            raise errors.ConnectError("the link daemon is not running")
        return sock
    _spawn_daemon()
    deadline = time.monotonic() + SPAWN_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.01)
        sock = _try_connect(path)
        if sock is not None:
            return sock
    raise errors.ConnectError("the link daemon did not start",
                              f"see {os.path.dirname(path)}/daemon.log")


def request(op: str, **fields: object) -> dict:
    """A one-shot request (ping, shutdown) -> the daemon's JSON answer."""
    sock = connect(spawn=False)
    with sock:
        sock.sendall(wire.encode_json(wire.OPEN, {"v": wire.VERSION, "op": op, **fields}))
        decoder = wire.Decoder()
        while True:
            data = sock.recv(65536)
            if not data:
                raise errors.ConnectError("the link daemon closed the connection")
            for kind, payload in decoder.feed(data):
                if kind in (wire.REPLY, wire.EXIT):
                    return json.loads(payload)
                if kind == wire.ERROR:
                    raise _rebuild(json.loads(payload))


def run_op(req: dict, *, on_event: Callable[[dict], None] | None = None) -> dict | None:
    """Run a one-answer request (``status``, ``copy``) through the daemon, starting it when
    none answers; returns its ``A`` answer, passing ``P`` events (except ``accepted``) to
    ``on_event``. An ``R`` answer is raised as its error class.

    None means the daemon does not know ``req["op"]`` (an older daemon still running: it
    closes without a frame, or answers ``R`` with ``unknown_op``); the caller then runs the
    request in-process.

    Ctrl-C sends a SIGNAL frame: the daemon cancels the work (a copy removes its temporaries)
    and answers; this waits up to ``CANCEL_GRACE_S`` for that, then raises KeyboardInterrupt.
    A second Ctrl-C raises at once; the socket closing then cancels the work all the same.
    """
    import threading

    sock = connect()
    deadline: float | None = None  # set by the first Ctrl-C
    old_handler = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_sigint(_signum: int, _frame: object) -> None:
        nonlocal deadline
        if deadline is not None:
            raise KeyboardInterrupt
        deadline = time.monotonic() + CANCEL_GRACE_S
        try:
            sock.sendall(wire.encode(wire.SIGNAL, b"INT"))
        except OSError:
            raise KeyboardInterrupt from None

    try:
        sock.sendall(wire.encode_json(wire.OPEN, req))
        if in_main:  # signal handlers can only be set from the main thread
            old_handler = signal.signal(signal.SIGINT, on_sigint)
        decoder = wire.Decoder()
        heard = False
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise KeyboardInterrupt
            # a bounded wait: a Ctrl-C's deadline is checked even while the daemon is silent
            if not select.select([sock], [], [], 0.25)[0]:
                continue
            data = sock.recv(1 << 16)
            if not data:
                if deadline is not None:
                    raise KeyboardInterrupt
                if not heard:
                    return None  # an older daemon drops an unknown op without a word
                raise errors.ConnectError("the link daemon closed the connection",
                                          "see the daemon log under the tether state dir")
            for kind, payload in decoder.feed(data):
                heard = True
                if kind == wire.PROGRESS:
                    event = json.loads(payload)
                    if on_event is not None and deadline is None \
                            and event.get("event") != "accepted":
                        on_event(event)
                    continue
                if deadline is not None:  # interrupted: whatever the answer, we were too
                    raise KeyboardInterrupt
                if kind == wire.REPLY:
                    return json.loads(payload)
                if kind == wire.ERROR:
                    info = json.loads(payload)
                    if info.get("unknown_op"):
                        return None
                    raise _rebuild(info)
                raise errors.ProtocolError(f"unexpected frame {kind!r} from the link daemon")
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        sock.close()


def _rebuild(info: dict) -> errors.TetherError:
    cls = getattr(errors, str(info.get("kind")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.TetherError)):
        cls = errors.TetherError
    try:
        return cls(info.get("message") or "link daemon error", info.get("hint"))
    except TypeError:
        return errors.TetherError(info.get("message") or "link daemon error", info.get("hint"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def terminal_size(*fds: int) -> tuple[int, int]:
    """The size of the first of ``fds`` that is a terminal (80x24 when none is)."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
        except OSError:
            continue
    return 80, 24


def run_exec(req: dict, *, stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
    """Run one exec/shell request through the daemon; returns the remote exit code.

    With ``req["pty"]`` and a terminal on stdin, that terminal is put in raw mode (restored
    on every exit path) and window changes are forwarded. A PTY forced with ``-t`` while stdin
    is not a terminal (like ``ssh -tt``) leaves the local side as it is: Ctrl-C reaching this
    process becomes the byte ^C on the remote terminal, which raises SIGINT there. Without a
    PTY, SIGINT/SIGTERM/SIGHUP are forwarded as SSH signals. A second Ctrl-C hangs up.
    """
    sock = connect()
    tty_state = None
    old_handlers: dict[int, object] = {}
    interrupts = 0

    def send(frame: bytes) -> None:
        try:
            sock.sendall(frame)
        except OSError:
            pass  # the daemon's answer (or its absence) decides the outcome

    raw = bool(req.get("pty")) and os.isatty(stdin_fd)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal interrupts
        if signum == signal.SIGWINCH:
            cols, rows = terminal_size(stdin_fd, stdout_fd)
            send(wire.encode_json(wire.WINCH, {"cols": cols, "rows": rows}))
            return
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                raise KeyboardInterrupt
            if req.get("pty"):  # the remote terminal turns ^C into SIGINT for its foreground
                send(wire.encode(wire.STDIN, b"\x03"))
                return
        send(wire.encode(wire.SIGNAL, signal.Signals(signum).name[3:].encode()))

    try:
        if raw:
            import termios
            import tty

            tty_state = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd, termios.TCSADRAIN)  # keep typed-ahead input
            watched: tuple[signal.Signals, ...] = (signal.SIGWINCH,)
        else:
            watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            if req.get("pty") and os.isatty(stdout_fd):
                watched += (signal.SIGWINCH,)
        send(wire.encode_json(wire.OPEN, req))  # first: a W or S frame may only follow it
        for signum in watched:
            old_handlers[signum] = signal.signal(signum, on_signal)
        return _pump(sock, stdin_fd if req.get("stdin", True) else None, stdout_fd, stderr_fd)
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if tty_state is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, tty_state)
        sock.close()


def _pump(sock: socket.socket, stdin_fd: int | None, stdout_fd: int, stderr_fd: int) -> int:
    decoder = wire.Decoder()
    watch = [sock] + ([stdin_fd] if stdin_fd is not None else [])
    while True:
        ready, _, _ = select.select(watch, [], [])
        if sock in ready:
            data = sock.recv(1 << 18)
            if not data:
                raise errors.ConnectError("the link daemon closed the connection",
                                          "see the daemon log under the tether state dir")
            for kind, payload in decoder.feed(data):
                if kind == wire.STDOUT:
                    _write_all(stdout_fd, payload)
                elif kind == wire.STDERR:
                    _write_all(stderr_fd, payload)
                elif kind == wire.EXIT:
                    return int(json.loads(payload)["exit_code"])
                elif kind == wire.ERROR:
                    raise _rebuild(json.loads(payload))
        if stdin_fd is not None and stdin_fd in ready:
            try:
                data = os.read(stdin_fd, 1 << 16)
            except OSError:
                data = b""
            sock.sendall(wire.encode(wire.STDIN, data))
            if not data:
                watch.remove(stdin_fd)


# -- what `tether exec` / `tether shell` run ---------------------------------------------------


def _has_fds() -> bool:
    try:
        sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return True


def exec_request(name: str, command: list[str] | None, *, cwd: str | None = None,
                 env: list[str] | tuple[str, ...] = (), tty: bool | None = None) -> dict:
    """The daemon request for `tether exec`/`shell`.

    ``tty=None`` asks for a PTY when stdin is a terminal; ``True`` (``-t``) always asks for
    one, like ``ssh -tt``, also when stdin is a pipe or /dev/null; ``False`` (``-T``) never.
    """
    want_tty = (_has_fds() and os.isatty(0)) if tty is None else tty
    pty = None
    if want_tty:
        cols, rows = terminal_size(0, 1) if _has_fds() else (80, 24)
        pty = {"term": os.environ.get("TERM") or "xterm-256color", "cols": cols, "rows": rows}
    env_pairs = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.UsageError(f"bad --env value {item!r}", "use --env NAME=VALUE")
        env_pairs.append([key, value])
    return {"v": wire.VERSION, "op": "exec", "name": name, "command": list(command or []),
            "cwd": cwd, "env": env_pairs, "pty": pty, "stdin": True}


def _check_profile(name: str) -> None:
    """Fail fast on an unknown host, before a daemon is started for nothing."""
    from tether import paths

    if not (paths.config_dir() / "hosts" / f"{name}.json").is_file():
        from tether.link.profiles import load_profile

        load_profile(name)  # raises the NotFoundError (or UsageError for a bad name)


def _use_daemon() -> bool:
    """The daemon when we own real stdio fds (the normal case); in-process for tests that
    capture output, embedding, and ``TETHER_LINK_DAEMON=0``."""
    return _has_fds() and os.environ.get("TETHER_LINK_DAEMON", "1") != "0"


def run_cli(req: dict) -> int:
    """Run a `tether exec`/`shell` request: via the daemon when we own real terminal fds
    (the normal case), else in-process (tests, embedding, TETHER_LINK_DAEMON=0)."""
    _check_profile(req["name"])
    if _use_daemon():
        sys.stdout.flush()
        return run_exec(req)
    return _run_in_process(req)


def status_cli(name: str) -> HostStatus:
    """`tether status NAME`: the daemon probes on its warm connection (in-process as
    :func:`tether.link.api.status` when the daemon is off or too old)."""
    from tether.link.status import HostStatus

    _check_profile(name)
    if _use_daemon():
        answer = run_op({"v": wire.VERSION, "op": "status", "name": name})
        if answer is not None:
            return HostStatus.from_dict(answer)
    from tether.link.api import status

    return status(name)


def copy_cli(sources: Sequence[str], dest: str, *, recursive: bool = False,
             on_start: Callable[[int, int], Callable[[int], None]] | None = None,
             ) -> CopyResult:
    """`tether cp SRC... DST`: the daemon copies over its warm connection (in-process as
    :func:`tether.link.api.copy` when the daemon is off or too old).

    ``on_start(files, total_bytes)`` is called once the files are known and returns
    ``advance(nbytes)``. Local paths stay as written (messages name them so); the request
    carries this process's cwd, against which the daemon resolves the relative ones.
    """
    from tether.link.copy import CopyResult, split_direction

    host = split_direction(list(sources), dest)[0]  # bad input fails here, daemon or not
    _check_profile(host)
    try:
        cwd = os.getcwd()
    except OSError:  # the cwd was removed: only an in-process copy can say what that means
        cwd = None
    if cwd is not None and _use_daemon():
        advance: Callable[[int], None] | None = None

        def on_event(event: dict) -> None:
            nonlocal advance
            if event.get("event") == "plan" and on_start is not None:
                advance = on_start(int(event["files"]), int(event["bytes"]))
            elif event.get("event") == "advance" and advance is not None:
                advance(int(event["bytes"]))

        answer = run_op({"v": wire.VERSION, "op": "copy", "sources": list(sources),
                         "dest": dest, "recursive": recursive, "cwd": cwd,
                         "progress": on_start is not None}, on_event=on_event)
        if answer is not None:
            return CopyResult(**answer)
    from tether.link.api import copy

    progress = (lambda plan: on_start(len(plan.files), plan.total_bytes)) if on_start else None
    return copy(list(sources), dest, recursive=recursive, progress=progress)


def _run_in_process(req: dict) -> int:
    import asyncio

    from tether.link import exec as lexec
    from tether.link.pool import LinkPool

    command = req["command"]
    line = None
    if command:
        line = lexec.build_command(command[0] if len(command) == 1 else command,
                                   cwd=req.get("cwd"), env=lexec.parse_env(
                                       [f"{k}={v}" for k, v in req.get("env") or []]))

    def emit(stream: int, data: bytes) -> None:
        target = sys.stdout if stream == lexec.STDOUT else sys.stderr
        buf = getattr(target, "buffer", None)
        if buf is not None:
            buf.write(data)
        else:
            target.write(data.decode(errors="replace"))
        target.flush()

    async def go() -> int:
        pool = LinkPool(keepalive_s=None, exec_agent=False)  # one command: no agent
        try:
            conn = await pool.get(req["name"])
            pty = req.get("pty")
            spec = lexec.PtySpec(pty["term"], pty["cols"], pty["rows"]) if pty else None
            proc = await lexec.start(conn, line, on_output=emit, pty=spec)
            stdin = getattr(sys.stdin, "buffer", sys.stdin)
            interactive = sys.stdin is None or sys.stdin.isatty()
            data = b"" if interactive else stdin.read()  # in-process: no live terminal
            if data:
                await proc.write(data.encode() if isinstance(data, str) else data)
            proc.write_eof()
            return (await proc.wait()).exit_code
        finally:
            await pool.aclose()

    return asyncio.run(go())
