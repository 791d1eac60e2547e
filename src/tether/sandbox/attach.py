"""``tether sandbox attach``: an interactive shell in a named sandbox, on a pseudo-terminal.

The shell runs in a fresh bwrap over the sandbox's writable layer (like ``exec``), with a pty
as its terminal. bwrap's ``--new-session`` leaves the command without a controlling terminal
(that is what stops TIOCSTI from typing into the user's own terminal), so the command is
started through ``setsid -c -w``: a new session inside the sandbox whose controlling terminal
is the sandbox's own pty, which gives the shell job control without reaching outside.

With ``record``, everything the terminal shows is written as asciicast v2 (asciicast.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shutil
import signal
import struct
import termios
import time
from collections.abc import Sequence
from pathlib import Path

from tether.errors import UsageError
from tether.sandbox import asciicast, audit, named
from tether.sandbox.service import spawn_prepared

DEFAULT_SIZE = (80, 24)


def default_shell() -> list[str]:
    return ["/bin/bash", "-i"] if shutil.which("bash", path="/usr/bin:/bin") else ["/bin/sh", "-i"]


def _winsize(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (cols, rows) if cols and rows else None


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@contextlib.contextmanager
def _raw(fd: int):
    """Raw mode on the user's terminal for the session (keys go to the sandbox as typed)."""
    if not os.isatty(fd):
        yield
        return
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(name: str, command: Sequence[str] | None = None, *, record: Path | None = None,
           stdin_fd: int = 0, stdout_fd: int = 1, via: str = "cli") -> int:
    """Run ``command`` (default: an interactive shell) on a pty; returns its exit code."""
    import pty

    from tether.sandbox import runner

    box = named.get(name)
    argv = list(command or default_shell())
    spec = named.spec_for(box, ["setsid", "-c", "-w", *argv])
    cols, rows = _winsize(stdout_fd) or DEFAULT_SIZE
    env = dict(spec.env)
    env.setdefault("TERM", os.environ.get("TERM", "xterm-256color"))
    from dataclasses import replace

    spec = replace(spec, env=tuple(sorted(env.items())))
    prepared = runner._prepare(spec, runner.probe(), False)
    ns_fds = _join_running(box, spec, prepared)
    recorder = None
    started = time.monotonic()
    try:
        master, slave = pty.openpty()
        _set_winsize(master, cols, rows)
        cg = prepared.cgroup
        try:
            proc = spawn_prepared(prepared, stdin=slave, stdout=slave, stderr=slave,
                                  extra_fds=ns_fds)
        finally:
            os.close(slave)
            for fd in ns_fds:
                os.close(fd)
        if record is not None:
            recorder = asciicast.Recorder.open(record, cols, rows,
                                               env={"TERM": env["TERM"], "SHELL": argv[0]},
                                               title=f"tether sandbox {name}")
        deadline = (started + spec.limits.timeout_s) if spec.limits.timeout_s else None
        with _raw(stdin_fd), _resize_follows(stdout_fd, master):
            _relay(master, stdin_fd, stdout_fd, recorder, proc, deadline, cg)
        os.close(master)
        code = proc.wait()
    finally:
        if recorder is not None:
            recorder.close()
        prepared.close()
    audit.record_run(via=via, command=argv, profile=spec.profile, network=spec.network,
                     exit_code=code, duration_s=time.monotonic() - started, sandbox=name)
    return code


def _join_running(box, spec, prepared) -> list[int]:
    """While the main command runs, the shell joins its namespaces (it sees its processes);
    returns the namespace fds to pass to bwrap (none when it starts a separate sandbox)."""
    from tether.sandbox import _join
    from tether.sandbox.profiles import NetworkMode

    status, supervisor, _ = box.status()
    init = _join.sandbox_init(supervisor) if status == "running" else None
    fds = _join.open_namespaces(init) if init is not None else None
    if fds is None:
        return []
    argv = _join.join_argv(prepared.argv, share_net=spec.network is NetworkMode.FULL,
                           userns_fd=fds[0], pidns_fd=fds[1])
    if argv is None:
        for fd in fds:
            os.close(fd)
        return []
    prepared.argv = argv
    return fds


@contextlib.contextmanager
def _resize_follows(term_fd: int, master: int):
    """Pass the user's window size changes (SIGWINCH) on to the sandbox's pty."""
    if not os.isatty(term_fd):
        yield
        return

    def on_winch(_sig, _frame) -> None:
        size = _winsize(term_fd)
        if size:
            _set_winsize(master, *size)

    old = signal.signal(signal.SIGWINCH, on_winch)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def _relay(master: int, stdin_fd: int, stdout_fd: int, recorder, proc, deadline, cg) -> None:
    """Copy keys in and screen out until the sandbox closes its side of the pty."""
    inputs = [master, stdin_fd]
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            readable, _, _ = select.select(inputs, [], [], timeout)
        except InterruptedError:  # SIGWINCH
            continue
        if not readable:  # the timeout: end the whole sandbox, as a run would
            proc.kill()
            if cg is not None:
                cg.kill_all()
            deadline = None
            continue
        if master in readable:
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every process closed the terminal
                    raise
                data = b""
            if not data:
                return
            os.write(stdout_fd, data)
            if recorder is not None:
                recorder.output(data)
        if stdin_fd in readable:
            data = os.read(stdin_fd, 65536)
            if not data:
                inputs.remove(stdin_fd)  # keep showing output until the shell ends
            else:
                os.write(master, data)


def check_record_path(path: Path | None) -> None:
    if path is not None and path.exists() and path.is_dir():
        raise UsageError(f"--record {path} is a directory", "name a file, e.g. session.cast")
