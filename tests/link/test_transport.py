"""The transport seam: the raw WebSocket byte stream reaches sshd, large writes survive
framing, and asyncssh runs over either dialer (gateway WebSocket, plain TCP)."""

from __future__ import annotations

import pytest

from tether.link.profiles import load_profile
from tether.link.transport import open_ssh, open_ws_stream

pytestmark = pytest.mark.timeout(60)


async def test_ws_stream_reaches_sshd(paired) -> None:
    stream = await open_ws_stream(load_profile(paired))
    try:
        banner = b""
        while b"\r\n" not in banner:
            chunk = await stream.read()
            assert chunk, "bridge closed before the SSH banner"
            banner += chunk
        assert banner.startswith(b"SSH-2.0-OpenSSH")
        await stream.write(b"SSH-2.0-garbage\r\n" + b"\0" * (3 << 20))  # > one frame
        while await stream.read():  # sshd hangs up on nonsense; the stream then ends
            pass
        assert await stream.read() == b""
    finally:
        await stream.aclose()


@pytest.mark.parametrize("name_fixture", ["paired", "direct"], ids=["gateway", "tcp"])
async def test_open_ssh_pins_and_runs(request, name_fixture) -> None:
    profile = load_profile(request.getfixturevalue(name_fixture))
    conn = await open_ssh(profile)
    try:
        result = await conn.run("echo $((6*7)); head -c 5000000 /dev/zero | wc -c",
                                check=True)
        assert result.stdout.split() == ["42", "5000000"]
        key = conn.get_server_host_key()
        assert key.export_public_key().decode().split()[:2] == profile.host_key.split()[:2]
    finally:
        conn.close()
        await conn.wait_closed()
