"""Tunnels: the URL parser (pure), flag checks, and the supervisor restarting a killed tunnel."""

from __future__ import annotations

import os
import signal
import sys

import httpx
import pytest

from tests.host.conftest import RelayTunnel
from tether.errors import AuthError, ConnectError, SystemDependencyError, UsageError
from tether.tunnels import TunnelSupervisor, open_tunnel
from tether.tunnels.cloudflared import CloudflaredTunnel, parse_url
from tether.tunnels.ngrok import resolve_token
from tether.tunnels.process import ProcessTunnel
from tether.tunnels.supervisor import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("line,url", [
    ("2024-05-01T10:00:00Z INF |  https://quiet-river-bank-42.trycloudflare.com  |",
     "https://quiet-river-bank-42.trycloudflare.com"),
    ("INF Requesting new quick Tunnel on trycloudflare.com...", None),
    ("ERR failed to request quick Tunnel: Post \"https://api.trycloudflare.com/tunnel\"", None),
    ("https://evil.trycloudflare.com.attacker.net", "https://evil.trycloudflare.com"),
    ("http://plain.trycloudflare.com", None),
    ("", None),
], ids=["banner", "requesting", "api-host", "suffix-not-swallowed", "not-https", "empty"])
def test_cloudflared_parse_url(line: str, url: str | None) -> None:
    assert parse_url(line) == url


@pytest.mark.parametrize("kind,public_url,message", [
    ("bogus", None, "unknown tunnel"),
    ("cloudflared", "https://x.org", "--public-url only goes with --tunnel local"),
    ("local", "ftp://x", "not an http(s) URL"),
], ids=["unknown-kind", "public-url-with-cloudflared", "bad-public-url"])
def test_open_tunnel_rejects(kind, public_url, message) -> None:
    with pytest.raises(UsageError) as info:
        open_tunnel(kind, 1234, public_url=public_url)
    assert message in info.value.message


def test_local_tunnel_urls() -> None:
    assert open_tunnel("local", 8765).start() == "http://127.0.0.1:8765"
    t = open_tunnel("local", 8765, public_url="https://box.example.org/")
    assert t.start() == "https://box.example.org" and t.is_alive()


def test_cloudflared_missing_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr("tether.tunnels.process.which", lambda name: None)
    monkeypatch.setattr("tether.tunnels.cloudflared.which", lambda name: None)
    with pytest.raises(SystemDependencyError) as info:
        CloudflaredTunnel(1).start()
    assert "cloudflared" in info.value.message and "--tunnel" in info.value.hint


def test_ngrok_token_from_env_or_secrets(isolated, monkeypatch) -> None:
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with pytest.raises(AuthError) as info:
        resolve_token()
    assert "NGROK_AUTHTOKEN" in info.value.hint
    from tether import secrets

    secrets.set_secret("ngrok:authtoken", "from-secrets")
    assert resolve_token() == "from-secrets"
    assert resolve_token({"NGROK_AUTHTOKEN": "from-env"}) == "from-env"


class _Silent(ProcessTunnel):
    kind = "silent"
    start_timeout_s = 1.0
    parse_url = staticmethod(lambda line: None)

    def __init__(self, code: str) -> None:
        super().__init__(1)
        self.code = code

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.code]


def test_process_tunnel_failures() -> None:
    with pytest.raises(ConnectError) as info:
        _Silent("print('boom: no account'); raise SystemExit(3)").start()
    assert "code 3" in info.value.message and "boom: no account" in info.value.message
    from tether.errors import DeadlineError

    t = _Silent("import time; print('waiting'); time.sleep(30)")
    with pytest.raises(DeadlineError):
        t.start()
    assert not t.is_alive()


def test_supervisor_restarts_a_killed_tunnel() -> None:
    # the "gateway" here is any local HTTP server; the relay process is the tunnel
    from tests.gateway.conftest import GatewayThread

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"behind the tunnel"})

    server = GatewayThread(app)
    urls: list[str] = []
    sup = TunnelSupervisor(RelayTunnel(server.port), urls.append, interval_s=0.1)
    try:
        first = sup.start()
        assert httpx.get(first).text == "behind the tunnel"
        os.kill(sup.tunnel.proc.pid, signal.SIGKILL)
        assert wait_for(lambda: len(urls) == 2, 10), urls
        assert sup.restarts == 1 and urls[1] != first and sup.url == urls[1]
        assert httpx.get(urls[1]).text == "behind the tunnel"
        with pytest.raises(httpx.HTTPError):
            httpx.get(first, timeout=2)
    finally:
        sup.stop()
        server.stop()
    assert not sup.tunnel.is_alive()


