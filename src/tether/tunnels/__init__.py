"""Tunnels: how the outside world reaches the gateway's one port.

Every tunnel has the same small interface (`Tunnel`): ``start()`` returns the public URL,
``is_alive()`` says whether it still carries traffic, ``stop()`` ends it. `open_tunnel(kind,
...)` builds one: ``local`` (no tunnel), ``cloudflared`` (a quick tunnel), ``ngrok`` (HTTP via
pyngrok). `TunnelSupervisor` restarts a tunnel that died and reports the new URL.
"""

from tether.tunnels.base import Tunnel, TunnelKind, open_tunnel
from tether.tunnels.supervisor import TunnelSupervisor

__all__ = ["Tunnel", "TunnelKind", "TunnelSupervisor", "open_tunnel"]
