"""How the laptop reaches a workspace's sshd: SSH over the gateway's WebSocket, in-process.

A host profile's ``url`` picks the dialer:

- ``http://`` / ``https://``: a WebSocket to ``<url>/.tether/ssh`` with the profile's access
  token (the normal case: the gateway bridges binary frames to sshd).
- ``tcp://HOST:PORT``: a plain TCP connection straight to an sshd (a machine on the same
  network; also how the remote operations are tested without a gateway).

The WebSocket side is the sans-I/O ``websockets.client.ClientProtocol`` driven by one asyncio
``Protocol``: bytes from the socket are parsed into frames and handed to asyncssh's
``data_received`` in the same callback, and asyncssh's writes become frames without a task or
a queue in between. Writes made in one loop turn are coalesced into one frame, which keeps
the per-frame cost (masking, the bridge's per-message work) off the copy path.

Host keys are pinned: asyncssh only ever trusts the key stored in the profile
(``HostKeyPolicy.PINNED``); there is no code path that turns checking off.

Errors are translated here, at the seam: OSError/timeouts -> ConnectError, HTTP 401/403 on the
upgrade -> AuthError, a different host key -> HostKeyMismatchError, a refused client key ->
AuthError.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from tether import errors
from tether._compat import timeout as _timeout

if TYPE_CHECKING:  # pragma: no cover
    import asyncssh

    from tether.link.profiles import HostProfile

SSH_PATH = "/.tether/ssh"
MAX_FRAME = 4 * 1024 * 1024  # contract B says >= 1 MiB; the bridge may send up to this
CONNECT_TIMEOUT_S = 15.0
# Receive side of every channel: a larger window and packets keep a download's pipeline full
# through the bridge and cut asyncssh's per-packet Python cost (~1.2x measured on loopback).
# 128 KiB stays well under OpenSSH's 256 KiB packet limit.
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_MAX_PACKET = 128 * 1024
# Fast AEAD ciphers first: both run in OpenSSL through `cryptography`.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                     "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


class HostKeyPolicy(enum.Enum):
    """How a server's host key is checked. There is deliberately one member."""

    PINNED = "pinned"  # only the key stored in the host profile is accepted


# -- addresses (pure) -----------------------------------------------------------------------


def ws_url(url: str) -> str:
    """The bridge endpoint for a gateway base URL: http(s)://h/p -> ws(s)://h/p/.tether/ssh."""
    from tether.link import connstring

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ConfigError(f"not a gateway URL: {url!r}",
                                 "expected http://HOST:PORT or https://HOST")
    return connstring.ws_url(url, SSH_PATH)


def tcp_address(url: str) -> tuple[str, int] | None:
    """``tcp://HOST:PORT`` -> (HOST, PORT); None for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme != "tcp":
        return None
    if not parts.hostname or parts.port is None:
        raise errors.ConfigError(f"not a TCP address: {url!r}", "expected tcp://HOST:PORT")
    return parts.hostname, parts.port


# -- the WebSocket as an asyncio transport -------------------------------------------------


class _Sink(Protocol):
    def connection_made(self, transport: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class _WsProtocol(asyncio.Protocol):
    """The TCP (or TLS) side: handshake, then frames <-> the sink's bytes."""

    def __init__(self, ws: Any, handshake: asyncio.Future) -> None:
        self.ws = ws
        self.handshake = handshake
        self.tcp: asyncio.Transport | None = None
        self.sink: _Sink | None = None
        self.pending: list[bytes] = []  # payload received before the sink attached
        self.lost = False
        self.lost_exc: Exception | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport  # type: ignore[assignment]
        self._flush()

    def _flush(self) -> None:
        if self.tcp is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                self.tcp.write(chunk)
            elif not self.tcp.is_closing():
                self.tcp.write_eof() if self.tcp.can_write_eof() else self.tcp.close()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._process_events()

    def _process_events(self) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        for event in self.ws.events_received():
            if isinstance(event, Response):
                if not self.handshake.done():
                    if self.ws.handshake_exc is not None:
                        self.handshake.set_exception(self.ws.handshake_exc)
                    else:
                        self.handshake.set_result(event)
            elif isinstance(event, Frame) and event.opcode in (Opcode.BINARY, Opcode.CONT,
                                                               Opcode.TEXT):
                payload = bytes(event.data)
                if self.sink is not None:
                    self.sink.data_received(payload)
                else:
                    self.pending.append(payload)
        if not self.handshake.done() and self.ws.handshake_exc is not None:
            self.handshake.set_exception(self.ws.handshake_exc)  # not HTTP at all
        self._flush()  # pongs, close replies

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()  # may complete a response whose body runs to EOF
        self._process_events()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during handshake"))
        if self.sink is not None:
            self.sink.connection_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        if self.sink is not None:
            self.sink.pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        if self.sink is not None:
            self.sink.resume_writing()