async def _health_app(scope, receive, send):
    """A stand-in gateway that answers /.tether/health like the real one."""
    if scope["type"] != "http":
        return
    ok = scope["path"] == "/.tether/health"
    await send({"type": "http.response.start", "status": 200 if ok else 404,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true, "v": 1}' if ok else b"{}"})


def test_probe_health_answers() -> None:
    from tests.gateway.conftest import GatewayThread
    from tests.conftest import free_port
    from tether.tunnels import probe_health

    server = GatewayThread(_health_app)
    try:
        assert probe_health(f"http://127.0.0.1:{server.port}/", 2) is None
        assert probe_health(f"http://127.0.0.1:{server.port}/nothing-here", 2) == "HTTP 404"
    finally:
        server.stop()
    assert probe_health(f"http://127.0.0.1:{free_port()}", 2).startswith("ConnectError")


def test_supervisor_restarts_a_running_but_cut_off_tunnel() -> None:
    from tests.gateway.conftest import GatewayThread
    from tether.tunnels import probe_health

    server = GatewayThread(_health_app)
    urls: list[str] = []
    probes: list[str | None] = []

    def probe(url: str) -> str | None:
        probes.append(probe_health(url, 0.3))
        return probes[-1]

    sup = TunnelSupervisor(RelayTunnel(server.port), urls.append, interval_s=0.05,
                           probe=probe, probe_every_s=0.1, probe_failures=3)
    try:
        first = sup.start()
        first_proc = sup.tunnel.proc
        assert wait_for(lambda: len(probes) >= 5, 10)
        assert set(probes) == {None} and sup.restarts == 0  # healthy: left alone
        os.kill(first_proc.pid, signal.SIGUSR1)  # stops forwarding; the process runs on
        assert wait_for(lambda: len(urls) == 2, 15), probes
        assert first_proc.poll() is not None  # the cut-off process was stopped, not leaked
        assert sup.restarts == 1 and urls[1] != first and sup.url == urls[1]
        assert probes[-3:] == [probes[-1]] * 3 and probes[-1].startswith("ReadTimeout")
        assert "failed 3 times in a row" in sup.last_restart_reason
        assert httpx.get(urls[1] + "/.tether/health").json()["ok"] is True
    finally:
        sup.stop()
        server.stop()


def test_supervisor_without_probe_never_probes() -> None:
    from tests.gateway.conftest import GatewayThread

    server = GatewayThread(_health_app)
    sup = TunnelSupervisor(RelayTunnel(server.port), lambda url: None, interval_s=0.05)
    try:
        sup.start()
        os.kill(sup.tunnel.proc.pid, signal.SIGUSR1)
        assert not wait_for(lambda: sup.restarts > 0, 1.0)  # only a process exit restarts
    finally:
        sup.stop()
        server.stop()


def test_ngrok_without_agent_is_a_clear_error(isolated, monkeypatch) -> None:
    from tether.tunnels.ngrok import NgrokTunnel

    monkeypatch.setenv("NGROK_AUTHTOKEN", "tok-from-env")
    from pyngrok import conf

    t = NgrokTunnel(1)

    monkeypatch.setattr(conf.PyngrokConfig, "__init__", _config_at(isolated.home / "no-ngrok"))
    with pytest.raises(SystemDependencyError) as info:
        t.start()
    assert "ngrok agent is not installed" in info.value.message
    assert not t.is_alive()
    t.stop()


def _config_at(path):
    from pyngrok import conf

    original = conf.PyngrokConfig.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.ngrok_path = str(path)

    return init


def test_workspace_probe_does_not_blame_the_tunnel_for_a_dead_gateway(isolated) -> None:
    from tests.conftest import free_port
    from tests.gateway.conftest import GatewayThread
    from tether.host.workspace import UpOptions, Workspace

    ws = Workspace(UpOptions(directory=isolated.home, tunnel_probe_timeout_s=2))
    dead_tunnel = f"http://127.0.0.1:{free_port()}"
    server = GatewayThread(_health_app)
    try:
        ws.local_url = f"http://127.0.0.1:{server.port}"  # the gateway answers locally
        assert ws._probe_tunnel(dead_tunnel).startswith("ConnectError")
        assert ws._probe_tunnel(ws.local_url) is None
    finally:
        server.stop()
    assert ws._probe_tunnel(dead_tunnel) is None  # neither answers: wait() handles that
