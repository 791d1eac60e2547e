"""A real sshd (tether's runner) and a real gateway on loopback for the gateway tests."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.gateway.app import GatewaySettings, create_app
from tether.gateway.server import bind, serve_gateway
from tether.gateway.state import HostState
from tether.ssh.sshd import Sshd, ensure_sshd, host_public_key


@dataclass
class RunningGateway:
    url: str
    port: int
    settings: GatewaySettings
    state: HostState
    sshd: Sshd
    app: object

    def sshd_log(self) -> str:
        return self.sshd.log.read_text(errors="replace")


class GatewayThread:
    """Serves an app on its own loop in a thread; ``stop()`` ends it."""

    def __init__(self, app, port: int = 0) -> None:
        self.sock = bind(port)
        self.port = self.sock.getsockname()[1]
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with serve_gateway(app, self.sock):
                self._ready.set()
                await self._stop.wait()

        self.thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        self.thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(10)
        self.sock.close()


async def answer_lifespan(receive, send) -> None:
    """The ASGI lifespan protocol for a test upstream app: acknowledge start-up and shutdown."""
    while True:
        m = await receive()
        await send({"type": m["type"] + ".complete"})
        if m["type"] == "lifespan.shutdown":
            return


def make_gateway(tmp: Path, **overrides) -> tuple[RunningGateway, GatewayThread]:
    sshd = Sshd(tmp / "host")
    sshd.start(ensure_sshd(install=False))
    state = HostState(tmp / "host")
    import pwd, os

    settings = GatewaySettings(state_dir=state.dir, sshd_port=sshd.port,
                               workspace_id=state.workspace_id(),
                               host_public_key=host_public_key(sshd.host_key),
                               user=pwd.getpwuid(os.getuid()).pw_name, **overrides)
    app = create_app(settings)
    server = GatewayThread(app)
    return RunningGateway(f"http://127.0.0.1:{server.port}", server.port, settings, state, sshd,
                          app), server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[RunningGateway]:
    gw, server = make_gateway(tmp_path_factory.mktemp("gw"), pair_limit_per_client=1000,
                              pair_limit_overall=1000)
    try:
        yield gw
    finally:
        server.stop()
        gw.sshd.stop()


@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path
