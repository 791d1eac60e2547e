"""Fixtures of the sandbox service tests (API, SDK, MCP, named sandboxes, pool).

Imported by those test modules (not a conftest: the core sandbox tests do not need them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789"


@dataclass
class ApiServer:
    url: str
    token: str
    workdir: Path

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}


@pytest.fixture
def api_workdir(tmp_path: Path) -> Path:
    w = tmp_path / "api-work"
    w.mkdir()
    (w / "README").write_text("served workspace\n")
    return w


def start_server(settings) -> tuple[object, threading.Thread, str]:
    """A real uvicorn server for ``settings`` on 127.0.0.1, port 0, in a thread."""
    import uvicorn

    from tether.sandbox.api import create_app

    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as `tether serve` does
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def api_server(isolated, api_workdir: Path) -> Iterator[ApiServer]:
    from tether.sandbox.api import ApiSettings

    server, thread, url = start_server(ApiSettings(token=TOKEN, workdir=api_workdir,
                                                   max_body_bytes=64 * 1024))
    try:
        yield ApiServer(url, TOKEN, api_workdir)
    finally:
        server.should_exit = True
        thread.join(10)


def tether_proc(env: dict[str, str], *args: str, input: bytes | None = None,
                cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """A separate `tether` process: a real CLI restart between calls."""
    from tests.conftest import find_tether_bin

    return subprocess.run([find_tether_bin() or "tether", *args], env=env, input=input,
                          capture_output=True, timeout=timeout, cwd=cwd)


def host_listener() -> tuple[socket.socket, int]:
    """A TCP listener on the host's loopback that a sandbox without network must not reach."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s, s.getsockname()[1]


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
