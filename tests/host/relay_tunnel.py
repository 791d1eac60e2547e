"""A real (loopback) tunnel process for tests: relays a fresh port to the gateway's port.

Prints ``relay-url: http://127.0.0.1:<port>`` once listening, like a tunnel announcing its
public URL. Killing it drops the "public" address, as a dying cloudflared would.
"""

import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(target: int) -> None:
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"starting relay\nrelay-url: http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
