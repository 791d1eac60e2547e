"""The kernel link: one OpenSSH session carrying the remote launcher and the kernel's ports.

Why OpenSSH and not asyncssh: the user's own client honours everything in their ssh config
(ProxyJump, ProxyCommand, agents, certificates, HostKeyAlias) with no translation layer, and
its C port forwarding adds ~0.1 ms per message where a Python forwarder adds more. The cost is
the client's start-up (~150 ms more than an asyncssh connect, measured: bench/kernel.py).

The session runs as a ControlMaster on a private socket so the five port forwards, whose
remote ends the launcher picks, can be added to it once they are known (``ssh -O forward``),
without a second login. The launcher's stdin is the control channel (signals, keepalives);
its stdout carries protocol lines (docs/kernel-launch.md). Everything here is threads and
blocking calls, so it works the same under jupyter_client's sync and async managers; the
provisioner calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from tether.errors import (AlreadyExistsError, AuthError, ConnectError, DeadlineError,
                           HostKeyMismatchError, NotFoundError, PeerError, ProtocolError,
                           SystemDependencyError, TetherError)
from tether.kernels import target as tgt
from tether.kernels.target import SshTarget

log = logging.getLogger(__name__)

MARK = "TETHER-KERNEL/1 "
PROTOCOL = 1
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
LINK_LOST = 255  # poll() code for "the SSH session is gone", as ssh itself reports it


def launcher_source() -> bytes:
    return resources.files("tether.kernels").joinpath("remote_launcher.py").read_bytes()


def parse_line(line: str) -> dict[str, Any] | None:
    """A protocol event from one stdout line, or None for anything else (shell noise)."""
    if not line.startswith(MARK):
        return None
    try:
        event = json.loads(line[len(MARK):])
    except ValueError as exc:
        raise ProtocolError(f"malformed launcher line: {line[:80]!r}") from exc
    return event if isinstance(event, dict) else None


def session_failure(target: SshTarget, python: str, returncode: int | None,
                    stderr: str) -> TetherError:
    """Why a session ended before the launcher answered, in the user's terms."""
    last = (stderr.strip().splitlines() or [""])[-1]
    host = target.alias
    if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
        return HostKeyMismatchError(
            f"the host key of {host} is not the one pinned for it, or is unknown",
            f"verify it once with `ssh {host}` (or `tether connect` for tether hosts)")
    if "Permission denied" in stderr:
        return AuthError(f"{host} refused the SSH key: {last}",
                         f"check that `ssh {host} true` works without a password prompt")
    if returncode == 255:
        return ConnectError(f"cannot reach {host}: {last or 'ssh exited with 255'}",
                            f"check `ssh {host} true`")
    if returncode == 127 or "No such file or directory" in stderr or "not found" in last:
        return NotFoundError(f"remote python {python} does not run on {host}: {last}",
                             "pass --python with the absolute path of a Python on that host")
    return PeerError(f"the kernel launcher failed on {host} (exit {returncode}): {last}",
                     f"run `ssh {host} {python} -V` to check the remote python")


def launcher_error(target: SshTarget, event: dict[str, Any]) -> TetherError:
    """A launcher ``error`` event as a tether error."""
    code, message = event.get("code"), event.get("message", "launcher error")
    where = f"{message} (on {target.alias})"
    if code == "no_kernelspec":
        return NotFoundError(where, "list remote kernelspecs: `jupyter kernelspec list` there")
    if code in ("not_found", "not_attachable"):
        return NotFoundError(where, "the kernel exited or its grace period ran out")
    if code == "exists":
        return AlreadyExistsError(where)
    if code == "version":
        return ProtocolError(where, "use the same tether version on both sides")
    return PeerError(where)


