"""A real gateway in its own process, so a sync test can kill it mid-transfer.

Usage: python _gateway_main.py STATE_DIR SSHD_PORT HOST_KEY_PUB_LINE USER [PORT]
Prints the bound port on stdout, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tether.gateway.app import GatewaySettings, create_app
from tether.gateway.server import bind, serve_gateway
from tether.gateway.state import HostState


async def main() -> None:
    state_dir, sshd_port, host_key, user = sys.argv[1:5]
    port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    state = HostState(Path(state_dir))
    settings = GatewaySettings(state_dir=state.dir, sshd_port=int(sshd_port),
                               workspace_id=state.workspace_id(), host_public_key=host_key,
                               user=user, pair_limit_per_client=1000, pair_limit_overall=1000)
    sock = bind(port)
    async with serve_gateway(create_app(settings), sock):
        print(sock.getsockname()[1], flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
