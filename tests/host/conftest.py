"""Fixtures of the host tests: a tunnel subclass whose process the test can kill."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tether.tunnels.process import ProcessTunnel

RELAY = Path(__file__).with_name("relay_tunnel.py")
_URL = re.compile(r"^relay-url: (http://127\.0\.0\.1:\d+)$")


def parse_relay_url(line: str) -> str | None:
    m = _URL.match(line)
    return m.group(1) if m else None


class RelayTunnel(ProcessTunnel):
    """A ProcessTunnel (the class cloudflared uses) running a loopback relay process."""

    kind = "relay"
    parse_url = staticmethod(parse_relay_url)

    def argv(self) -> list[str]:
        return [sys.executable, str(RELAY), str(self.local_port)]
