"""No tunnel: the gateway's own address, or a URL the user says reaches it."""

from __future__ import annotations

from tether.errors import UsageError
from tether.link.connstring import valid_gateway_url


class LocalTunnel:
    kind = "local"

    def __init__(self, local_port: int, public_url: str | None = None) -> None:
        if public_url is not None and not valid_gateway_url(public_url):
            raise UsageError(f"--public-url {public_url!r} is not an http(s) URL",
                             "for example --public-url https://box.example.org:8443")
        self.local_port = local_port
        self.public_url = public_url.rstrip("/") if public_url else None

    def start(self) -> str:
        return self.public_url or f"http://127.0.0.1:{self.local_port}"

    def is_alive(self) -> bool:
        return True

    def stop(self) -> None:
        pass
