"""The domain allowlist proxy: HTTP (plain and CONNECT) and SOCKS5 on one host unix socket.

The sandbox has no network namespace of its own beyond loopback. Its helper forwards
127.0.0.1:3128 and :1080 to this socket (bound into the sandbox at /run/tether/proxy.sock).
The first byte tells the protocols apart (SOCKS5 starts with 0x05). Every request names a host;
it is allowed only if `domain_allowed(host, allow)`, otherwise refused:

- HTTP: 403 with a one-line reason; CONNECT additionally checks the TLS ClientHello's SNI
  against the allowlist (a CONNECT to an allowed name must not carry another name's TLS).
- SOCKS5: only CONNECT with a domain name (ATYP 3); IP literals get "not allowed by ruleset".

Names resolve on the host; an internal address (loopback, RFC 1918/4193 private, CGNAT,
link-local, multicast) is refused (DNS rebinding to the host's or its LAN's services) unless it
comes from the explicit `resolve` map the caller gave (tests, split-horizon setups).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field

from tether.sandbox.profiles import domain_allowed

MAX_HEAD = 64 * 1024
MAX_CONNECTIONS = 256      # per run: each costs two host threads; more wait for a free slot
HANDSHAKE_TIMEOUT = 30.0   # a client that never finishes its request gives its slot back
# where the host's own and its LAN's services live: never reachable through a name
INTERNAL_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8"))


def is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])    # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in INTERNAL_NETWORKS)
CONNECT_TIMEOUT = 10.0


@dataclass
class ProxyHandle:
    socket_path: str
    allow: tuple[str, ...]
    resolve: dict[str, str]
    refused: list[str] = field(default_factory=list)
    _listener: socket.socket | None = None
    _thread: threading.Thread | None = None
    _dir: str | None = None
    _closing: bool = False
    _slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_CONNECTIONS))

    def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass   # not connected: closing is enough on unix listeners
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def start_proxy(allow: tuple[str, ...], resolve: dict[str, str] | None = None) -> ProxyHandle:
    d = tempfile.mkdtemp(prefix="tether-proxy-")
    os.chmod(d, 0o700)
    path = os.path.join(d, "proxy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    h = ProxyHandle(socket_path=path, allow=tuple(allow), resolve=dict(resolve or {}),
                    _listener=listener, _dir=d)
    h._thread = threading.Thread(target=_accept_loop, args=(h,), daemon=True,
                                 name="tether-netproxy")
    h._thread.start()
    return h


def _accept_loop(h: ProxyHandle) -> None:
    while not h._closing:
        try:
            conn, _ = h._listener.accept()
        except OSError:
            return
        h._slots.acquire()
        threading.Thread(target=_handle, args=(h, conn), daemon=True).start()


def _handle(h: ProxyHandle, conn: socket.socket) -> None:
    conn.settimeout(HANDSHAKE_TIMEOUT)      # _pipe clears it once a tunnel is up
    try:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first == b"\x05":
            _socks5(h, conn)
        else:
            _http(h, conn)
    except (OSError, ValueError, UnicodeError):
        pass       # a client that went away or spoke garbage: the sandbox sees a closed socket
    finally:
        conn.close()
        h._slots.release()


def _refuse(h: ProxyHandle, host: str) -> None:
    if host not in h.refused:
        h.refused.append(host)


def open_upstream(h: ProxyHandle, host: str, port: int) -> socket.socket:
    """Resolve and connect; raise PermissionError for a non-global address not in the map."""
    mapped = h.resolve.get(host.lower().rstrip("."))
    if mapped is not None:
        return socket.create_connection((mapped, port), timeout=CONNECT_TIMEOUT)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, addr in infos:
        if is_internal(addr[0]):
            last = PermissionError(f"{host} resolves to internal address {addr[0]}")
            continue
        s = socket.socket(family, kind, proto)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(addr)
            return s
        except OSError as exc:
            s.close()
            last = exc
    raise last


def _pipe(a: socket.socket, b: socket.socket, initial: bytes = b"") -> None:
    a.settimeout(None)
    b.settimeout(None)
    if initial:
        b.sendall(initial)
    t = threading.Thread(target=_copy, args=(b, a), daemon=True)
    t.start()
    _copy(a, b)
    t.join()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass       # either side closing ends the tunnel
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(8192)
        if not data:
            break
        buf += data
        if len(buf) > MAX_HEAD:
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _reply(conn: socket.socket, status: str, reason: str) -> None:
    body = (reason + "\n").encode()
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: "
                 f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    return host, int(port) if port.isdigit() else default_port


def _http(h: ProxyHandle, conn: socket.socket) -> None:
    head, rest = _read_head(conn)
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ", 2)
    except ValueError:
        _reply(conn, "400 Bad Request", "tether proxy: malformed request")
        return
    if method.upper() == "CONNECT":
        host, port = split_host_port(target, 443)
    elif target.lower().startswith("http://"):
        authority, _, path = target[7:].partition("/")
        host, port = split_host_port(authority, 80)
        path = "/" + path
    else:
        _reply(conn, "400 Bad Request", "tether proxy: use an absolute http:// URL or CONNECT")
        return
    if not domain_allowed(host, h.allow):
        _refuse(h, host)
        _reply(conn, "403 Forbidden", f"tether proxy: {host} is not in the sandbox's allowlist")
        return
    try:
        up = open_upstream(h, host, port)
    except PermissionError as exc:
        _refuse(h, host)
        _reply(conn, "403 Forbidden", f"tether proxy: {exc}")
        return
    except OSError as exc:
        _reply(conn, "502 Bad Gateway", f"tether proxy: cannot reach {host}:{port}: {exc}")
        return
    with up:
        if method.upper() == "CONNECT":
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = rest
            if not first:
                # server-speaks-first protocols send nothing: after a moment, no SNI to check
                conn.settimeout(5.0)
                try:
                    first = conn.recv(65536)
                except TimeoutError:
                    first = b""
            sni = tls_sni(first)
            if sni is not None and not domain_allowed(sni, h.allow):
                _refuse(h, sni)
                return
            _pipe(conn, up, first)
            return
        # Host is rewritten to the checked name: a CDN routes by Host, so a request for an
        # allowed name carrying another Host would reach that other site (domain fronting)
        headers = [ln for ln in lines[1:] if not ln.lower().startswith(
            (b"proxy-", b"connection:", b"keep-alive:", b"host:"))]
        host_header = f"Host: {authority}".encode("latin-1")
        new_head = b"\r\n".join([f"{method} {path} {version}".encode("latin-1"), host_header,
                                 *headers, b"Connection: close"]) + b"\r\n\r\n"
        _pipe(conn, up, new_head + rest)


def tls_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello, or None if `data` is not one or has none."""
    try:
        if len(data) < 5 or data[0] != 0x16:
            return None
        p = 5
        if data[p] != 0x01:          # handshake type ClientHello
            return None
        p += 4 + 2 + 32              # handshake header, version, random
        p += 1 + data[p]             # session id
        p += 2 + int.from_bytes(data[p:p + 2], "big")   # cipher suites
        p += 1 + data[p]             # compression methods
        end = p + 2 + int.from_bytes(data[p:p + 2], "big")
        p += 2
        while p + 4 <= end:
            kind = int.from_bytes(data[p:p + 2], "big")
            size = int.from_bytes(data[p + 2:p + 4], "big")
            if kind == 0:            # server_name: list length, type 0, name length, name
                q = p + 4 + 2
                if data[q] == 0:
                    n = int.from_bytes(data[q + 1:q + 3], "big")
                    return data[q + 3:q + 3 + n].decode("ascii")
            p += 4 + size
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            raise ConnectionResetError("short SOCKS message")
        buf += data
    return buf


