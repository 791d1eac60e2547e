"""The launcher agent (``serve``) as a plain local process: what it answers, and whom.

It listens on a unix socket in a private directory (and, on request, on 127.0.0.1, which
every user of the remote host can reach), so what matters here is that only a connection
carrying its token gets anything, that no input stops it, and that it never outlives its
session. No sshd needed: the agent's session is a pipe, as sshd would give it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_helpers import alive, wait_dead

from tether.kernels import target
from tether.kernels.wire import PROTOCOL, launcher_source, parse_line

TOKEN = "ab" * 32


def serve(tmp_path, keepalive_s: float = 0) -> tuple[subprocess.Popen, dict]:
    request = {"v": PROTOCOL, "op": "serve", "token": TOKEN, "keepalive_s": keepalive_s}
    proc = subprocess.Popen([sys.executable, "-c", target.BOOTSTRAP], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdin.write(target.launcher_payload(launcher_source(), json.dumps(request).encode()))
    proc.stdin.flush()
    event = parse_line(proc.stdout.readline().decode().rstrip("\n"))
    assert event is not None and event["event"] == "serving", event
    return proc, event


@pytest.fixture
def agent(tmp_path):
    proc, event = serve(tmp_path)
    yield proc, event["socket"], tmp_path
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def connect(address) -> socket.socket:
    if isinstance(address, int):
        return socket.create_connection(("127.0.0.1", address), timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)  # blocking: a full backlog waits for the agent to accept
    sock.settimeout(10)
    return sock


def ask(address, data: bytes) -> list:
    """Send ``data``; the protocol events the agent answers until it closes (None: garbage)."""
    with connect(address) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return [parse_line(line) for line in received.decode().splitlines()]


def with_token(request: dict, token: str = TOKEN) -> bytes:
    return f"{token}\n{json.dumps(request)}\n".encode()


def list_request(state_dir) -> dict:
    return {"v": PROTOCOL, "op": "list", "state_dir": str(state_dir)}


def test_a_connection_with_the_token_is_accepted_then_served(agent):
    _, path, tmp = agent
    assert ask(path, with_token(list_request(tmp / "state"))) == [
        {"event": "accepted"}, {"event": "list", "kernels": []}]
    assert ask(path, with_token({"v": PROTOCOL, "op": "hello"})) == [{"event": "hello"}]


def test_the_agent_socket_is_private_and_goes_with_the_agent(agent):
    proc, path, _ = agent
    directory = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    proc.stdin.close()
    assert proc.wait(10) == 0
    assert not os.path.exists(directory)


BAD_LINES = [
    with_token(list_request("/tmp/x"), token="cd" * 32),
    with_token(list_request("/tmp/x"), token=TOKEN[:-1]),
    (json.dumps(list_request("/tmp/x")) + "\n").encode(),  # no token line
    TOKEN.encode() + b"\n\xff\xfe not utf-8\n",
    TOKEN.encode() + b'\n{"v": 1, "op": "\\ud800"}\n',  # a lone surrogate
    TOKEN.encode() + b"\n" + b"[" * 200_000 + b"\n",  # nests past the recursion limit
    TOKEN.encode() + b'\n["a list"]\n',
    with_token(list_request("/tmp/x")) + b'{"op": "ping"}\n',  # nothing before the answer
    b"\x00" * 70_000,
]
BAD_IDS = ["wrong-token", "short-token", "no-token", "not-utf-8", "surrogate", "deep-nesting",
           "not-an-object", "extra-bytes", "binary"]


@pytest.mark.parametrize("data", BAD_LINES, ids=BAD_IDS)
def test_a_connection_without_a_good_token_and_request_gets_nothing(agent, data):
    proc, path, _ = agent
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        answer = ask(path, data)
        # nothing, or (a request past the token) the launcher's refusal
        assert answer == [] or (answer[0] == {"event": "accepted"}
                                and answer[1]["code"] == "bad_request"), answer
    assert proc.poll() is None  # the agent itself carries on
    assert ask(path, with_token({"v": PROTOCOL, "op": "hello"})) == [{"event": "hello"}]


def test_on_request_the_agent_listens_on_loopback_too_with_the_same_rules(agent):
    proc, path, tmp = agent
    proc.stdin.write(b'{"op":"tcp"}\n')
    proc.stdin.flush()
    event = parse_line(proc.stdout.readline().decode().strip())
    assert event["event"] == "tcp"
    port = event["port"]
    for data in BAD_LINES[:3]:
        assert ask(port, data) == []
    assert ask(port, with_token(list_request(tmp / "state"))) == [
        {"event": "accepted"}, {"event": "list", "kernels": []}]


def test_a_flood_of_idle_connections_does_not_starve_a_real_one(agent):
    proc, path, _ = agent
    idle = []
    try:
        for _ in range(300):
            idle.append(connect(path))
            idle[-1].sendall(TOKEN[:10].encode())  # a start, never finished
        started = time.monotonic()
        assert ask(path, with_token({"v": PROTOCOL, "op": "hello"})) == [{"event": "hello"}]
        assert time.monotonic() - started < 5
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert fds < 100  # at most 64 unauthenticated connections are kept
    finally:
        for sock in idle:
            sock.close()


def test_a_launch_through_the_agent_outlives_the_agent_only_as_long_as_its_connection(agent):
    """The forked launcher is tied to its own connection, not to the agent's session."""
    proc, path, tmp = agent
    state = tmp / "state"
    req = {"v": PROTOCOL, "op": "launch", "kernel_id": "k1",
           "connection": {"key": "k", "signature_scheme": "hmac-sha256", "kernel_name": "x"},
           "argv": [sys.executable, "-c", "import time; time.sleep(60)", "{connection_file}"],
           "lifetime": "session", "state_dir": str(state)}
    sock = connect(path)
    try:
        sock.sendall(with_token(req))
        reader = sock.makefile("rb")
        assert parse_line(reader.readline().decode().strip()) == {"event": "accepted"}
        started = parse_line(reader.readline().decode().strip())
        assert started["event"] == "started", started
        # the token is in no process's argv or environment
        for pid in (proc.pid, started["launcher_pid"], started["kernel_pid"]):
            for name in ("cmdline", "environ"):
                assert TOKEN.encode() not in Path(f"/proc/{pid}/{name}").read_bytes()
        proc.stdin.close()  # the agent's session ends ...
        assert proc.wait(10) == 0
        assert alive(started["kernel_pid"])  # ... the kernel keeps its own controller
        sock.shutdown(socket.SHUT_WR)  # the controller leaves: a session kernel stops
        assert reader.readline() == b""  # and its launcher lets the connection go
        assert wait_dead(started["kernel_pid"]) and wait_dead(started["launcher_pid"])
    finally:
        sock.close()


def test_a_launcher_that_fails_unexpectedly_says_why(agent, tmp_path):
    _, path, _ = agent
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    req = {"v": PROTOCOL, "op": "launch", "kernel_id": "k2", "state_dir": str(blocker / "x"),
           "connection": {"key": "k"}, "argv": ["true"], "lifetime": "session"}
    accepted, error = ask(path, with_token(req))
    assert accepted == {"event": "accepted"}
    assert error["event"] == "error" and error["code"] == "internal"
    assert "NotADirectoryError" in error["message"]


def test_the_agent_exits_when_its_session_falls_silent(tmp_path):
    proc, _ = serve(tmp_path, keepalive_s=0.1)  # then nothing: no keepalive for 4 * 0.1 + 3 s
    try:
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()


def test_the_agent_needs_a_real_token(tmp_path):
    request = {"v": PROTOCOL, "op": "serve", "token": "abc"}
    proc = subprocess.run([sys.executable, "-c", target.BOOTSTRAP], capture_output=True,
                          input=target.launcher_payload(launcher_source(),
                                                        json.dumps(request).encode()),
                          timeout=20)
    event = parse_line(proc.stdout.decode().strip())
    assert event["event"] == "error" and event["code"] == "bad_request"

