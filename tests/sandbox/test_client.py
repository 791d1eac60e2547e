"""The SDK (tether.sandbox.Client / AsyncClient) against a real server; the SSE parser."""

from __future__ import annotations

import pytest

from tether import errors
from tether.sandbox import AsyncClient, Client
from tether.sandbox.client import error_from, parse_sse_lines

from .sandbox_service_fixtures import ApiServer

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("lines", "events"), [
    (["event: stdout", "data: {}", ""], [("stdout", "{}")]),
    (["data: a", "data: b", ""], [("message", "a\nb")]),
    ([": keepalive", "event: exit", "data:{\"x\":1}", ""], [("exit", '{"x":1}')]),
    (["event: stdout", "data: 1", "", "event: stderr", "data: 2", ""],
     [("stdout", "1"), ("stderr", "2")]),
    (["event: exit", "data: tail-without-blank"], [("exit", "tail-without-blank")]),
    (["event: lonely", ""], []),
], ids=["one", "multiline-data", "comment-and-no-space", "two", "unterminated", "no-data"])
def test_sse_parser(lines, events):
    assert list(parse_sse_lines(lines)) == events


@pytest.mark.parametrize(("status", "body", "cls"), [
    (404, {"error": "no sandbox", "kind": "NotFoundError"}, errors.NotFoundError),
    (401, {"error": "bad token", "kind": "AuthError"}, errors.AuthError),
    (400, {"error": "x", "kind": "NotAnErrorClass"}, errors.UsageError),
    (409, {"error": "x", "kind": "AlreadyExistsError"}, errors.AlreadyExistsError),
    (422, {"detail": [{"msg": "field required"}]}, errors.UsageError),
    (502, "Bad Gateway", errors.PeerError),
], ids=["by-kind", "auth", "unknown-kind-falls-back-to-status", "conflict", "validation",
        "text"])
def test_api_errors_become_tether_errors(status, body, cls):
    exc = error_from(status, body)
    assert type(exc) is cls


def test_sync_client_runs_streams_and_manages_sandboxes(api_server: ApiServer):
    with Client(api_server.url, api_server.token) as c:
        assert c.health()["ok"] is True
        r = c.run(["sh", "-c", "cat; exit 2"], stdin=b"\x00bytes\xff")
        assert (r.exit_code, r.stdout) == (2, b"\x00bytes\xff")
        events = list(c.stream(["sh", "-c", "echo a; sleep 0.2; echo b >&2"]))
        assert [(e.kind, e.data) for e in events[:2]] == [("stdout", b"a\n"), ("stderr", b"b\n")]
        assert events[-1].kind == "exit" and events[-1].exit.exit_code == 0

        info = c.create_sandbox("sdk", profile="restrictive", timeout=20)
        assert info.options.profile == "restrictive"
        c.write_file("sdk", "/workspace/data.txt", "from the sdk")
        assert c.exec("sdk", ["cat", "data.txt"]).text == "from the sdk"
        c.exec("sdk", ["sh", "-c", "echo back > ~/note"])
        assert c.read_file("sdk", "~/note") == b"back\n"
        assert [s.name for s in c.list_sandboxes()] == ["sdk"]
        c.delete_sandbox("sdk")
        with pytest.raises(errors.NotFoundError):
            c.get_sandbox("sdk")


async def test_async_client_streams_and_maps_errors(api_server: ApiServer):
    async with AsyncClient(api_server.url, api_server.token) as c:
        out = [e async for e in c.stream(["sh", "-c", "for i in 1 2 3; do echo $i; done"])]
        assert b"".join(e.data for e in out if e.kind == "stdout") == b"1\n2\n3\n"
        assert out[-1].exit.exit_code == 0
        with pytest.raises(errors.UsageError, match="unknown sandbox profile"):
            await c.run(["true"], profile="nope")
        with pytest.raises(errors.UsageError):
            async for _ in c.stream(["true"], profile="nope"):
                pass
    async with AsyncClient(api_server.url, "wrong-token") as bad:
        with pytest.raises(errors.AuthError):
            await bad.run(["true"])


def test_client_without_a_server_says_so(isolated):
    from .sandbox_service_fixtures import host_listener

    sock, port = host_listener()
    sock.close()  # nothing listens on this port now
    with Client(f"http://127.0.0.1:{port}", "t") as c:
        with pytest.raises(errors.ConnectError, match="could not reach"):
            c.health()


def test_public_names():
    import tether

    assert tether.SandboxClient is Client and tether.AsyncSandboxClient is AsyncClient


def test_sync_client_without_with_works_and_lets_the_program_exit(api_server: ApiServer):
    import subprocess
    import sys

    c = Client(api_server.url, api_server.token)
    assert c.run(["echo", "bare"]).stdout == b"bare\n"
    assert [e.kind for e in c.stream(["true"])] == ["exit"]
    # a script that forgets close() must still exit (no event loop thread left behind)
    code = ("from tether.sandbox import Client\n"
            f"c = Client({api_server.url!r}, {api_server.token!r})\n"
            "print(c.health()['ok'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "True")
