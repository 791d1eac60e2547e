"""Run a real gateway in its own process (so tests can kill it mid-transfer).

Usage: python -m tests.link._gateway_main STATE_DIR SSHD_PORT HOST_KEY_PUB_LINE USER
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
    state = HostState(Path(state_dir))
    settings = GatewaySettings(state_dir=state.dir, sshd_port=int(sshd_port),
                               workspace_id=state.workspace_id(), host_public_key=host_key,
                               user=user, pair_limit_per_client=1000, pair_limit_overall=1000)
    sock = bind(0)
    async with serve_gateway(create_app(settings), sock):
        print(sock.getsockname()[1], flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
