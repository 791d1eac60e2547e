"""A real (loopback) tunnel process for tests: relays a fresh port to the gateway's port.

Prints ``relay-url: http://127.0.0.1:<port>`` once listening, like a tunnel announcing its
public URL. Killing it drops the "public" address, as a dying cloudflared would. SIGUSR1 cuts
it off instead: the process keeps running and accepting connections but forwards nothing
(they hang until the client gives up), as a cloudflared that lost its edge does.
"""

import asyncio
import signal
import sys

cut_off = False


async def pipe(reader, writer):
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(target: int) -> None:
    async def handle(reader, writer):
        if cut_off:
            await reader.read()  # hold the connection open, answer nothing
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    def cut() -> None:
        global cut_off
        cut_off = True

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, cut)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"starting relay\nrelay-url: http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
