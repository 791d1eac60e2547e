"""A cloudflared quick tunnel (``https://<words>.trycloudflare.com``, no account needed)."""

from __future__ import annotations

import re

from tether.errors import SystemDependencyError
from tether.tunnels.process import ProcessTunnel, which

_URL_RE = re.compile(r"https://[a-z0-9]+(?:-[a-z0-9]+)*\.trycloudflare\.com\b")


def parse_url(line: str) -> str | None:
    """The quick-tunnel URL in one line of cloudflared's log, if it has one (pure)."""
    m = _URL_RE.search(line)
    # cloudflared's log also mentions api.trycloudflare.com, which is not the tunnel
    if m and not m.group(0).startswith("https://api."):
        return m.group(0)
    return None


class CloudflaredTunnel(ProcessTunnel):
    kind = "cloudflared"
    parse_url = staticmethod(parse_url)

    def argv(self) -> list[str]:
        binary = which("cloudflared")
        if binary is None:
            raise SystemDependencyError(
                "cloudflared is not installed",
                "install it from https://github.com/cloudflare/cloudflared/releases (a single "
                "binary: put it on PATH), or use --tunnel ngrok / --tunnel local")
        return [binary, "tunnel", "--no-autoupdate", "--url", f"http://127.0.0.1:{self.local_port}"]
