"""Fixtures for the sync tests: a real sshd (tether's runner) and a real gateway in its own
process (killable, restartable on the same port so a watching session can reconnect), and a
laptop paired through it. The "remote" is this machine, reached through sshd + gateway; the
agent runs as ``tether agent sync`` started over the SSH channel."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.gateway.state import HostState
from tether.ssh.sshd import Sshd, ensure_sshd, host_public_key

HERE = Path(__file__).parent
USER = pwd.getpwuid(os.getuid()).pw_name


@dataclass
class SyncHost:
    dir: Path
    sshd: Sshd
    state: HostState
    host_key: str
    gateway: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_gateway(self) -> None:
        self.gateway = subprocess.Popen(
            [sys.executable, str(HERE / "_gateway_main.py"), str(self.state.dir),
             str(self.sshd.port), self.host_key, USER, str(self.port)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src")})
        line = self.gateway.stdout.readline()
        assert line.strip().isdigit(), "gateway did not start"
        self.port = int(line)

    def kill_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            os.killpg(self.gateway.pid, signal.SIGKILL)
            self.gateway.wait(5)

    def ensure_gateway(self) -> None:
        if self.gateway is None or self.gateway.poll() is not None:
            deadline = time.monotonic() + 5
            while True:  # the old socket may linger a moment after a kill
                try:
                    self.start_gateway()
                    return
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def connection_string(self) -> str:
        from tether.link.connstring import ConnectionString
        from tether.ssh.keys import fingerprint_of_public_key

        code, expires = self.state.issue_code(ttl_s=300)
        return ConnectionString(url=self.url, workspace_id=self.state.workspace_id(),
                                pairing_code=code, expires_at=expires,
                                host_key_fingerprint=fingerprint_of_public_key(self.host_key)
                                ).encode()


@pytest.fixture(scope="session")
def sync_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncHost]:
    d = tmp_path_factory.mktemp("synchost")
    sshd = Sshd(d / "host")
    sshd.start(ensure_sshd(install=False))
    state = HostState(d / "host")
    h = SyncHost(d, sshd, state, host_public_key(sshd.host_key))
    h.start_gateway()
    try:
        yield h
    finally:
        h.kill_gateway()
        sshd.stop()


@pytest.fixture
def ws(isolated, sync_host: SyncHost, monkeypatch: pytest.MonkeyPatch) -> str:
    """This (isolated) laptop paired with ``sync_host`` as "ws" through the real gateway.

    The agent runs under sshd with the real HOME; it is told not to keep its stat cache
    (which lives in ~/.cache), so tests leave nothing in real user files.
    """
    from tether.link.pairing import connect

    monkeypatch.setenv("TETHER_SYNC_REMOTE_CACHE", "0")
    sync_host.ensure_gateway()
    connect(sync_host.connection_string(), "ws")
    return "ws"


@dataclass
class Roots:
    local: Path
    remote: Path


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    """A local root and a (not yet existing) remote root, both on this machine."""
    local = tmp_path / "local"
    local.mkdir()
    return Roots(local, tmp_path / "remote")
