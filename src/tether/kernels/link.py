"""The kernel link: one kernel's control channel to its remote launcher, and its port forwards.

Why OpenSSH and not asyncssh: the user's own client honours everything in their ssh config
(ProxyJump, ProxyCommand, agents, certificates, HostKeyAlias) with no translation layer, and
its C port forwarding adds ~0.1 ms per message where a Python forwarder adds more. The cost is
the client's start-up (~150 ms more than an asyncssh connect, measured: bench/kernel.py), paid
once per host by the shared host link (hostlink.py): a kernel link is a connection to the
host link's launcher agent, which forks the kernel's launcher, plus five forwards added to the
host link's master (``ssh -O forward``) and cancelled when the kernel ends. The connection is
the control channel: requests, signals and keepalives go out, protocol lines come back
(docs/kernel-launch.md); when it closes, the launcher's lifetime decides the kernel's fate.
Everything here is threads and blocking calls, so it works the same under jupyter_client's
sync and async managers; the provisioner calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import subprocess
import threading
import time
from typing import Any

from tether.errors import (ConnectError, DeadlineError, PeerError, ProtocolError,
                           SystemDependencyError)
from tether.kernels import hostlink
from tether.kernels import target as tgt
from tether.kernels.target import SshTarget
from tether.kernels.wire import (LINK_LOST, MARK, PORT_NAMES, PROTOCOL, launcher_error,
                                 launcher_source, parse_line, session_failure)

log = logging.getLogger(__name__)

__all__ = ["LINK_LOST", "MARK", "PORT_NAMES", "PROTOCOL", "KernelLink", "run_once"]


ACCEPT_WAIT_S = 10.0  # a reused host link's agent takes a connection at once, or is stale


class _AgentGone(Exception):
    """A reused host link is stale: its agent closed a new connection, or never took it."""


class KernelLink:
    """One kernel's connection to the launcher agent of its host link, and its forwards."""

    def __init__(self, target: SshTarget, python: str, idle_s: float | None = None) -> None:
        self.target = target
        self.python = python
        self.idle_s = hostlink.default_idle_s() if idle_s is None else idle_s
        self.host: hostlink.HostLink | None = None
        self.sock: socket.socket | None = None
        self.kernel_exit: int | None = None
        self._first: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._eof = threading.Event()
        self._released = False
        self._release_lock = threading.Lock()
        self._forwards: list[str] = []
        self.exited = threading.Event()  # the kernel exited (its launcher said so)
        self._reader: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The host link's OpenSSH master (shared with the host's other kernels)."""
        return None if self.host is None else self.host.proc

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return (self.sock is not None and not self._eof.is_set() and self.host is not None
                and self.host.alive)

    def open(self, request: dict[str, Any], timeout: float,
             keepalive_s: float = 0) -> dict[str, Any]:
        """Connect to the host's launcher agent, send ``request``; return the first event."""
        deadline = time.monotonic() + timeout
        try:
            try:
                event = self._attempt(request, deadline, keepalive_s)
            except _AgentGone:
                # its agent just ended, or its master or network froze: once more, on a
                # new link
                assert self.host is not None
                hostlink.discard(self.host)
                self._reset()
                event = self._attempt(request, deadline, keepalive_s)
        except _AgentGone:
            self.close()
            raise ConnectError(f"the kernel link to {self.target.alias} keeps closing",
                               f"check `ssh {self.target.alias} true`") from None
        except BaseException:
            self.close()
            raise
        if keepalive_s > 0:
            threading.Thread(target=self._keepalive, args=(keepalive_s,), daemon=True,
                             name="tk-ping").start()
        return event

    def _attempt(self, request: dict[str, Any], deadline: float,
                 keepalive_s: float) -> dict[str, Any]:
        self.host, fresh = hostlink.acquire(self.target, self.python,
                                            max(1.0, deadline - time.monotonic()), keepalive_s)
        try:
            self.sock = self.host.connect()
        except ConnectError:
            if fresh:
                raise
            raise _AgentGone() from None
        self._reader = threading.Thread(target=self._read, args=(self.sock, self._first),
                                        daemon=True, name="tk-conn")
        self._reader.start()
        self._write(self.host.request_bytes(request))
        # "accepted" comes as soon as the agent forked our launcher; a reused link that does
        # not say so in time is stale (the network went silent, the master froze)
        left = deadline - time.monotonic()
        event = self._next(left if fresh else min(ACCEPT_WAIT_S, left), stale_ok=not fresh)
        if event is None:  # the connection closed before the agent took it
            if not fresh:
                raise _AgentGone()
            if not self.host.alive:
                assert self.host.proc is not None
                raise session_failure(self.target, self.python, self.host.proc.poll(),
                                      "\n".join(self.host.stderr))
            raise PeerError(f"the kernel launcher agent on {self.target.alias} closed the "
                            "connection", f"check `ssh {self.target.alias} true`")
        if event.get("event") == "accepted":
            event = self._next(deadline - time.monotonic(), stale_ok=False)
            if event is None:
                raise PeerError(f"the kernel launcher on {self.target.alias} ended without "
                                "answering", f"run `ssh {self.target.alias} {self.python} -V`"
                                " to check the remote python")
        if event.get("event") == "error":
            if event.get("traceback"):
                log.debug("remote launcher traceback:\n%s", event["traceback"])
            raise launcher_error(self.target, event)
        return event

    def _next(self, timeout: float, stale_ok: bool) -> dict[str, Any] | None:
        try:
            return self._first.get(timeout=max(0.0, timeout))
        except queue.Empty:
            if stale_ok:
                raise _AgentGone() from None
            raise DeadlineError(f"the kernel launcher on {self.target.alias} did not answer "
                                "in time", f"check `ssh {self.target.alias} true`; raise "
                                "launch_timeout") from None

    def _reset(self) -> None:
        """Forget a failed attempt: its connection and its host link."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
            with contextlib.suppress(OSError):
                self.sock.close()
        if self._reader is not None:
            self._reader.join(1.0)
        if self.host is not None:
            hostlink.release(self.host, 0)
        self.host, self.sock, self._reader = None, None, None
        self._first = queue.Queue()
        self._eof.clear()

    def forward(self, bind_ip: str, pairs: list[tuple[int, int]], timeout: float = 15) -> None:
        """Add local->remote port forwards to the host link's master."""
        assert self.host is not None
        specs = [f"{bind_ip}:{local}:127.0.0.1:{remote}" for local, remote in pairs]
        try:
            self.host.control("forward", specs, timeout)
        except ConnectError:
            # ssh stops at the first spec that fails and keeps the ones before it bound on
            # the shared master; cancel matches a spec exactly, so only ours go
            for spec in specs:
                with contextlib.suppress(ConnectError):
                    self.host.control("cancel", [spec], timeout=5)
            raise
        self._forwards += specs

    def send(self, message: dict[str, Any]) -> bool:
        """Send one control message to the launcher; False if the link is down."""
        return self._write((json.dumps(message) + "\n").encode())

    def close(self, timeout: float = 3.0) -> None:
        """End the connection: the launcher sees EOF (its lifetime decides the kernel's
        fate); the forwards are cancelled and the host link is released."""
        self._closed.set()
        sock = self.sock
        if sock is not None:
            with self._lock, contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            # the launcher closes its end once it is done (a session kernel: once stopped)
            if self._reader is not None:
                self._reader.join(timeout)
                if self._reader.is_alive():
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    self._reader.join(1.0)
            with contextlib.suppress(OSError):
                sock.close()
        host = self.host
        with self._release_lock:  # a re-attach and a cleanup may both close the old link
            if host is None or self._released:
                return
            self._released = True
        if self._forwards and host.alive:
            # frees the local ports: a restart binds the same ones again
            with contextlib.suppress(ConnectError):
                host.control("cancel", self._forwards, timeout=5)
        self._forwards = []
        hostlink.release(host, self.idle_s)

    def drain(self, timeout: float) -> None:
        """Wait until the connection's output is fully read (after it has ended)."""
        if self._reader is not None:
            self._reader.join(timeout)

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the kernel's exit event or the link's end; True if either happened."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited.is_set() or not self.alive:
                return True
            self.exited.wait(0.05)
        return self.exited.is_set() or not self.alive

    # -- threads ---------------------------------------------------------------------------
    def _write(self, data: bytes) -> bool:
        with self._lock:
            if self.sock is None:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False

    def _read(self, sock: socket.socket,
              first: queue.Queue[dict[str, Any] | None]) -> None:
        answered = False  # the first event past "accepted" went to open()
        with contextlib.suppress(OSError), sock.makefile("rb") as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    event = parse_line(line)
                except ProtocolError:
                    event = None
                if event is None:
                    continue  # an agent connection carries protocol lines only
                kind = event.get("event")
                if kind == "exited":
                    self.kernel_exit = int(event.get("code") or 0)
                    if event.get("log_tail"):
                        log.debug("remote kernel log tail:\n%s", event["log_tail"])
                    self.exited.set()
                elif kind == "pong":
                    continue
                if not answered:
                    answered = kind != "accepted"
                    first.put(event)
        self._eof.set()
        if not answered:
            first.put(None)

    def _keepalive(self, interval: float) -> None:
        while not self._closed.wait(interval):
            if not self.send({"op": "ping", "t": time.time()}):
                return


def run_once(target: SshTarget, python: str, request: dict[str, Any],
             timeout: float = 30.0) -> dict[str, Any]:
    """Run the launcher for one request (probe, list) and return its answer."""
    argv = tgt.once_argv(target, python)
    payload = tgt.launcher_payload(launcher_source(), json.dumps(request).encode())
    try:
        proc = subprocess.run(argv, input=payload, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise DeadlineError(f"{target.alias} did not answer within {timeout:.0f}s",
                            f"check `ssh {target.alias} true`") from exc
    except FileNotFoundError as exc:
        raise SystemDependencyError("the OpenSSH client `ssh` is not installed",
                                    "install openssh-client (tether doctor)") from exc
    for raw in proc.stdout.decode("utf-8", "replace").splitlines():
        event = parse_line(raw)
        if event is None:
            continue
        if event.get("event") == "error":
            raise launcher_error(target, event)
        return event
    raise session_failure(target, python, proc.returncode,
                          proc.stderr.decode("utf-8", "replace"))
