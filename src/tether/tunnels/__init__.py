"""Tunnels: how the outside world reaches the gateway's one port.

Every tunnel has the same small interface (`Tunnel`): ``start()`` returns the public URL,
``is_alive()`` says whether its process still runs, ``stop()`` ends it. `open_tunnel(kind,
...)` builds one: ``local`` (no tunnel), ``cloudflared`` (a quick tunnel), ``ngrok`` (HTTP via
pyngrok). `TunnelSupervisor` restarts a tunnel that died, or (with `probe_health`) one whose
public URL stopped reaching the gateway, and reports the new URL.
"""

from tether.tunnels.base import Tunnel, TunnelKind, open_tunnel
from tether.tunnels.supervisor import TunnelSupervisor, probe_health

__all__ = ["Tunnel", "TunnelKind", "TunnelSupervisor", "open_tunnel", "probe_health"]
