"""The gateway ASGI app: everything the outside world reaches, on one port.

``/.tether/ssh`` bridges a WebSocket to the local sshd, ``/.tether/pair`` pairs a client,
``/.tether/health`` says the gateway is alive, and every other path goes to the reverse-proxy
slot (the browser IDE) when an upstream is set. Wire format: docs/gateway-protocol.md.

The bridge is a raw ASGI handler (no framework wrapper per message): it is the hot path of
every ssh, scp and rsync byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tether.gateway import core
from tether.gateway.state import HostState

log = logging.getLogger("tether.gateway")

READ_SIZE = 256 * 1024
# Bytes queued towards sshd before we stop reading the WebSocket (backpressure).
TCP_HIGH_WATER = 4 * 1024 * 1024


@dataclass
class GatewaySettings:
    state_dir: Path  # the host state dir (clients, pairing codes, authorized_keys)
    sshd_port: int
    workspace_id: str
    host_public_key: str  # OpenSSH public key line of sshd's host key
    user: str  # login user on this host
    proxy_upstream: str | None = None  # e.g. "http://127.0.0.1:8080" (the IDE)
    pair_limit_per_client: int = 10
    pair_limit_overall: int = 60
    pair_limit_window_s: float = 60.0
    # Behind cloudflared/ngrok every request comes from 127.0.0.1; the tunnel's header then
    # names the real client. Only trusted when a tunnel we started sits in front.
    trust_forwarded_for: bool = False


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def client_address(scope: dict, trust_forwarded_for: bool) -> str:
    if trust_forwarded_for:
        h = _headers(scope)
        for name in ("cf-connecting-ip", "x-forwarded-for"):
            if h.get(name):
                return h[name].split(",")[0].strip()
    client = scope.get("client")
    return client[0] if client else "?"


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode()),
                            (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})


async def _read_body(receive, limit: int = 64 * 1024) -> bytes | None:
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body += msg.get("body", b"")
        if len(body) > limit:
            return None
        if not msg.get("more_body"):
            return body


class Gateway:
    """The ASGI callable (one per ``create_app``); holds no secret in plain form."""

    def __init__(self, settings: GatewaySettings) -> None:
        from tether.ssh.keys import fingerprint_of_public_key

        self.settings = settings
        self.state = HostState(settings.state_dir)
        self.host_key_fingerprint = fingerprint_of_public_key(settings.host_public_key)
        self.limiter = core.RateLimiter(settings.pair_limit_per_client,
                                        settings.pair_limit_overall,
                                        settings.pair_limit_window_s)
        self.proxy = None
        if settings.proxy_upstream:
            from tether.gateway.proxy import ReverseProxy

            self.proxy = ReverseProxy(settings.proxy_upstream)
        self.active_bridges = 0

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        path = scope.get("path", "")
        if path == "/.tether/ssh" and kind == "websocket":
            await self.bridge(scope, receive, send)
        elif path == "/.tether/health" and kind == "http":
            await _send_json(send, 200, {"ok": True, "v": core.PROTOCOL_VERSION})
        elif path == "/.tether/pair" and kind == "http":
            await self.pair(scope, receive, send)
        elif path.startswith("/.tether/"):
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _send_json(send, 404, {"error": "not found"})
        elif self.proxy is not None:
            await self.proxy(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _send_json(send, 404, {"error": "nothing is served here yet",
                                         "hint": "start the workspace with an IDE"})

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.proxy is not None:
                    await self.proxy.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- pairing ------------------------------------------------------------------------

    async def pair(self, scope, receive, send) -> None:
        if scope["method"] != "POST":
            await _send_json(send, 405, {"error": "use POST"}, [(b"allow", b"POST")])
            return
        client = client_address(scope, self.settings.trust_forwarded_for)
        wait = self.limiter.check(client, time.monotonic())
        if wait is not None:
            log.warning("pairing rate limited for %s", client)
            await _send_json(send, 429, {"error": "too many pairing attempts",
                                         "retry_after": round(wait, 1)},
                             [(b"retry-after", str(max(1, round(wait))).encode())])
            return
        body = await _read_body(receive)
        if body is None:
            await _send_json(send, 400, {"error": "the body is missing or too large"})
            return
        try:
            request = core.parse_pair_request(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            await _send_json(send, 400, {"error": f"malformed pairing request: {exc}"})
            return
        if not _same(request.workspace_id, self.settings.workspace_id):
            await _send_json(send, 401, {"error": "wrong workspace or pairing code"})
            return
        outcome, token = await asyncio.to_thread(
            self.state.pair, request, host_key_fingerprint=self.host_key_fingerprint)
        if outcome is core.Redeem.WRONG:
            log.warning("wrong pairing code from %s", client)
            await _send_json(send, 401, {"error": "wrong workspace or pairing code"})
        elif outcome is core.Redeem.SPENT:
            await _send_json(send, 410, {"error": "this pairing code was used or has expired"})
        elif outcome is core.Redeem.KEY_MISMATCH:
            # Only a holder of a valid code learns the fingerprint (a successful pairing
            # would hand over the whole key anyway); the code stays usable.
            log.warning("pairing from %s expected another host key; code kept", client)
            await _send_json(send, 409, {"error": "the connection string names another "
                                                  "host key",
                                         "host_key_fingerprint": self.host_key_fingerprint})
        else:
            log.info("paired client %r from %s", request.client_name, client)
            await _send_json(send, 200, {"v": core.PROTOCOL_VERSION,
                                         "workspace_id": self.settings.workspace_id,
                                         "host_key": self.settings.host_public_key,
                                         "user": self.settings.user, "access_token": token})

    # -- the SSH bridge -----------------------------------------------------------------

    async def _deny(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})

    async def bridge(self, scope, receive, send) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        token = core.parse_bearer(_headers(scope).get("authorization"))
        # The token is checked before anything touches sshd: an unauthenticated client never
        # gets a TCP connection to it.
        if not core.token_matches(token, self.state.token_digests()):
            await self._deny(send, 401, "missing or wrong access token")
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.settings.sshd_port,
                                                           limit=READ_SIZE * 2)
        except OSError:
            await self._deny(send, 502, "the workspace's sshd is not answering")
            return
        await send({"type": "websocket.accept"})
        self.active_bridges += 1
        try:
            await _pump(reader, writer, receive, send)
        finally:
            self.active_bridges -= 1
            writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, receive,
                send) -> None:
    """Copy bytes both ways until either side ends; then end the other."""
    transport = writer.transport

    async def ws_to_tcp() -> None:
        while True:
            msg = await receive()
            kind = msg["type"]
            if kind == "websocket.receive":
                data = msg.get("bytes")
                if data is None:  # text frames are not part of the protocol
                    await send({"type": "websocket.close", "code": 1003})
                    return
                writer.write(data)
                if transport.get_write_buffer_size() > TCP_HIGH_WATER:
                    await writer.drain()
            else:  # websocket.disconnect
                return

    async def tcp_to_ws() -> None:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                await send({"type": "websocket.close", "code": 1000})
                return
            await send({"type": "websocket.send", "bytes": data})

    tasks = [asyncio.ensure_future(ws_to_tcp()), asyncio.ensure_future(tcp_to_ws())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        exc = t.exception()
        if exc is not None and not isinstance(exc, (ConnectionError, OSError)):
            # uvicorn raises its own ClientDisconnected (an OSError subclass) on a gone peer;
            # anything else is a bug we want in the log.
            log.error("bridge failed: %r", exc)


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def create_app(settings: GatewaySettings) -> Gateway:
    """The gateway ASGI app for ``settings`` (no import-time globals)."""
    return Gateway(settings)
