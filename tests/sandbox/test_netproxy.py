"""The domain allowlist proxy: unit parsing, the host side directly, and end to end from a sandbox.

Name resolution never uses real DNS: the proxy's `resolve` map sends test names to a local
HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import textwrap
import threading

import pytest

from tether.sandbox import netproxy, runner

pytestmark = pytest.mark.timeout(60)
NAMES = {"allowed.test": "127.0.0.1", "api.allowed.test": "127.0.0.1",
         "denied.test": "127.0.0.1"}


@pytest.fixture(scope="module")
def origin():
    """A local HTTP server that echoes the Host header it got."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"origin saw {self.headers.get('Host')} {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture
def proxy():
    h = netproxy.start_proxy(("allowed.test", "*.allowed.test"), NAMES)
    yield h
    h.close()


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("data,expected", [
    (client_hello("allowed.test"), "allowed.test"),
    (client_hello("x.example.org"), "x.example.org"),
    (b"GET / HTTP/1.1\r\n\r\n", None),
    (b"\x16\x03\x01\x00", None),
    (b"", None),
], ids=["hello", "other-name", "plain-http", "truncated", "empty"])
def test_tls_sni(data, expected):
    assert netproxy.tls_sni(data) == expected


@pytest.mark.parametrize("authority,default,expected", [
    ("a.test:8080", 80, ("a.test", 8080)), ("a.test", 443, ("a.test", 443)),
    ("[::1]:99", 80, ("::1", 99)), ("[::1]", 80, ("::1", 80)),
], ids=["host-port", "default-port", "ipv6-port", "ipv6-default"])
def test_split_host_port(authority, default, expected):
    assert netproxy.split_host_port(authority, default) == expected


def _talk(path: str, payload: bytes, read_until_close: bool = True,
          half_close: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(payload)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
        if not read_until_close:
            break
    s.close()
    return b"".join(chunks)


@pytest.mark.parametrize("host,status", [
    ("allowed.test", b"200"), ("api.allowed.test", b"200"), ("denied.test", b"403"),
    ("127.0.0.1", b"403"),
], ids=["allowed", "wildcard", "denied", "ip-literal"])
def test_plain_http(proxy, origin, host, status):
    reply = _talk(proxy.socket_path,
                  f"GET http://{host}:{origin}/p?q=1 HTTP/1.1\r\nHost: {host}\r\n"
                  "Proxy-Authorization: x\r\n\r\n".encode())
    assert reply.split(b" ")[1] == status
    if status == b"200":
        assert reply.endswith(f"origin saw {host}:{origin} /p?q=1".encode())
    else:
        assert host in proxy.refused


def test_host_header_cannot_front_another_domain(proxy, origin):
    reply = _talk(proxy.socket_path,
                  f"GET http://allowed.test:{origin}/f HTTP/1.1\r\nHost: evil.example\r\n"
                  "\r\n".encode())
    assert reply.split(b" ")[1] == b"200"
    assert reply.endswith(f"origin saw allowed.test:{origin} /f".encode())


def test_connect_tunnel_and_sni_check(proxy, origin):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(proxy.socket_path)
    s.sendall(f"CONNECT allowed.test:{origin} HTTP/1.1\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /tunnel HTTP/1.0\r\nHost: allowed.test\r\n\r\n")
    assert b"origin saw allowed.test /tunnel" in b"".join(iter(lambda: s.recv(4096), b""))
    s.close()
    # CONNECT to an allowed name carrying TLS for another name is cut
    reply = _talk(proxy.socket_path,
                  f"CONNECT allowed.test:{origin} HTTP/1.1\r\n\r\n".encode()
                  + client_hello("evil.example"))
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert "evil.example" in proxy.refused
    denied = _talk(proxy.socket_path, f"CONNECT denied.test:{origin} HTTP/1.1\r\n\r\n".encode())
    assert denied.startswith(b"HTTP/1.1 403")


def _socks(path: str, atyp: int, addr: bytes, port: int) -> tuple[int, socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(bytes([5, 1, 0, atyp]) + addr + port.to_bytes(2, "big"))
    reply = s.recv(10)
    return reply[1], s


@pytest.mark.parametrize("atyp,addr,code", [
    (3, b"\x0callowed.test", 0), (3, b"\x0bdenied.test", 2), (1, b"\x7f\x00\x00\x01", 2),
], ids=["domain-allowed", "domain-denied", "ipv4-refused"])
def test_socks5(proxy, origin, atyp, addr, code):
    rep, s = _socks(proxy.socket_path, atyp, addr, origin)
    assert rep == code
    if code == 0:
        s.sendall(b"GET /socks HTTP/1.0\r\nHost: allowed.test\r\n\r\n")
        assert b"origin saw allowed.test /socks" in b"".join(iter(lambda: s.recv(4096), b""))
    s.close()


@pytest.mark.parametrize("address,internal", [
    ("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.1", True), ("169.254.169.254", True),
    ("100.64.0.1", True), ("::1", True), ("fd00::1", True), ("::ffff:127.0.0.1", True),
    ("151.101.0.223", False), ("203.0.113.80", False), ("2a04:4e42::223", False),
], ids=["loopback", "rfc1918-10", "rfc1918-192", "metadata", "cgnat", "v6-loopback", "ula",
        "v4-mapped-loopback", "public", "test-net", "public-v6"])
def test_is_internal(address, internal):
    assert netproxy.is_internal(address) is internal


def test_allowed_name_resolving_to_loopback_is_refused(origin):
    # DNS rebinding: an allowed name whose real resolution is a non-public address
    h = netproxy.start_proxy(("localhost",), {})
    try:
        reply = _talk(h.socket_path, f"GET http://localhost:{origin}/ HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 403") and b"internal address" in reply
    finally:
        h.close()


SANDBOX_CLIENT = """
    import os, socket, urllib.request
    for host in ("allowed.test", "api.allowed.test", "denied.test"):
        try:
            body = urllib.request.urlopen(f"http://{{host}}:{port}/x", timeout=5).read()
            print(host, "OK", body.decode())
        except Exception as e:
            print(host, "FAIL", getattr(e, "code", e))
    s = socket.create_connection(("127.0.0.1", 1080), timeout=5)
    s.sendall(b"\\x05\\x01\\x00"); s.recv(2)
    s.sendall(b"\\x05\\x01\\x00\\x03\\x0bdenied.test" + ({port}).to_bytes(2, "big"))
    print("socks-denied", s.recv(10)[1])
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2); print("DIRECT")
    except OSError as e:
        print("direct-refused", e.errno)
"""


@pytest.mark.parametrize("helper", ["native", "python"])
@pytest.mark.parametrize("profile", ["restrictive", "moderate", "permissive"])
def test_sandbox_reaches_only_allowed_domains(make_spec, origin, profile, helper, monkeypatch):
    from dataclasses import replace

    host = runner._probe.probe()
    if helper == "native" and host.helper_native is None:
        pytest.skip("no C compiler here: only the Python helper exists")
    if helper == "python":
        monkeypatch.setattr(runner, "probe", lambda: replace(host, helper_native=None))
    code = textwrap.dedent(SANDBOX_CLIENT.format(port=origin))
    spec = make_spec(profile, ["python3", "-c", code],
                     allow_domains=["allowed.test", "*.allowed.test"], resolve=NAMES)
    r = runner.run(spec)
    lines = r.stdout.decode().splitlines()
    assert lines[0] == f"allowed.test OK origin saw allowed.test:{origin} /x", r.stderr
    assert lines[1].startswith("api.allowed.test OK")
    assert lines[2] == "denied.test FAIL 403"
    assert lines[3] == "socks-denied 2"
    assert lines[4].startswith("direct-refused")
    assert any("denied.test" in n for n in r.notes)


@pytest.mark.parametrize("payload", [
    b"\x05\x01\x00\x05\x01\x00\x09", b"GARBAGE\r\n\r\n", b"CONNECT x:y:z HTTP/1.1\r\n\r\n",
    b"\x05\x01\x00\x05\x01\x00\x03\x05\xff\xfe\xfd\xfc\xfb\x00\x50", b"\x05",
], ids=["socks-bad-atyp", "garbage", "bad-authority", "socks-binary-name", "truncated"])
def test_garbage_never_kills_the_proxy(proxy, origin, payload):
    _talk(proxy.socket_path, payload, half_close=True)
    reply = _talk(proxy.socket_path,
                  f"GET http://allowed.test:{origin}/ok HTTP/1.1\r\n\r\n".encode())
    assert reply.split(b" ")[1] == b"200"