class WsTransport(asyncio.Transport):
    """An asyncio Transport whose bytes travel as binary WebSocket frames.

    Writes within one event-loop turn are joined into one frame (sent by a ``call_soon``),
    so asyncssh's many small packet writes cost one mask and one bridge message.
    """

    def __init__(self, proto: _WsProtocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._proto = proto
        self._out: list[bytes] = []
        self._scheduled = False
        self._closing = False
        self._loop = asyncio.get_running_loop()

    def attach(self, sink: _Sink) -> None:
        self._proto.sink = sink
        sink.connection_made(self)
        pending, self._proto.pending = self._proto.pending, []
        for payload in pending:
            sink.data_received(payload)
        if self._proto.paused:
            sink.pause_writing()
        if self._proto.lost:
            sink.connection_lost(self._proto.lost_exc)

    # asyncio.Transport API used by asyncssh and WsByteStream
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._proto.lost:
            return
        self._out.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        if not self._out or self._proto.lost:
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        for start in range(0, len(data), MAX_FRAME):  # the bridge's frame limit
            self._proto.ws.send_binary(data[start:start + MAX_FRAME])
        self._proto._flush()

    def writelines(self, chunks) -> None:  # type: ignore[override]
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing or self._proto.lost

    def get_write_buffer_size(self) -> int:
        tcp = self._proto.tcp
        return sum(map(len, self._out)) + (tcp.get_write_buffer_size() if tcp else 0)

    def close(self) -> None:
        if self._closing:
            return
        self._send()
        self._closing = True
        tcp = self._proto.tcp
        if self._proto.lost or tcp is None:
            return
        try:
            self._proto.ws.send_close(1000)
            self._proto._flush()
        except Exception:  # noqa: BLE001 - the socket is going away either way
            pass
        # The server answers the close frame and drops TCP; do not wait forever for it.
        self._loop.call_later(2.0, tcp.abort)

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        if self._proto.tcp is not None:
            self._proto.tcp.abort()

    def pause_reading(self) -> None:
        if self._proto.tcp is not None:
            self._proto.tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._proto.tcp is not None:
            self._proto.tcp.resume_reading()

    def is_reading(self) -> bool:
        tcp = self._proto.tcp
        return bool(tcp and tcp.is_reading())


async def _open_ws_transport(url: str, token: str | None,
                             timeout: float = CONNECT_TIMEOUT_S) -> WsTransport:
    """Open the WebSocket to ``url`` (ws:// or wss://) and return it as a transport."""
    from websockets.client import ClientProtocol
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.uri import parse_uri

    uri = parse_uri(url)
    ws = ClientProtocol(uri, max_size=None)  # frames are a byte stream, not messages
    request = ws.connect()
    if token:
        request.headers["Authorization"] = f"Bearer {token}"
    request.headers["User-Agent"] = "tether-link"
    ws.send_request(request)

    loop = asyncio.get_running_loop()
    handshake: asyncio.Future = loop.create_future()
    ctx = ssl.create_default_context() if uri.secure else None
    where = f"{uri.host}:{uri.port}"
    try:
        async with _timeout(timeout):
            tcp, proto = await loop.create_connection(
                lambda: _WsProtocol(ws, handshake), uri.host, uri.port, ssl=ctx,
                server_hostname=uri.host if ctx else None)
            response = await handshake
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise errors.AuthError(
                f"the gateway at {where} refused the access token (HTTP {status})",
                "pair again with a fresh connection string: tether connect STRING --name NAME",
            ) from exc
        if status == 502:
            raise errors.ConnectError(f"the gateway at {where} is up but its sshd is not "
                                      "answering", "restart the workspace: tether down; "
                                      "tether up") from exc
        raise errors.ConnectError(
            f"the gateway at {where} answered HTTP {status} instead of opening the SSH bridge",
            "check the URL; is `tether up` running on the host?") from exc
    except InvalidHandshake as exc:
        raise errors.ProtocolError(f"{where} is not a tether gateway: {exc}",
                                   "check the URL in the connection string") from exc
    except TimeoutError as exc:
        raise errors.ConnectError(f"timed out reaching the gateway at {where}",
                                  "is the host up and the tunnel running?") from exc
    except ssl.SSLError as exc:
        raise errors.ConnectError(f"TLS to {where} failed: {exc.reason or exc}",
                                  "check the gateway URL and the system clock") from exc
    except OSError as exc:
        raise errors.ConnectError(
            f"cannot reach the gateway at {where}: {exc.strerror or exc}",
            "is `tether up` running on the host, and is the URL current? "
            "(tether connect NEWSTRING --name NAME updates it)") from exc
    del response
    sock = tcp.get_extra_info("socket")
    if sock is not None:
        import socket

        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return WsTransport(proto, {"peername": tcp.get_extra_info("peername"),
                               "sockname": tcp.get_extra_info("sockname"),
                               "ws_url": url})


# -- a byte stream for `tether proxy` and other raw users ---------------------------------


class WsByteStream:
    """Raw bytes to and from sshd over the gateway: ``read()``, ``write()``, ``aclose()``.

    ``read`` returns b"" once the bridge closed. ``write`` waits while the socket's buffer
    is full (backpressure).
    """

    def __init__(self) -> None:
        self._buf: asyncio.Queue[bytes] = asyncio.Queue()
        self._eof = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.transport: WsTransport | None = None
        self.error: Exception | None = None

    # sink side (called by the transport)
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf.put_nowait(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self._buf.put_nowait(b"")
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # user side
    async def read(self) -> bytes:
        if self._eof:
            return b""
        data = await self._buf.get()
        if not data:
            self._eof = True
        return data

    async def write(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            raise errors.ConnectError("the gateway closed the SSH bridge")
        self.transport.write(data)
        await self._can_write.wait()

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _token_for(profile: HostProfile) -> str:
    from tether.link.profiles import access_token

    return access_token(profile.name)


async def open_ws_stream(profile: HostProfile) -> WsByteStream:
    """A raw byte stream to the workspace's sshd through its gateway (for `tether proxy`)."""
    transport = await _open_ws_transport(ws_url(profile.url), _token_for(profile))
    stream = WsByteStream()
    transport.attach(stream)
    return stream


# -- SSH on top -----------------------------------------------------------------------------


class _WsTunnel:
    """asyncssh's ``tunnel=`` hook: hands asyncssh a connected WsTransport."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[Any, Any]:
        transport = await _open_ws_transport(self.url, self.token)
        session = session_factory()
        transport.attach(session)
        return transport, session

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def pinned_known_hosts(host_key_line: str) -> tuple[list, list, list]:
    """asyncssh's (trusted, CA, revoked) triple trusting exactly the profile's host key."""
    from tether.link._asyncssh import asyncssh

    try:
        key = asyncssh.import_public_key(host_key_line.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise errors.ConfigError(f"the pinned host key in the profile is unreadable: {exc}",
                                 "run `tether connect` again to re-pair") from exc
    return ([key], [], [])


async def open_ssh(profile: HostProfile, *, keepalive_s: float | None = None,
                   policy: HostKeyPolicy = HostKeyPolicy.PINNED,
                   ) -> asyncssh.SSHClientConnection:
    """An authenticated SSH connection to the workspace, host key pinned to the profile."""
    from tether.link._asyncssh import asyncssh

    assert policy is HostKeyPolicy.PINNED
    direct = tcp_address(profile.url)
    options: dict[str, Any] = dict(
        username=profile.user,
        client_keys=[str(profile.identity_file)],
        known_hosts=pinned_known_hosts(profile.host_key),
        agent_path=None, config=None, x509_trusted_certs=None,
        preferred_auth="publickey", compression_algs=None,
        encryption_algs=[c for c in PREFERRED_CIPHERS],
        connect_timeout=CONNECT_TIMEOUT_S, login_timeout=CONNECT_TIMEOUT_S,
        keepalive_interval=keepalive_s or 0, keepalive_count_max=3,
        window=CHANNEL_WINDOW, max_pktsize=CHANNEL_MAX_PACKET,
    )
    where = profile.url
    try:
        if direct is not None:
            return await asyncssh.connect(direct[0], direct[1], **options)
        tunnel = _WsTunnel(ws_url(profile.url), _token_for(profile))
        return await asyncssh.connect(profile.host_key_alias, 22, tunnel=tunnel, **options)
    except errors.TetherError:
        raise
    except asyncssh.HostKeyNotVerifiable as exc:
        raise errors.HostKeyMismatchError(
            f"the host behind {where} presented a host key other than the one pinned for "
            f"{profile.name!r}: refusing to connect",
            "if the host was rebuilt on purpose, pair again: tether connect STRING --name "
            f"{profile.name} (someone may be intercepting the connection otherwise)") from exc
    except asyncssh.PermissionDenied as exc:
        raise errors.AuthError(
            f"the workspace refused this machine's key ({profile.identity_file})",
            f"pair again: tether connect STRING --name {profile.name}") from exc
    except (asyncssh.Error, ConnectionError, EOFError) as exc:
        raise errors.ConnectError(f"the SSH connection to {profile.name!r} failed: {exc}",
                                  "is `tether up` still running on the host?") from exc
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise errors.ConnectError(f"timed out connecting to {profile.name!r} at {where}",
                                  "is the host up and the tunnel running?") from exc
    except OSError as exc:
        raise errors.ConnectError(f"cannot reach {profile.name!r} at {where}: "
                                  f"{exc.strerror or exc}",
                                  "is `tether up` running on the host?") from exc
