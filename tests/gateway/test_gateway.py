"""The gateway over real loopback HTTP/WebSocket, with a real sshd behind it."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import free_port
from tests.gateway.conftest import GatewayThread, answer_lifespan, make_gateway

pytestmark = pytest.mark.timeout(60)


def _pair_body(gw, code: str, key_path, name: str = "lap") -> dict:
    return {"v": 1, "workspace_id": gw.settings.workspace_id, "code": code,
            "public_key": key_path.with_suffix(".pub").read_text(), "client_name": name}


def _pair(gw, client_key, name: str = "lap") -> str:
    code, _ = gw.state.issue_code()
    r = httpx.post(gw.url + "/.tether/pair", json=_pair_body(gw, code, client_key, name))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_health_says_nothing_secret(gateway, client_key) -> None:
    token = _pair(gateway, client_key)
    r = httpx.get(gateway.url + "/.tether/health")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "v": 1}
    for secret in (gateway.settings.workspace_id, token, gateway.settings.host_public_key,
                   gateway.settings.user):
        assert secret not in r.text
    assert "server" not in {k.lower() for k in r.headers}


def test_pair_success_authorizes_key_and_persists_hashed_token(gateway, client_key) -> None:
    code, _ = gateway.state.issue_code()
    r = httpx.post(gateway.url + "/.tether/pair", json=_pair_body(gateway, code, client_key))
    assert r.status_code == 200
    data = r.json()
    assert data["host_key"] == gateway.settings.host_public_key
    assert data["workspace_id"] == gateway.settings.workspace_id
    token = data["access_token"]
    pub = " ".join(client_key.with_suffix(".pub").read_text().split()[:2])
    assert pub in gateway.state.authorized_keys.read_text()
    stored = (gateway.state.dir / "clients.json").read_text()
    assert token not in stored  # only its digest is kept
    assert code not in (gateway.state.dir / "pairing.json").read_text()
    # reused code
    r2 = httpx.post(gateway.url + "/.tether/pair", json=_pair_body(gateway, code, client_key))
    assert r2.status_code == 410


@pytest.mark.parametrize("mutate,status", [
    (lambda b: {**b, "code": "wrongcode123"}, 401),
    (lambda b: {**b, "workspace_id": "ws_other"}, 401),
    (lambda b: {**b, "v": 7}, 400),
    (lambda b: {**b, "public_key": 'command="x" ' + b["public_key"]}, 400),
    (lambda b: "not json", 400),
], ids=["wrong-code", "wrong-workspace", "bad-version", "key-with-options", "not-json"])
def test_pair_refusals(gateway, client_key, mutate, status) -> None:
    code, _ = gateway.state.issue_code()
    body = mutate(_pair_body(gateway, code, client_key))
    if isinstance(body, str):
        r = httpx.post(gateway.url + "/.tether/pair", content=body)
    else:
        r = httpx.post(gateway.url + "/.tether/pair", json=body)
    assert r.status_code == status
    assert "access_token" not in r.text


def _own_fingerprint(gw) -> str:
    from tether.ssh.keys import fingerprint_of_public_key

    return fingerprint_of_public_key(gw.settings.host_public_key)


def test_pair_with_another_host_key_keeps_the_code_and_authorizes_nothing(
        gateway, client_key) -> None:
    code, _ = gateway.state.issue_code()
    keys_before = gateway.state.authorized_keys.read_bytes() \
        if gateway.state.authorized_keys.exists() else b""
    clients_before = gateway.state.clients()
    forged = {**_pair_body(gateway, code, client_key),
              "host_key_fingerprint": "SHA256:" + "B" * 43}
    r = httpx.post(gateway.url + "/.tether/pair", json=forged)
    assert r.status_code == 409 and "access_token" not in r.text
    assert r.json()["host_key_fingerprint"] == _own_fingerprint(gateway)
    after = gateway.state.authorized_keys.read_bytes() \
        if gateway.state.authorized_keys.exists() else b""
    assert after == keys_before and gateway.state.clients() == clients_before
    # a wrong code with a wrong fingerprint learns nothing: the plain 401
    r = httpx.post(gateway.url + "/.tether/pair", json={**forged, "code": "wrongcode123"})
    assert r.status_code == 401 and "host_key_fingerprint" not in r.text
    # the code is still good, with the right fingerprint (or none: older clients)
    right = {**forged, "host_key_fingerprint": _own_fingerprint(gateway)}
    r = httpx.post(gateway.url + "/.tether/pair", json=right)
    assert r.status_code == 200 and r.json()["access_token"]
    # spent now: a mismatch is not a way to tell used codes from good ones either
    assert httpx.post(gateway.url + "/.tether/pair", json=forged).status_code == 410


@pytest.mark.parametrize("bad", ["", "SHA256:short", "MD5:" + "a" * 43, 7,
                                 "SHA256:" + "B" * 42 + "!"], ids=repr)
def test_pair_rejects_a_malformed_fingerprint(gateway, client_key, bad) -> None:
    code, _ = gateway.state.issue_code()
    body = {**_pair_body(gateway, code, client_key), "host_key_fingerprint": bad}
    r = httpx.post(gateway.url + "/.tether/pair", json=body)
    assert r.status_code == 400 and "host_key_fingerprint" in r.json()["error"]
    r = httpx.post(gateway.url + "/.tether/pair", json=_pair_body(gateway, code, client_key))
    assert r.status_code == 200  # the 400 did not use the code


def test_expired_code_is_gone(gateway, client_key) -> None:
    code, _ = gateway.state.issue_code(ttl_s=60, now=int(time.time()) - 120)
    r = httpx.post(gateway.url + "/.tether/pair", json=_pair_body(gateway, code, client_key))
    assert r.status_code == 410


def test_pair_needs_post(gateway) -> None:
    assert httpx.get(gateway.url + "/.tether/pair").status_code == 405


def test_pairing_is_rate_limited(tmp_path, client_key) -> None:
    gw, server = make_gateway(tmp_path, pair_limit_per_client=3, pair_limit_overall=100)
    try:
        statuses = [httpx.post(gw.url + "/.tether/pair",
                               json=_pair_body(gw, f"guess{i:04d}", client_key)).status_code
                    for i in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        code, _ = gw.state.issue_code()
        r = httpx.post(gw.url + "/.tether/pair", json=_pair_body(gw, code, client_key))
        assert r.status_code == 429  # even a right code waits: guessing is not rewarded
        assert int(r.headers["retry-after"]) >= 1
    finally:
        server.stop()
        gw.sshd.stop()


def _sshd_connections(gw) -> int:
    return gw.sshd_log().count("Connection from")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer tt_wrong"},
                                     {"Authorization": "Basic dXNlcjpwdw=="}],
                         ids=["no-token", "wrong-token", "basic-auth"])
def test_bridge_refuses_before_sshd_sees_anything(gateway, headers) -> None:
    before = _sshd_connections(gateway)
    with pytest.raises(InvalidStatus) as info:
        ws_connect(gateway.url.replace("http", "ws") + "/.tether/ssh",
                   additional_headers=headers, open_timeout=5)
    assert info.value.response.status_code == 401
    time.sleep(0.2)
    assert _sshd_connections(gateway) == before


def test_bridge_carries_the_ssh_stream(gateway, client_key) -> None:
    token = _pair(gateway, client_key)
    with ws_connect(gateway.url.replace("http", "ws") + "/.tether/ssh",
                    additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                    open_timeout=5) as ws:
        assert ws.response.headers.get("sec-websocket-extensions") is None  # no deflate
        banner = ws.recv(timeout=5)
        assert isinstance(banner, bytes) and banner.startswith(b"SSH-2.0-OpenSSH")
        ws.send(b"SSH-2.0-tether_test\r\n")
        ws.send(b"\x00" * 2_000_000)  # garbage: sshd must hang up, and so must the bridge
        with pytest.raises(Exception):
            for _ in range(100):
                ws.recv(timeout=5)


def test_bridge_refuses_text_frames(gateway, client_key) -> None:
    token = _pair(gateway, client_key)
    with ws_connect(gateway.url.replace("http", "ws") + "/.tether/ssh",
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=5) as ws:
        ws.recv(timeout=5)
        ws.send("text")
        with pytest.raises(Exception):
            ws.recv(timeout=5)
        assert ws.close_code == 1003


def test_tokens_survive_a_gateway_restart(tmp_path, client_key) -> None:
    gw, server = make_gateway(tmp_path)
    token = _pair(gw, client_key)
    server.stop()
    server2 = GatewayThread(type(gw.app)(gw.settings))
    try:
        url = f"ws://127.0.0.1:{server2.port}/.tether/ssh"
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                        open_timeout=5) as ws:
            assert ws.recv(timeout=5).startswith(b"SSH-2.0-")
    finally:
        server2.stop()
        gw.sshd.stop()


def test_unknown_tether_path_and_no_upstream(gateway) -> None:
    assert httpx.get(gateway.url + "/.tether/nope").status_code == 404
    r = httpx.get(gateway.url + "/")
    assert r.status_code == 404 and "nothing is served" in r.text


# -- the reverse-proxy slot, against a small real HTTP + WebSocket upstream ---------------

async def _upstream_app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    if scope["type"] == "http":
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        payload = json.dumps({"method": scope["method"], "path": scope["path"],
                              "query": scope["query_string"].decode(),
                              "body": body.decode(),
                              "host": dict(scope["headers"]).get(b"host", b"").decode()})
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"x-up", b"1")]})
        await send({"type": "http.response.body", "body": payload.encode()})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        m = await receive()
        if m["type"] != "websocket.receive":
            return
        if m.get("text") is not None:
            await send({"type": "websocket.send", "text": "echo:" + m["text"]})
        else:
            await send({"type": "websocket.send", "bytes": m["bytes"][::-1]})


def test_reverse_proxy_http_and_websocket(tmp_path) -> None:
    upstream = GatewayThread(_upstream_app)
    gw, server = make_gateway(tmp_path, proxy_upstream=f"http://127.0.0.1:{upstream.port}")
    try:
        r = httpx.post(gw.url + "/ide/x?a=1", content=b"hello")
        assert r.status_code == 201 and r.headers["x-up"] == "1"
        assert r.json() == {"method": "POST", "path": "/ide/x", "query": "a=1", "body": "hello",
                            "host": f"127.0.0.1:{gw.port}"}
        with ws_connect(gw.url.replace("http", "ws") + "/ws", open_timeout=5) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "echo:hi"
            ws.send(b"abc")
            assert ws.recv(timeout=5) == b"cba"
        # the proxy slot never reaches the SSH bridge or pairing
        assert httpx.get(gw.url + "/.tether/health").json() == {"ok": True, "v": 1}
    finally:
        server.stop()
        gw.sshd.stop()
    upstream.stop()


def test_reverse_proxy_upstream_down(tmp_path) -> None:
    dead = free_port()
    gw, server = make_gateway(tmp_path, proxy_upstream=f"http://127.0.0.1:{dead}")
    try:
        r = httpx.get(gw.url + "/")
        assert r.status_code == 502 and "not answering" in r.text
    finally:
        server.stop()
        gw.sshd.stop()
