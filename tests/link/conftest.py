"""Fixtures for the link tests: a real sshd (tether's runner), a real gateway in its own
process (so a test can kill it mid-copy), real pairing into an isolated home, and a profile
that reaches the same sshd over plain TCP (``tcp://``) for transport-independent checks."""

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
class Host:
    """A workspace host: sshd plus gateway, each killable."""

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
             str(self.sshd.port), self.host_key, USER],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src")})
        line = self.gateway.stdout.readline()
        assert line.strip().isdigit(), "gateway did not start"
        self.port = int(line)

    def kill_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            os.killpg(self.gateway.pid, signal.SIGKILL)
            self.gateway.wait(5)

    def connection_string(self) -> str:
        return _connection_string(self)


def _connection_string(host: Host) -> str:
    from tether.link.connstring import ConnectionString
    from tether.ssh.keys import fingerprint_of_public_key

    code, expires = host.state.issue_code(ttl_s=300)
    return ConnectionString(url=host.url, workspace_id=host.state.workspace_id(),
                            pairing_code=code, expires_at=expires,
                            host_key_fingerprint=fingerprint_of_public_key(host.host_key)
                            ).encode()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """sshd + gateway (module-scoped; a test that kills the gateway restarts it)."""
    d = tmp_path_factory.mktemp("linkhost")
    sshd = Sshd(d / "host")
    sshd.start(ensure_sshd(install=False))
    state = HostState(d / "host")
    h = Host(d, sshd, state, host_public_key(sshd.host_key))
    h.start_gateway()
    try:
        yield h
    finally:
        h.kill_gateway()
        sshd.stop()


def _stop_daemon() -> None:
    from tether import errors
    from tether.link import daemon_client

    try:
        daemon_client.request("shutdown")
    except errors.TetherError:
        pass
    sock = Path(daemon_client.socket_path())
    deadline = time.monotonic() + 5
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _no_daemon_left(isolated, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test's link daemon (one per isolated state dir) is stopped when it ends."""
    monkeypatch.setenv("TETHER_LINK_DAEMON_IDLE", "60")
    yield
    _stop_daemon()


@pytest.fixture
def paired(isolated, host: Host) -> str:
    """This (isolated) laptop paired with ``host`` as "ws" through the real gateway."""
    from tether.link.pairing import connect

    if host.gateway is None or host.gateway.poll() is not None:
        host.start_gateway()
    connect(host.connection_string(), "ws")
    return "ws"


@pytest.fixture
def direct(isolated, host: Host) -> str:
    """A profile "dev" reaching the same sshd over plain TCP (no gateway)."""
    from tether.link.pairing import ensure_client_key
    from tether.link.profiles import HostProfile, host_key_alias, known_hosts_path, save_profile

    key = ensure_client_key()
    with host.sshd.authorized_keys.open("a") as fh:
        fh.write(key.with_name(key.name + ".pub").read_text())
    save_profile(HostProfile("dev", "direct", f"tcp://127.0.0.1:{host.sshd.port}", USER,
                             host.host_key, key, known_hosts_path("dev"),
                             host_key_alias("dev")))
    return "dev"
