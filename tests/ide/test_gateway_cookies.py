"""The gateway's reverse proxy serves every browser with one HTTP client: it must not keep
cookies, or the IDE session cookie of whoever logged in first would authenticate everyone."""

from __future__ import annotations

import json

import httpx

from tests.gateway.conftest import GatewayThread, answer_lifespan, make_gateway


async def _session_app(scope, receive, send):
    """Sets a session cookie on /login; echoes the Cookie header it got elsewhere."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    await receive()
    headers = [(b"content-type", b"application/json")]
    if scope["path"] == "/login":
        headers.append((b"set-cookie", b"session=secret-of-the-first-user; Path=/; HttpOnly"))
    cookie = dict(scope["headers"]).get(b"cookie", b"").decode()
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"cookie": cookie}).encode()})


def test_proxy_keeps_no_cookie_between_clients(tmp_path) -> None:
    upstream = GatewayThread(_session_app)
    gw, server = make_gateway(tmp_path, proxy_upstream=f"http://127.0.0.1:{upstream.port}")
    try:
        first = httpx.post(gw.url + "/login")
        assert "secret-of-the-first-user" in first.headers["set-cookie"]  # passed through
        other = httpx.get(gw.url + "/anything")  # another browser, no cookie of its own
        assert other.json() == {"cookie": ""}
        own = httpx.get(gw.url + "/anything", headers={"cookie": "session=mine"})
        assert own.json() == {"cookie": "session=mine"}
    finally:
        server.stop()
        gw.sshd.stop()
    upstream.stop()
