"""Running the gateway app on uvicorn, on a socket we bound ourselves (port 0 works)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

WS_MAX_FRAME = 16 * 1024 * 1024


def bind(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_gateway(app, sock: socket.socket, ws_impl: str = "websockets-sansio"
                        ) -> AsyncIterator[object]:
    """Serve ``app`` on ``sock`` until the block exits; yields the uvicorn server."""
    import uvicorn

    config = uvicorn.Config(app, ws=ws_impl, ws_per_message_deflate=False,
                            ws_max_size=WS_MAX_FRAME, ws_ping_interval=20.0,
                            ws_ping_timeout=60.0, log_level="warning", lifespan="on",
                            http="h11", access_log=False, server_header=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    loop_task = asyncio.ensure_future(server.main_loop())
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await loop_task
        await server.shutdown(sockets=[sock])
