"""exec and shell through the real gateway (and plain TCP), via the Python API, the CLI in
process, and the installed `tether` binary talking to its link daemon."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import stat
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

import tether
from tether import errors

pytestmark = pytest.mark.timeout(60)


def _run(tether_bin: str, *args: str, input: bytes | None = b"", timeout: float = 30,
         ) -> subprocess.CompletedProcess:
    return subprocess.run([tether_bin, *args], input=input, capture_output=True,
                          timeout=timeout)


@pytest.mark.parametrize("name_fixture", ["paired", "direct"], ids=["gateway", "tcp"])
def test_api_exit_codes_and_separate_streams(request, name_fixture) -> None:
    name = request.getfixturevalue(name_fixture)
    r = tether.exec(name, "echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr, r.signal) == (3, b"out\n", b"err\n", None)
    assert tether.exec(name, ["true"]).ok
    with pytest.raises(errors.PeerError, match="exited with 1"):
        tether.exec(name, "echo boom >&2; false", check=True)


def test_api_signal_env_cwd_input(paired, tmp_path) -> None:
    r = tether.exec(paired, "kill -TERM $$")
    assert (r.exit_code, r.signal) == (128 + 15, "TERM")
    r = tether.exec(paired, ["sh", "-c", 'printf "%s|" "$A" "$B"; pwd'], cwd=str(tmp_path),
                    env={"A": "x y", "B": "$HOME"})
    assert r.stdout.decode() == f"x y|$HOME|{tmp_path}\n"
    assert tether.exec(paired, "wc -c", input=b"x" * 100_000).stdout.strip() == b"100000"
    with pytest.raises(errors.DeadlineError):
        tether.exec(paired, "sleep 5", timeout=0.5)


async def test_async_api_runs_concurrently(paired) -> None:
    import asyncio

    began = time.monotonic()
    results = await asyncio.gather(*(tether.exec_async(paired, f"sleep 1; echo {i}")
                                     for i in range(4)))
    assert [r.stdout for r in results] == [b"%d\n" % i for i in range(4)]
    assert time.monotonic() - began < 3.5  # four channels at once (one by one: >= 4 s)


def test_cli_in_process(paired, cli) -> None:
    r = cli("exec", paired, "--", "echo out; echo err >&2; exit 4")
    assert (r.exit_code, r.stdout, r.stderr) == (4, "out\n", "err\n")
    r = cli("exec", paired, "--env", "A=1", "--", "sh", "-c", "cat; echo $A", input="in\n")
    assert (r.exit_code, r.stdout) == (0, "in\n1\n")


def test_binary_through_daemon(paired, tether_bin, tmp_path) -> None:
    r = _run(tether_bin, "exec", paired, "--", "echo out; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n")
    r = _run(tether_bin, "exec", paired, "--", "kill -TERM $$")
    assert r.returncode == 143
    r = _run(tether_bin, "exec", paired, "--cwd", str(tmp_path), "-e", "K=v w", "--",
             "sh", "-c", "echo $K; pwd")
    assert r.stdout.decode() == f"v w\n{tmp_path}\n"
    blob = os.urandom(3 * 1024 * 1024)
    r = _run(tether_bin, "exec", paired, "--", "cat", input=blob)
    assert r.returncode == 0 and r.stdout == blob
    r = _run(tether_bin, "exec", paired, "--", "tty")
    assert r.returncode == 1 and b"not a tty" in r.stdout  # no terminal here: no PTY


@pytest.mark.parametrize("args", [("-t", "NAME"), ("NAME", "--tty")], ids=["-t", "--tty"])
def test_t_forces_a_pty_without_a_terminal(paired, tether_bin, args) -> None:
    argv = [paired if a == "NAME" else a for a in args]
    r = _run(tether_bin, "exec", *argv, "--", "tty; stty size")  # stdin is a pipe
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"/dev/pts/") and b"24 80" in r.stdout  # like ssh -tt
    r = _run(tether_bin, "exec", paired, "-T", "--", "tty", input=None)
    assert b"not a tty" in r.stdout


def test_t_in_process_forces_a_pty(paired, cli) -> None:
    r = cli("exec", paired, "-t", "--", "tty")
    assert r.exit_code == 0 and r.stdout.startswith("/dev/pts/"), r.stderr


def test_ctrl_c_with_a_forced_pty_interrupts_the_remote_command(paired, tether_bin) -> None:
    proc = subprocess.Popen([tether_bin, "exec", paired, "-t", "--", "echo ready; sleep 30"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # becomes ^C on the remote terminal
        assert proc.wait(15) == 130
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()


def test_daemon_socket_is_private_and_reused(paired, tether_bin) -> None:
    from tether.link import daemon_client

    assert _run(tether_bin, "exec", paired, "--", "true").returncode == 0
    sock = Path(daemon_client.socket_path())
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    first = daemon_client.request("ping")
    times = []
    for _ in range(3):
        began = time.monotonic()
        assert _run(tether_bin, "exec", paired, "--", "true").returncode == 0
        times.append(time.monotonic() - began)
    again = daemon_client.request("ping")
    assert again["pid"] == first["pid"] and again["hosts"] == [paired]


def test_daemon_exits_when_idle(paired, tether_bin, monkeypatch) -> None:
    from tether.link import daemon_client

    monkeypatch.setenv("TETHER_LINK_DAEMON_IDLE", "0.5")
    assert _run(tether_bin, "exec", paired, "--", "true").returncode == 0
    sock = Path(daemon_client.socket_path())
    deadline = time.monotonic() + 10
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sock.exists()


def test_ctrl_c_is_forwarded_as_a_signal(paired, tether_bin) -> None:
    # `wait` returns at once for a trapped signal (a foreground `sleep` would race bash's
    # wait-and-cooperative-exit rule)
    script = ("sleep 30 >/dev/null 2>&1 & trap 'echo got-int; kill $!; exit 7' INT; "
              "echo ready; wait")
    procs = [subprocess.Popen([tether_bin, "exec", paired, "--", script],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline() == b"ready\n"
        procs[0].send_signal(signal.SIGINT)
        out, _ = procs[0].communicate(timeout=20)
        assert out == b"got-int\n" and procs[0].returncode == 7
        assert procs[1].poll() is None  # only the signalled command's session got it
        procs[1].send_signal(signal.SIGINT)
        assert procs[1].communicate(timeout=20)[0] == b"got-int\n"
        assert procs[1].returncode == 7
    finally:
        for proc in procs:
            proc.kill()


def _spawn_in_pty(argv: list[str], rows: int, cols: int) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # child: the terminal is ours
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.execvp(argv[0], argv)
    return pid, fd


def _read_until(fd: int, needle: bytes, timeout: float = 15) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {buf[-500:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_shell_pty_resize_and_exit(paired, tether_bin) -> None:
    # `stty -a` after tether exits shows whether the terminal left raw mode again
    pid, fd = _spawn_in_pty(["sh", "-c", f"{tether_bin} shell {paired}; st=$?; "
                             "stty -a | grep -o -- '-*icanon'; exit $st"], 30, 100)
    try:
        _read_until(fd, b"# ")  # the remote prompt
        os.write(fd, b"stty size; tty; echo MARK$((40+2))\n")
        out = _read_until(fd, b"MARK42")
        assert b"30 100" in out and b"/dev/pts/" in out
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        time.sleep(0.3)
        os.write(fd, b"stty size; echo MARK$((40+3))\n")
        assert b"50 132" in _read_until(fd, b"MARK43")
        os.write(fd, b"exit 3\n")
        after = _read_until(fd, b"icanon")
        assert b"-icanon" not in after  # canonical (cooked) mode is back
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        os.close(fd)


def test_exec_gets_a_pty_when_interactive(paired, tether_bin) -> None:
    pid, fd = _spawn_in_pty([tether_bin, "exec", paired, "--", "tty; stty size"], 20, 70)
    try:
        out = _read_until(fd, b"20 70")
        assert b"/dev/pts/" in out
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    pid, fd = _spawn_in_pty([tether_bin, "exec", "-T", paired, "--", "tty"], 20, 70)
    try:
        assert b"not a tty" in _read_until(fd, b"not a tty")
        os.waitpid(pid, 0)
    finally:
        os.close(fd)


def test_status_json(paired, cli) -> None:
    r = cli("status", paired, "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["reachable"] is True and data["name"] == paired
    assert 0 < data["rtt_ms"] < 1000 and data["uptime_s"] > 0
    assert data["disk_total_bytes"] > data["disk_free_bytes"] > 0
    assert isinstance(data["gpus"], list) and data["system"].split()[0] == "Linux"
    human = cli("status", paired)
    assert "round trip" in human.stdout and "disk" in human.stdout
    assert json.loads(cli("status", paired, "--json").stdout)["hostname"]


def test_daemon_reconnects_after_the_gateway_comes_back(paired, host, tether_bin) -> None:
    import dataclasses

    from tether.link import profiles

    assert _run(tether_bin, "exec", paired, "--", "true").returncode == 0  # warm
    host.kill_gateway()
    r = _run(tether_bin, "exec", paired, "--", "true")
    assert r.returncode == 1 and b"cannot reach the gateway" in r.stderr
    host.start_gateway()  # a new port, like a new tunnel URL next session
    profiles.save_profile(dataclasses.replace(profiles.load_profile(paired), url=host.url))
    r = _run(tether_bin, "exec", paired, "--", "echo back")
    assert (r.returncode, r.stdout) == (0, b"back\n")


def test_reader_leaving_early(paired, tether_bin) -> None:
    r = subprocess.run(f"{tether_bin} exec {paired} -- yes | head -n 2", shell=True,
                       capture_output=True, timeout=30)
    assert r.stdout == b"y\ny\n" and b"Traceback" not in r.stderr


async def test_cancelling_stops_the_remote_command(paired, tmp_path) -> None:
    import asyncio

    marker = tmp_path / "still-running"
    task = asyncio.create_task(tether.exec_async(
        paired, f"trap 'exit 9' TERM; while :; do touch {marker}; sleep 0.1; done"))
    await asyncio.sleep(1.5)
    assert marker.exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    marker.unlink()
    await asyncio.sleep(0.5)
    assert not marker.exists()  # the loop is gone, not orphaned on the host


def test_killed_client_hangs_up_the_remote_command(paired, tether_bin, tmp_path) -> None:
    marker = tmp_path / "alive"
    proc = subprocess.Popen([tether_bin, "exec", paired, "--",
                             f"echo ready; while :; do touch {marker}; sleep 0.1; done"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    proc.kill()  # no chance to forward anything: the daemon sees the socket close
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        marker.unlink(missing_ok=True)
        time.sleep(0.5)
        if not marker.exists():
            break
    assert not marker.exists()
