"""The tunnel interface and the factory."""

from __future__ import annotations

import enum
from typing import Protocol

from tether.errors import UsageError


class TunnelKind(str, enum.Enum):
    LOCAL = "local"
    CLOUDFLARED = "cloudflared"
    NGROK = "ngrok"


class Tunnel(Protocol):
    kind: str

    def start(self) -> str:
        """Start carrying traffic to the local port; returns the public base URL."""

    def is_alive(self) -> bool:
        """Whether the tunnel's process runs (whether traffic gets through is the
        supervisor's health probe's business)."""

    def stop(self) -> None:
        """End the tunnel; idempotent."""


def open_tunnel(kind: str | TunnelKind, local_port: int, *, public_url: str | None = None
                ) -> Tunnel:
    """A not-yet-started tunnel of ``kind`` to ``127.0.0.1:local_port``."""
    try:
        kind = TunnelKind(kind)
    except ValueError as exc:
        raise UsageError(f"unknown tunnel {kind!r}",
                         "use one of: local, cloudflared, ngrok") from exc
    if public_url is not None and kind is not TunnelKind.LOCAL:
        raise UsageError("--public-url only goes with --tunnel local",
                         "the other tunnels tell tether their URL themselves")
    if kind is TunnelKind.LOCAL:
        from tether.tunnels.local import LocalTunnel

        return LocalTunnel(local_port, public_url)
    if kind is TunnelKind.CLOUDFLARED:
        from tether.tunnels.cloudflared import CloudflaredTunnel

        return CloudflaredTunnel(local_port)
    from tether.tunnels.ngrok import NgrokTunnel

    return NgrokTunnel(local_port)
