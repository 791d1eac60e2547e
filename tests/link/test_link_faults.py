"""Bad input and faults: each one a clear error of the right class (and CLI exit code),
through the API, the in-process CLI and the binary talking to the daemon."""

from __future__ import annotations

import dataclasses
import http.server
import subprocess
import threading
from pathlib import Path

import pytest

import tether
from tether import errors
from tether.link import profiles

pytestmark = pytest.mark.timeout(60)


def _rewrite(name: str, **changes) -> None:
    profiles.save_profile(dataclasses.replace(profiles.load_profile(name), **changes))


def _new_key(tmp_path: Path) -> Path:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_unknown_host(isolated, cli, tether_bin) -> None:
    with pytest.raises(errors.NotFoundError) as info:
        tether.exec("nope", "true")
    assert "tether hosts" in info.value.hint
    r = subprocess.run([tether_bin, "exec", "nope", "--", "true"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 10 and "no host named 'nope'" in r.stderr
    assert "tether hosts" in r.stderr
    assert cli("status", "nope", "--json").exit_code == 10


def test_gateway_down(paired, cli, tether_bin) -> None:
    from tests.conftest import free_port

    _rewrite(paired, url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.ConnectError, match="cannot reach the gateway") as info:
        tether.exec(paired, "true")
    assert "tether up" in info.value.hint
    r = subprocess.run([tether_bin, "exec", paired, "--", "true"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith("error: cannot reach the gateway")
    r = cli("status", paired, "--json")
    assert r.exit_code == 1 and r.json()["reachable"] is False
    assert "cannot reach" in r.json()["error"]


def test_wrong_token(paired, cli) -> None:
    profiles.set_access_token(paired, "not-the-token")
    with pytest.raises(errors.AuthError, match="refused the access token"):
        tether.exec(paired, "true")
    r = cli("exec", paired, "--", "true")
    assert r.exit_code == 12 and "tether connect" in r.stderr


def test_host_key_mismatch(paired, cli, tmp_path) -> None:
    other = _new_key(tmp_path).with_suffix(".pub").read_text().strip()
    _rewrite(paired, host_key=" ".join(other.split()[:2]))
    with pytest.raises(errors.HostKeyMismatchError, match="other than the one pinned"):
        tether.exec(paired, "true")
    r = cli("cp", f"{paired}:x", str(tmp_path))
    assert r.exit_code == 12 and "refusing to connect" in r.stderr
    with pytest.raises(errors.HostKeyMismatchError):
        tether.status(paired)  # never reported as merely "unreachable"


def test_client_key_refused(paired, tmp_path) -> None:
    _rewrite(paired, identity_file=_new_key(tmp_path))
    with pytest.raises(errors.AuthError, match="refused this machine's key"):
        tether.exec(paired, "true")


@pytest.mark.parametrize("version,error,match", [
    ("HTTP/1.1", errors.ConnectError, "answered HTTP 404"),
    ("HTTP/1.0", errors.ProtocolError, "not a tether gateway"),
], ids=["http11-404", "http10"])
def test_not_a_gateway(paired, version, error, match) -> None:
    class Plain(http.server.BaseHTTPRequestHandler):
        protocol_version = version

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _rewrite(paired, url=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(error, match=match):
            tether.exec(paired, "true")
    finally:
        server.shutdown()


def test_bad_flags(paired, cli) -> None:
    r = cli("exec", paired, "--env", "NOEQUALS", "--", "true")
    assert r.exit_code == 2 and "--env" in r.stderr
    r = cli("forward", paired, "abc")
    assert r.exit_code == 2 and "bad forward" in r.stderr
    r = cli("exec", paired)
    assert r.exit_code == 2


async def test_sync_api_inside_event_loop_is_refused(paired) -> None:
    with pytest.raises(errors.UsageError, match="inside an event loop"):
        tether.exec(paired, "true")
