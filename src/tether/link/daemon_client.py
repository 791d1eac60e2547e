"""The CLI side of the link daemon: blocking, select-based, stdlib only.

`tether exec` must start in well under 150 ms including Python, so this module imports no
asyncio, asyncssh or Rich. It connects to the daemon's socket (starting the daemon when there
is none), sends one request, then shuttles stdin, signals and window sizes one way and
stdout, stderr and the exit status the other.
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

SPAWN_WAIT_S = 15.0


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
        subprocess.Popen([sys.executable, "-m", "tether.link.daemon"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                         start_new_session=True, close_fds=True, cwd="/")


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


def run_cli(req: dict) -> int:
    """Run a `tether exec`/`shell` request: via the daemon when we own real terminal fds
    (the normal case), else in-process (tests, embedding, TETHER_LINK_DAEMON=0)."""
    _check_profile(req["name"])
    if _has_fds() and os.environ.get("TETHER_LINK_DAEMON", "1") != "0":
        sys.stdout.flush()
        return run_exec(req)
    return _run_in_process(req)


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
