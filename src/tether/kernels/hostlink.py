"""The host link: one OpenSSH ControlMaster per host and remote python, shared by every kernel
this process runs there.

A cold launch spends most of its overhead before the launcher runs: the TCP connect, the key
exchange (OpenSSH 9's post-quantum default alone is ~70 ms), authentication, the remote
shell's rc files (`pyenv init` and friends: ~0.1 s on the test machine) and the python
start-up. The host link pays for that once. Its session runs the launcher as an *agent*
(``serve``) listening on a unix socket in a private remote directory; the master forwards a
unix socket in a private local directory to it, so every later launch, restart or attach is
one forwarded connection: the agent forks a launcher for it, and the kernel's five ports are
added to the same master. A host that refuses unix-socket forwarding
(``AllowStreamLocalForwarding no``) gets the agent on a port of its 127.0.0.1 instead.

Lifetime: the link lives while a kernel uses it, then ``idle_s`` more seconds (default 600,
``TETHER_KERNEL_LINK_IDLE``; 0 closes it with its last kernel), and never longer than this
process: the master's stdin is a pipe from here, so when this process ends, even by SIGKILL,
the agent reads EOF and exits, the session ends, and the master leaves once its kernels'
channels have closed. The pool is threads and blocking calls, like the kernel link.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from tether.errors import (ConnectError, DeadlineError, PeerError, ProtocolError,
                           SystemDependencyError)
from tether.kernels import target as tgt
from tether.kernels.target import SshTarget
from tether.kernels.wire import (MARK, PROTOCOL, launcher_error, launcher_source, parse_line,
                                 session_failure)

log = logging.getLogger(__name__)

IDLE_ENV = "TETHER_KERNEL_LINK_IDLE"
DEFAULT_IDLE_S = 600.0
AGENT_KEEPALIVE_S = 10.0  # when the first kernel asks for none
PROBE_WAIT_S = 10.0


def default_idle_s() -> float:
    """Seconds an unused host link stays up: ``TETHER_KERNEL_LINK_IDLE`` or 600."""
    raw = os.environ.get(IDLE_ENV, "").strip()
    if not raw:
        return DEFAULT_IDLE_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %.0f", IDLE_ENV, raw,
                    DEFAULT_IDLE_S)
        return DEFAULT_IDLE_S


class HostLink:
    """One ControlMaster whose session runs the launcher agent."""

    def __init__(self, target: SshTarget, python: str, keepalive_s: float = 0) -> None:
        self.target = target
        self.python = python
        self.keepalive_s = keepalive_s
        self.users = 0  # kernel links using it; guarded by the pool's lock
        self.idle_timer: threading.Timer | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent_pid: int | None = None  # on the remote host
        self.agent_address: str | None = None  # its unix socket there, or 127.0.0.1:PORT
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        # every connection to the agent opens with it: where the agent must listen on the
        # remote 127.0.0.1, other users of that host can connect too (docs/kernel-launch.md)
        self._token = secrets.token_hex(32)
        self._ctl_dir = Path(tempfile.mkdtemp(prefix="tk-"))  # short: sun_path is 108 bytes
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._readers: list[threading.Thread] = []

    @property
    def key(self) -> tuple[SshTarget, str]:
        return (self.target, self.python)

    @property
    def control_path(self) -> Path:
        return self._ctl_dir / "c"

    @property
    def agent_socket(self) -> Path:
        """The local end of the agent's forward (``tcp`` when the agent listens on a port)."""
        return self._ctl_dir / ("a" if self.agent_address is None or
                                self.agent_address.startswith("/") else "t")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._closed.is_set()

    # -- start -----------------------------------------------------------------------------
    def start(self, timeout: float) -> None:
        argv = tgt.master_argv(self.target, self.control_path, self.python)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError as exc:
            raise SystemDependencyError("the OpenSSH client `ssh` is not installed",
                                        "install openssh-client (tether doctor)") from exc
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True, name="tk-out"),
                         threading.Thread(target=self._read_stderr, daemon=True, name="tk-err")]
        for thread in self._readers:
            thread.start()
        request = {"v": PROTOCOL, "op": "serve", "token": self._token,
                   "keepalive_s": self.keepalive_s or AGENT_KEEPALIVE_S}
        self._write(tgt.launcher_payload(launcher_source(), json.dumps(request).encode()))
        event = self._next_event(timeout)
        if event is None:  # stdout closed before any event: the session failed
            rc = self._wait(5)
            self._readers[1].join(2)  # all of ssh's stderr: it says why
            raise session_failure(self.target, self.python, rc, "\n".join(self.stderr))
        if event.get("event") == "error":
            raise launcher_error(self.target, event)
        self.agent_pid = event.get("pid")
        self.agent_address = str(event["socket"])
        self.control("forward", [f"{self.agent_socket}:{self.agent_address}"])
        if not self._probe():
            # unix-socket forwarding refused: the agent listens on 127.0.0.1 too
            self._write(b'{"op":"tcp"}\n')
            event = self._next_event(PROBE_WAIT_S)
            if event is None or event.get("event") != "tcp":
                raise PeerError(f"the kernel launcher agent on {self.target.alias} did not "
                                "open its port", f"check `ssh {self.target.alias} true`")
            self.agent_address = f"127.0.0.1:{int(event['port'])}"
            self.control("forward", [f"{self.agent_socket}:{self.agent_address}"])
            if not self._probe():
                raise PeerError(f"{self.target.alias} refuses to forward connections to the "
                                "kernel launcher", "the host's sshd must allow TCP "
                                "forwarding (AllowTcpForwarding), which the kernel's ports "
                                "need too")
        threading.Thread(target=self._keepalive, daemon=True, name="tk-ping").start()

    def _next_event(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise DeadlineError(f"the kernel launcher on {self.target.alias} did not answer "
                                f"within {timeout:.0f}s", f"check `ssh {self.target.alias} "
                                "true`; raise launch_timeout") from None

    def _probe(self) -> bool:
        """Does a connection to the agent get through (the forward is allowed)?"""
        try:
            with self.connect() as sock:
                sock.settimeout(PROBE_WAIT_S)
                sock.sendall(self.request_bytes({"v": PROTOCOL, "op": "hello"}))
                answer = sock.makefile("rb").readline()
        except (ConnectError, OSError):
            return False
        return answer.startswith(MARK.encode())

    # -- use -------------------------------------------------------------------------------
    def connect(self) -> socket.socket:
        """A new connection to the agent (through the master's forward)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.agent_socket))
        except OSError as exc:
            sock.close()
            raise ConnectError(f"the kernel link to {self.target.alias} is gone: {exc}",
                               "try again: a new link is opened") from exc
        return sock

    def request_bytes(self, request: dict[str, Any]) -> bytes:
        """What opens a connection to the agent: the token line, then the request line."""
        return f"{self._token}\n{json.dumps(request)}\n".encode()

    def control(self, op: str, local_forwards: list[str], timeout: float = 15) -> None:
        """``ssh -O forward|cancel -L ...`` on this master."""
        argv = tgt.control_argv(self.target, self.control_path, op, local_forwards)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ConnectError(f"the kernel link to {self.target.alias} did not answer a "
                               f"`{op}` within {timeout:.0f}s", "try again: a new link is "
                               "opened") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no detail"])[-1]
            raise ConnectError(f"could not {op} the kernel ports through "
                               f"{self.target.alias}: {detail}",
                               "a local port may be taken; try again")

    # -- end -------------------------------------------------------------------------------
    def close(self, timeout: float = 3.0) -> None:
        """End the session: the agent reads EOF and exits; then the master does."""
        self._closed.set()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.proc is not None:
            with self._lock, contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            # kernels still using it keep their channels open: the master waits for them
            if self._wait(timeout) is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                if self._wait(timeout) is None:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    self._wait(timeout)
            for thread in self._readers:
                thread.join(1.0)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self._ctl_dir, ignore_errors=True)

    # -- threads ---------------------------------------------------------------------------
    def _write(self, data: bytes) -> bool:
        with self._lock:
            if self.proc is None or self.proc.stdin is None or self.proc.stdin.closed:
                return False
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                event = parse_line(raw.decode("utf-8", "replace").rstrip("\n"))
            except ProtocolError:  # a malformed line is noise, as a shell banner is
                event = None
            if event is not None:
                self._events.put(event)
        self._events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _keepalive(self) -> None:
        # the agent counts silence as a dead link, as a launcher does
        while not self._closed.wait(self.keepalive_s or AGENT_KEEPALIVE_S):
            if not self._write(b'{"op":"ping"}\n'):
                return

    def _wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


# -- the pool: one host link per (target, python) in this process ----------------------------
_links: dict[tuple[SshTarget, str], HostLink] = {}
_lock = threading.Lock()
_starting: dict[tuple[SshTarget, str], threading.Lock] = {}


def acquire(target: SshTarget, python: str, timeout: float,
            keepalive_s: float = 0) -> tuple[HostLink, bool]:
    """The live host link for ``target`` and ``python`` (started if needed), one more user
    counted; True when it was started by this call."""
    key = (target, python)
    with _lock:
        start_lock = _starting.setdefault(key, threading.Lock())
    # concurrent launches to one host share one start
    if not start_lock.acquire(timeout=timeout):
        raise DeadlineError(f"the kernel link to {target.alias} is still being opened",
                            "raise launch_timeout")
    try:
        with _lock:
            link = _links.get(key)
            if link is not None and link.alive:
                link.users += 1
                if link.idle_timer is not None:
                    link.idle_timer.cancel()
                    link.idle_timer = None
                return link, False
            stale = _links.pop(key, None)
        if stale is not None and stale.users == 0:
            stale.close(0.5)
        link = HostLink(target, python, keepalive_s)
        try:
            link.start(timeout)
        except BaseException:
            link.close(1.0)
            raise
        with _lock:
            link.users = 1
            _links[key] = link
        return link, True
    finally:
        start_lock.release()


def release(link: HostLink, idle_s: float) -> None:
    """One user fewer; the last one leaves the link up ``idle_s`` more seconds."""
    with _lock:
        link.users -= 1
        if link.users > 0:
            return
        current = _links.get(link.key) is link
        if current and link.alive and idle_s > 0:
            link.idle_timer = threading.Timer(idle_s, _expire, (link,))
            link.idle_timer.daemon = True
            link.idle_timer.start()
            return
        if current:
            del _links[link.key]
    # a stale link (discarded, dead or frozen) must not hold up the launch that replaced it
    link.close(3.0 if current and link.alive else 0.5)


def discard(link: HostLink) -> None:
    """Stop handing ``link`` out (its agent is gone); its users release it as usual."""
    with _lock:
        if _links.get(link.key) is link:
            del _links[link.key]


def _expire(link: HostLink) -> None:
    with _lock:
        if link.users or _links.get(link.key) is not link:
            return
        del _links[link.key]
    link.close()


def live_links() -> list[HostLink]:
    with _lock:
        return [link for link in _links.values() if link.alive]


def close_all(timeout: float = 1.0) -> None:
    """Close every host link of this process (kernels still on one lose their link)."""
    with _lock:
        links = list(_links.values())
        _links.clear()
    for link in links:
        link.close(timeout)


atexit.register(close_all)
