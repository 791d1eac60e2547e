"""Plumbing the fake SaaS APIs share (hf_hub_fake, kaggle_api_fake): a quiet HTTP/1.1 handler
that counts the body bytes it sends, and a server on 127.0.0.1 (port 0) in a thread."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHandler(BaseHTTPRequestHandler):
    fake: Any    # the fake's state object; it has ``bytes_sent`` (set by ``serve``)
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go out as separate writes

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.fake.bytes_sent += len(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)


@contextlib.contextmanager
def serve(fake: Any, handler: type[FakeHandler], attribute: str) -> Iterator[str]:
    """Serve ``fake`` through ``handler`` (which reads it as ``self.<attribute>``) on
    127.0.0.1, port 0, in a thread; yields the base URL."""
    bound = type("BoundHandler", (handler,), {"fake": fake, attribute: fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), bound)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