def _socks5(h: ProxyHandle, conn: socket.socket) -> None:
    _, nmethods = _recv_exact(conn, 2)
    methods = _recv_exact(conn, nmethods)
    if 0 not in methods:
        conn.sendall(b"\x05\xff")
        return
    conn.sendall(b"\x05\x00")
    ver, cmd, _, atyp = _recv_exact(conn, 4)
    fail = b"\x00\x01" + bytes(6)    # RSV, ATYP=IPv4, 0.0.0.0:0
    if atyp == 3:
        host = _recv_exact(conn, _recv_exact(conn, 1)[0]).decode("ascii", "replace")
    elif atyp in (1, 4):
        raw = _recv_exact(conn, 4 if atyp == 1 else 16)
        host = str(ipaddress.ip_address(raw))
    else:
        conn.sendall(b"\x05\x08" + fail)   # address type not supported
        return
    port = int.from_bytes(_recv_exact(conn, 2), "big")
    if ver != 5 or cmd != 1:
        conn.sendall(b"\x05\x07" + fail)   # command not supported
        return
    if atyp != 3 or not domain_allowed(host, h.allow):
        _refuse(h, host)
        conn.sendall(b"\x05\x02" + fail)   # connection not allowed by ruleset
        return
    try:
        up = open_upstream(h, host, port)
    except PermissionError:
        _refuse(h, host)
        conn.sendall(b"\x05\x02" + fail)
        return
    except OSError:
        conn.sendall(b"\x05\x05" + fail)   # connection refused
        return
    with up:
        conn.sendall(b"\x05\x00" + fail)
        _pipe(conn, up)
