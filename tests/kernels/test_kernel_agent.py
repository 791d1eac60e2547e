"""The launcher agent (``serve``) as a plain local process: what it answers, and whom.

It listens on 127.0.0.1, which every user of the remote host can reach, so what matters here is
that only a connection carrying its token gets anything, and that it never outlives its
session. No sshd needed: the agent's session is a pipe, as sshd would give it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from kernel_helpers import alive, wait_dead

from tether.kernels import target
from tether.kernels.wire import MARK, PROTOCOL, launcher_source, parse_line

TOKEN = "t" * 64


@pytest.fixture
def agent(tmp_path):
    request = {"v": PROTOCOL, "op": "serve", "token": TOKEN, "keepalive_s": 0}
    proc = subprocess.Popen([sys.executable, "-c", target.BOOTSTRAP], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdin.write(target.launcher_payload(launcher_source(), json.dumps(request).encode()))
    proc.stdin.flush()
    event = parse_line(proc.stdout.readline().decode().rstrip("\n"))
    assert event is not None and event["event"] == "serving", event
    yield proc, event["port"], tmp_path
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def ask(port: int, line: bytes, timeout: float = 10) -> bytes:
    """Send one request line; everything the agent answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def list_request(state_dir, token: str | None = TOKEN, **extra) -> bytes:
    req = {"v": PROTOCOL, "op": "list", "state_dir": str(state_dir), **extra}
    if token is not None:
        req["token"] = token
    return (json.dumps(req) + "\n").encode()


def test_a_connection_with_the_token_is_served(agent):
    _, port, tmp = agent
    answer = ask(port, list_request(tmp / "state"))
    assert answer.startswith(MARK.encode())
    assert parse_line(answer.decode().strip()) == {"event": "list", "kernels": []}


@pytest.mark.parametrize("line", [
    list_request("/tmp/x", token="wrong" * 13),
    list_request("/tmp/x", token=None),
    list_request("/tmp/x", token=TOKEN[:-1]),
    b"not json\n",
    b'["a list"]\n',
    list_request("/tmp/x") + b'{"op": "ping"}\n',  # nothing may follow before the answer
], ids=["wrong-token", "no-token", "short-token", "garbage", "not-an-object", "extra-bytes"])
def test_a_connection_without_the_token_gets_nothing(agent, line):
    proc, port, _ = agent
    assert ask(port, line) == b""
    assert proc.poll() is None  # the agent itself carries on
    assert ask(port, list_request("/tmp/x")).startswith(MARK.encode())


def test_a_launch_through_the_agent_outlives_the_agent_only_as_long_as_its_connection(agent):
    """The forked launcher is tied to its own connection, not to the agent's session."""
    proc, port, tmp = agent
    state = tmp / "state"
    req = {"v": PROTOCOL, "op": "launch", "kernel_id": "k1", "token": TOKEN,
           "connection": {"key": "k", "signature_scheme": "hmac-sha256", "kernel_name": "x"},
           "argv": [sys.executable, "-c", "import time; time.sleep(60)", "{connection_file}"],
           "lifetime": "session", "state_dir": str(state)}
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall((json.dumps(req) + "\n").encode())
        reader = sock.makefile("rb")
        started = parse_line(reader.readline().decode().strip())
        assert started["event"] == "started", started
        # the token is not kept anywhere on the remote
        assert TOKEN not in (state / "k1" / "launcher.json").read_text()
        assert TOKEN not in (state / "k1" / "connection.json").read_text()
        proc.stdin.close()  # the agent's session ends ...
        assert proc.wait(10) == 0
        assert alive(started["kernel_pid"])  # ... the kernel keeps its own controller
        sock.shutdown(socket.SHUT_WR)  # the controller leaves: a session kernel stops
        assert reader.readline() == b""  # and its launcher lets the connection go
        assert wait_dead(started["kernel_pid"]) and wait_dead(started["launcher_pid"])
    finally:
        sock.close()


def test_the_agent_exits_when_its_session_falls_silent(tmp_path):
    request = {"v": PROTOCOL, "op": "serve", "token": TOKEN, "keepalive_s": 0.1}
    proc = subprocess.Popen([sys.executable, "-c", target.BOOTSTRAP], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(target.launcher_payload(launcher_source(),
                                                 json.dumps(request).encode()))
        proc.stdin.flush()  # and then nothing: no keepalive for 4 * 0.1 + 3 s
        assert parse_line(proc.stdout.readline().decode().strip())["event"] == "serving"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()


def test_the_agent_needs_a_real_token(tmp_path):
    request = {"v": PROTOCOL, "op": "serve", "token": "short"}
    proc = subprocess.run([sys.executable, "-c", target.BOOTSTRAP], capture_output=True,
                          input=target.launcher_payload(launcher_source(),
                                                        json.dumps(request).encode()),
                          timeout=20)
    event = parse_line(proc.stdout.decode().strip())
    assert event["event"] == "error" and event["code"] == "bad_request"

