"""The reverse-proxy slot: every path the gateway does not own goes to one upstream.

HTTP requests are streamed through httpx; WebSockets are relayed message by message with the
websockets client. Hop-by-hop headers are dropped; ``Host`` is kept so upstreams that check
the origin (code-server) see the public name.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
from urllib.parse import urlsplit

log = logging.getLogger("tether.gateway.proxy")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length"}
WS_SKIP = HOP_BY_HOP | {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                        "sec-websocket-protocol", "host", "sec-websocket-accept"}


class ReverseProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"proxy upstream {upstream!r} is not an http(s) URL")
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.ws_base = ("wss" if parts.scheme == "https" else "ws") + self.base[len(parts.scheme):]
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import httpx

            # One client serves every browser: it must never keep cookies, or the session
            # cookie of the first user to log in would be sent for everyone after them.
            no_cookies = http.cookiejar.CookieJar(
                http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0),
                                             follow_redirects=False, cookies=no_cookies)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.websocket(scope, receive, send)

    def _target(self, scope, base: str) -> str:
        path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string") or b""
        return base + path.decode("latin-1") + (("?" + qs.decode("latin-1")) if qs else "")

    async def http(self, scope, receive, send) -> None:
        import httpx

        headers = [(k, v) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]

        async def body():
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                if chunk:
                    yield chunk
                if not msg.get("more_body"):
                    return

        request = self.client.build_request(scope["method"], self._target(scope, self.base),
                                            headers=headers, content=body())
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("proxy upstream failed: %r", exc)
            msg = b'{"error": "the upstream behind the gateway is not answering"}'
            await send({"type": "http.response.start", "status": 502,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": msg})
            return
        try:
            out_headers = [(k, v) for k, v in response.headers.raw
                           if k.decode("latin-1").lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out_headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def websocket(self, scope, receive, send) -> None:
        import websockets
        from websockets.asyncio.client import connect

        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in WS_SKIP]
        subprotocols = scope.get("subprotocols") or None
        try:
            upstream = await connect(self._target(scope, self.ws_base),
                                     additional_headers=headers, subprotocols=subprotocols,
                                     compression=None, max_size=None, open_timeout=10)
        except (OSError, websockets.exceptions.WebSocketException, asyncio.TimeoutError):
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def down() -> None:
            async for message in upstream:
                key = "bytes" if isinstance(message, bytes) else "text"
                await send({"type": "websocket.send", key: message})
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})

        async def up() -> None:
            while True:
                m = await receive()
                if m["type"] != "websocket.receive":
                    await upstream.close()
                    return
                await upstream.send(m["bytes"] if m.get("bytes") is not None else m["text"])

        tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