class KernelLink:
    """One SSH session running the launcher; optionally the ControlMaster of port forwards."""

    def __init__(self, target: SshTarget, python: str) -> None:
        self.target = target
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.kernel_exit: int | None = None
        self.noise: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._first: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ctl_dir: Path | None = None
        self.exited = threading.Event()  # the kernel exited (its launcher said so)
        self._readers: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def control_path(self) -> Path:
        assert self._ctl_dir is not None
        return self._ctl_dir / "c"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def open(self, request: dict[str, Any], timeout: float,
             keepalive_s: float = 0) -> dict[str, Any]:
        """Start the session, send ``request``; return the launcher's first event."""
        # short private dir: a unix socket path must fit in 104 bytes
        self._ctl_dir = Path(tempfile.mkdtemp(prefix="tk-"))
        argv = tgt.master_argv(self.target, self.control_path, self.python)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError as exc:
            self.close()
            raise SystemDependencyError("the OpenSSH client `ssh` is not installed",
                                        "install openssh-client (tether doctor)") from exc
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True, name="tk-out"),
                         threading.Thread(target=self._read_stderr, daemon=True, name="tk-err")]
        for thread in self._readers:
            thread.start()
        payload = tgt.launcher_payload(launcher_source(), json.dumps(request).encode())
        self._write(payload)
        try:
            event = self._wait_first(timeout)
        except BaseException:
            self.close()
            raise
        if keepalive_s > 0:
            threading.Thread(target=self._keepalive, args=(keepalive_s,), daemon=True,
                             name="tk-ping").start()
        return event

    def _wait_first(self, timeout: float) -> dict[str, Any]:
        try:
            event = self._first.get(timeout=timeout)
        except queue.Empty:
            raise DeadlineError(f"the kernel launcher on {self.target.alias} did not answer "
                                f"within {timeout:.0f}s", "check `ssh "
                                f"{self.target.alias} true`; raise launch_timeout") from None
        if event is None:  # stdout closed before any event: the session failed
            rc = self._wait_proc(5)
            self._readers[1].join(2)  # all of ssh's stderr: it says why
            raise session_failure(self.target, self.python, rc, "\n".join(self._stderr))
        if event.get("event") == "error":
            raise launcher_error(self.target, event)
        return event

    def forward(self, bind_ip: str, pairs: list[tuple[int, int]], timeout: float = 15) -> None:
        """Add local->remote port forwards to the running master."""
        argv = tgt.forward_argv(self.target, self.control_path, bind_ip, pairs)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no detail"])[-1]
            raise ConnectError(f"could not forward the kernel ports through "
                               f"{self.target.alias}: {detail}",
                               "a local port may be taken; try again")

    def send(self, message: dict[str, Any]) -> bool:
        """Send one control message to the launcher; False if the link is down."""
        return self._write((json.dumps(message) + "\n").encode())

    def close(self, timeout: float = 3.0) -> int | None:
        """End the session: the launcher sees EOF (its lifetime decides the kernel's fate)."""
        self._closed.set()
        rc = None
        if self.proc is not None:
            with self._lock, contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            rc = self._wait_proc(timeout)
            if rc is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                rc = self._wait_proc(timeout)
                if rc is None:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    rc = self._wait_proc(timeout)
            for thread in self._readers:
                thread.join(1.0)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        if self._ctl_dir is not None:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
        return rc

    def drain(self, timeout: float) -> None:
        """Wait until the session's output is fully read (after the process has ended)."""
        if self._readers:
            self._readers[0].join(timeout)

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the kernel's exit event or the session's end; True if either happened."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited.is_set() or not self.alive:
                return True
            self.exited.wait(0.05)
        return self.exited.is_set() or not self.alive

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
        first_sent = False
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = parse_line(line)
            except ProtocolError:
                event = None
            if event is None:
                self.noise.append(line)
                continue
            kind = event.get("event")
            if kind == "exited":
                self.kernel_exit = int(event.get("code") or 0)
                if event.get("log_tail"):
                    log.debug("remote kernel log tail:\n%s", event["log_tail"])
                self.exited.set()
            elif kind == "pong":
                continue
            if not first_sent:
                first_sent = True
                self._first.put(event)
        if not first_sent:
            self._first.put(None)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _keepalive(self, interval: float) -> None:
        while not self._closed.wait(interval):
            if not self.send({"op": "ping", "t": time.time()}):
                return

    def _wait_proc(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


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
