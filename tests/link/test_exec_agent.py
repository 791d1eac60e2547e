"""The exec agent: commands on a warm link without the login shell's rc cost.

Most tests use a private sshd whose sessions get ``HOME=<tmp>`` (sshd_config SetEnv), so the
user's shell sources an rc file we control (it counts its runs and exports a marker) and /root
is never touched. The agent protocol itself is also checked without SSH by running the launch
command locally.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tether import errors
from tether.link import agent_link, exec_agent
from tether.link import exec as lexec
from tether.link.pool import LinkPool

pytestmark = pytest.mark.timeout(60)

RC = """\
echo run >> "$HOME/rc-count"
export TETHER_RC_MARK=from-rc
[ -f "$HOME/extra.sh" ] && . "$HOME/extra.sh"
"""


class RcHost:
    def __init__(self, root: Path, sshd, host_key: str) -> None:
        self.root = root
        self.home = root / "home"
        self.sshd = sshd
        self.host_key = host_key

    def reset(self, extra: str = "") -> None:
        (self.home / ".bashrc").write_text(RC)
        (self.home / "extra.sh").write_text(extra)
        (self.home / "rc-count").unlink(missing_ok=True)

    def rc_runs(self) -> int:
        path = self.home / "rc-count"
        return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def rc_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcHost]:
    from tether.ssh.sshd import Sshd, ensure_sshd, host_public_key

    root = tmp_path_factory.mktemp("rchost")
    (root / "home").mkdir()
    sshd = Sshd(root / "sshd", session_env=(("HOME", str(root / "home")),))
    sshd.start(ensure_sshd(install=False))
    try:
        yield RcHost(root, sshd, host_public_key(sshd.host_key))
    finally:
        sshd.stop()


@pytest.fixture
def rc(isolated, rc_host: RcHost) -> RcHost:
    """Profile "rc" (plain TCP) for this isolated laptop; the rc file reset."""
    from tests.link.conftest import USER
    from tether.link.pairing import ensure_client_key
    from tether.link.profiles import (
        HostProfile,
        host_key_alias,
        known_hosts_path,
        save_profile,
    )

    key = ensure_client_key()
    rc_host.sshd.authorized_keys.write_text(key.with_name(key.name + ".pub").read_text())
    save_profile(HostProfile("rc", "direct", f"tcp://127.0.0.1:{rc_host.sshd.port}", USER,
                             rc_host.host_key, key, known_hosts_path("rc"),
                             host_key_alias("rc")))
    rc_host.reset()
    return rc_host


async def _run(pool: LinkPool, command: str, **kw) -> tether.ExecResult:
    return await tether.exec_async("rc", command, pool=pool, **kw)


async def _agent(pool: LinkPool) -> agent_link.AgentLink:
    link = agent_link.link_for(await pool.get("rc"))
    assert link is not None
    return link


def _gone(pgid: int) -> bool:
    """No live (non-zombie) process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return False
    return True


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


# -- through SSH ---------------------------------------------------------------------------


async def test_rc_runs_once_per_agent_not_per_command(rc) -> None:
    pool = LinkPool()
    try:
        outs = [(await _run(pool, "echo $TETHER_RC_MARK $PPID")).stdout.split()
                for _ in range(5)]
        link = await _agent(pool)
        assert link.state is agent_link.State.READY
        assert outs == [[b"from-rc", str(link.info["pid"]).encode()]] * 5  # the agent's child
        assert rc.rc_runs() == 1
    finally:
        await pool.aclose()
    plain = LinkPool(exec_agent=False)
    try:
        for _ in range(3):
            assert (await _run(plain, "echo $TETHER_RC_MARK")).stdout == b"from-rc\n"
        assert rc.rc_runs() == 1 + 3  # the plain channel pays the rc every time
    finally:
        await plain.aclose()


async def test_environment_matches_a_plain_ssh_command(rc) -> None:
    # A python3 wrapper that changes PATH (as pyenv's shims do) must not leak into commands:
    # the environment is the login shell's, taken before python starts.
    shim = rc.home / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "python3").write_text('#!/bin/sh\nexport PATH="/wrapper-added:$PATH" LEAK=1\n'
                                  f'exec {sys.executable} "$@"\n')
    (shim / "python3").chmod(0o755)
    rc.reset(f'export PATH="{shim}:$PATH"; umask 027; export BASH_ENV="$HOME/benv"\n')
    (rc.home / "benv").write_text('echo benv >> "$HOME/benv-count"\n')
    probe = ("env -0 | sort -z | tr '\\0' '\\n' | grep -v -e '^_=' -e '^SSH_CLIENT=' "
             "-e '^SSH_CONNECTION=' -e '^TETHER_EXEC_ID='; echo \"$0|$(pwd)|$(umask)\"")
    results = {}
    for agent in (True, False):
        pool = LinkPool(exec_agent=agent)
        try:
            results[agent] = await _run(pool, probe)
            if agent:
                assert (await _agent(pool)).state is agent_link.State.READY
        finally:
            await pool.aclose()
    assert results[True].stdout == results[False].stdout
    assert b"wrapper-added" not in results[True].stdout and b"LEAK" not in results[True].stdout
    assert b"SHLVL=1\n" in results[True].stdout and b"|0027" in results[True].stdout
    assert b"BASH_ENV=" in results[True].stdout  # still exported for nested shells
    assert not (rc.home / "benv-count").exists()  # ...but no command shell sourced it


async def test_agent_through_the_gateway(paired) -> None:
    pool = LinkPool()
    try:
        results = await asyncio.gather(*(tether.exec_async(paired, "echo $PPID; echo e >&2",
                                                           pool=pool) for _ in range(3)))
        link = agent_link.link_for(await pool.get(paired))
        assert link is not None and link.state is agent_link.State.READY
        assert {(r.stdout, r.stderr) for r in results} == {(b"%d\n" % link.info["pid"],
                                                             b"e\n")}
    finally:
        await pool.aclose()


async def test_rc_changes_apply_to_new_connections(rc) -> None:
    pool = LinkPool()
    try:
        assert (await _run(pool, "echo $TETHER_RC_MARK")).stdout == b"from-rc\n"
        (rc.home / "extra.sh").write_text("export TETHER_RC_MARK=changed\n")
        assert (await _run(pool, "echo $TETHER_RC_MARK")).stdout == b"from-rc\n"
    finally:
        await pool.aclose()
    pool = LinkPool()
    try:
        assert (await _run(pool, "echo $TETHER_RC_MARK")).stdout == b"changed\n"
    finally:
        await pool.aclose()


async def test_exit_codes_streams_signals_env_cwd(rc, tmp_path) -> None:
    pool = LinkPool()
    try:
        r = await _run(pool, "echo out; echo err >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr, r.signal) == (3, b"out\n", b"err\n", None)
        r = await _run(pool, "kill -TERM $$")
        assert (r.exit_code, r.signal) == (143, "TERM")
        r = await _run(pool, ["sh", "-c", 'printf "%s|" "$A" "$B"; pwd'], cwd=str(tmp_path),
                       env={"A": "x y", "B": "$HOME"})
        assert r.stdout.decode() == f"x y|$HOME|{tmp_path}\n"
        r = await _run(pool, "cd /nonexistent-dir")
        assert r.exit_code == 1 and b"nonexistent-dir" in r.stderr
        blob = os.urandom(3 * 1024 * 1024)  # several input windows
        assert (await _run(pool, "cat", input=blob)).stdout == blob
        with pytest.raises(errors.DeadlineError):
            await _run(pool, "sleep 5", timeout=0.5)

        conn = await pool.get("rc")
        got: asyncio.Queue[bytes] = asyncio.Queue()
        proc = await lexec.start(conn, "trap 'echo got-int; exit 7' INT; echo ready; "
                                       "while :; do sleep 0.05; done",
                                 on_output=lambda _s, d: got.put_nowait(d))
        assert isinstance(proc, agent_link.AgentProcess)
        assert await got.get() == b"ready\n"
        assert await proc.send_signal("INT")
        assert (await proc.wait()).exit_code == 7
        assert await got.get() == b"got-int\n"
        proc = await lexec.start(conn, "sleep 30", on_output=lambda _s, d: None)
        await asyncio.sleep(0.2)
        await proc.send_signal("TERM")  # `sleep` is the shell (exec'd): it dies of it
        outcome = await proc.wait()
        assert (outcome.exit_code, outcome.signal) == (143, "TERM")
        assert not await proc.send_signal("TERM")  # finished: nothing to signal
        proc = await lexec.start(conn, "echo ok", on_output=lambda _s, d: None)
        assert not await proc.send_signal("BOGUS")  # refused here, not sent to the agent
        assert (await proc.wait()).exit_code == 0
    finally:
        await pool.aclose()


async def test_concurrent_commands_share_one_agent(rc) -> None:
    pool = LinkPool()
    try:
        await _run(pool, "true")
        began = time.monotonic()
        results = await asyncio.gather(*(_run(pool, f"sleep 1; echo {i} $PPID")
                                         for i in range(6)))
        assert time.monotonic() - began < 3.5  # at once (one by one: >= 6 s)
        pid = (await _agent(pool)).info["pid"]
        assert [r.stdout for r in results] == [b"%d %d\n" % (i, pid) for i in range(6)]
        assert rc.rc_runs() == 1
    finally:
        await pool.aclose()


async def test_a_paused_reader_holds_back_only_its_own_command(rc) -> None:
    pool = LinkPool()
    try:
        conn = await pool.get("rc")
        await _run(pool, "true")
        got = bytearray()
        proc = await lexec.start(conn, "head -c 6000000 /dev/zero",
                                 on_output=lambda _s, d: got.extend(d))
        proc.pause_output()  # a client that stopped reading
        await asyncio.sleep(1.0)
        assert len(got) <= agent_link.OUT_WINDOW  # the agent waits for credit
        assert (await _run(pool, "echo other")).stdout == b"other\n"  # not blocked by it
        proc.resume_output()
        assert (await proc.wait()).exit_code == 0
        assert len(got) == 6_000_000
    finally:
        await pool.aclose()


@pytest.mark.parametrize("script", ["echo $$; while :; do sleep 0.1; done",
                                    "trap '' HUP; echo $$; while :; do sleep 0.1; done"],
                         ids=["hup-kills", "hup-ignored"])
async def test_a_dropped_link_leaves_no_processes(rc, script) -> None:
    pool = LinkPool()
    conn = await pool.get("rc")
    got: asyncio.Queue[bytes] = asyncio.Queue()
    proc = await lexec.start(conn, script, on_output=lambda _s, d: got.put_nowait(d))
    pid = int(await got.get())
    agent_pid = (await _agent(pool)).info["pid"]
    assert not _gone(pid)
    conn.abort()  # the link drops: no goodbye to anybody
    with pytest.raises(errors.ConnectError, match="link dropped"):
        await asyncio.wait_for(proc.wait(), 10)
    deadline = time.monotonic() + 10
    while not (_gone(pid) and _pid_gone(agent_pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _gone(pid), "the command's process group outlived the link"
    assert _pid_gone(agent_pid), "the agent outlived the link"
    await pool.aclose()


async def test_a_stopped_agent_hangs_up_its_commands_and_is_replaced(rc) -> None:
    pool = LinkPool()
    try:
        conn = await pool.get("rc")
        got: asyncio.Queue[bytes] = asyncio.Queue()
        proc = await lexec.start(conn, "echo $$; while :; do sleep 0.1; done",
                                 on_output=lambda _s, d: got.put_nowait(d))
        pid = int(await got.get())
        first = (await _agent(pool)).info["pid"]
        os.kill(first, signal.SIGTERM)  # e.g. an admin's kill
        with pytest.raises(errors.ConnectError, match="exec agent on the host stopped"):
            await asyncio.wait_for(proc.wait(), 10)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _gone(pid)
        r = await _run(pool, "echo $PPID")  # same connection, a new agent
        second = (await _agent(pool)).info["pid"]
        assert second != first and r.stdout == b"%d\n" % second
        assert rc.rc_runs() == 2
    finally:
        await pool.aclose()


async def test_without_python3_commands_use_plain_channels(rc) -> None:
    empty = rc.home / "nopython"
    empty.mkdir(exist_ok=True)
    rc.reset(f'export PATH="{empty}"\n')  # no python3 (and no env) anywhere on PATH
    pool = LinkPool()
    try:
        r = await _run(pool, "echo $TETHER_RC_MARK; echo e >&2; exit 4")
        assert (r.exit_code, r.stdout, r.stderr) == (4, b"from-rc\n", b"e\n")
        link = await _agent(pool)
        assert link.state is agent_link.State.UNAVAILABLE
        assert "python3 is not installed" in link.reason
        assert (await _run(pool, "kill -TERM $$")).exit_code == 143
        assert rc.rc_runs() == 1 + 2  # the failed agent start, then one per command
    finally:
        await pool.aclose()


async def test_rc_output_on_stdout_does_not_confuse_the_agent(rc) -> None:
    rc.reset("echo 'Welcome to the host!'; printf '\\0\\1\\2 noise'\n")
    pool = LinkPool()
    try:
        assert (await _run(pool, "echo clean")).stdout == b"clean\n"
        assert (await _agent(pool)).state is agent_link.State.READY
    finally:
        await pool.aclose()


@pytest.mark.timeout(90)
def test_cli_exec_through_the_daemon_uses_the_agent(rc, tether_bin) -> None:
    from tether.link import daemon_client

    for i in range(4):
        command = f"echo $TETHER_RC_MARK {i}; echo e >&2; exit 6"
        r = subprocess.run([tether_bin, "exec", "rc", "--", command], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
        assert (r.returncode, r.stdout, r.stderr) == (6, b"from-rc %d\n" % i, b"e\n")
    r = subprocess.run([tether_bin, "exec", "rc", "--cwd", str(rc.home), "-e", "K=v w", "--",
                        "sh", "-c", "echo $K; pwd"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=30, check=False)
    assert r.stdout.decode() == f"v w\n{rc.home}\n"
    # Ctrl-C and a TERM of the local process reach the remote command's process group
    trap = "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done"
    for local_signal, script, code, out in [
            (signal.SIGINT, trap, 7, b"got-int\n"),
            (signal.SIGTERM, "echo ready; sleep 30", 143, b"")]:
        proc = subprocess.Popen([tether_bin, "exec", "rc", "--", script],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"ready\n"
            proc.send_signal(local_signal)
            assert proc.stdout.read() == out
            assert proc.wait(20) == code
        finally:
            proc.kill()
            proc.wait()
    assert daemon_client.request("ping")["agents"] == {"rc": "ready"}
    assert rc.rc_runs() == 1


def test_cli_fast_path_imports_little() -> None:
    # a clean interpreter (no site): what `tether exec` itself costs to import
    code = ("import sys, tether.cli.entry, tether.cli.exec_fast, tether.link.daemon_client, "
            "tether.paths; print(' '.join(sorted(sys.modules)))")
    src = str(Path(tether.__file__).parent.parent)
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": src}, check=True).stdout.split()
    heavy = {"typing", "asyncio", "asyncssh", "typer", "rich", "tempfile", "shutil",
             "platformdirs", "tether.link.exec", "tether.link.agent_link"}
    assert not heavy & set(out)


# -- the agent protocol without SSH ---------------------------------------------------------


class LocalAgent:
    """The launch command run by a local /bin/sh, spoken to over pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["/bin/sh", "-c", agent_link.launch_command()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        source = agent_link.agent_source()
        self.proc.stdin.write(b"%d\n" % len(source) + source)
        self.proc.stdin.flush()
        self.decoder = agent_link.Decoder()
        self.frames: list[tuple[bytes, int, bytes]] = []

    def send(self, kind: bytes, ident: int, payload: bytes = b"") -> None:
        self.proc.stdin.write(agent_link.encode(kind, ident, payload))
        self.proc.stdin.flush()

    def next(self) -> tuple[bytes, int, bytes]:
        while not self.frames:
            data = os.read(self.proc.stdout.fileno(), 65536)
            assert data, "the agent closed its output"
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def local_agent() -> Iterator[LocalAgent]:
    agent = LocalAgent()
    try:
        yield agent
    finally:
        agent.close()


def test_agent_speaks_the_protocol(local_agent) -> None:
    kind, _, payload = local_agent.next()
    hello = json.loads(payload)
    assert kind == agent_link.HELLO and hello["v"] == agent_link.VERSION
    local_agent.send(agent_link.HELLO, 0, b'{"v":1}')
    local_agent.send(agent_link.RUN, 5, b'{"cmd":"cat; echo err >&2; kill -USR1 $$",'
                                        b'"window":1048576}')
    local_agent.send(agent_link.STDIN, 5, b"hello")
    local_agent.send(agent_link.STDIN, 5, b"")
    frames = [local_agent.next() for _ in range(4)]
    assert (agent_link.INPUT_CREDIT, 5, b"\0\0\0\x05") in frames
    assert (agent_link.STDOUT, 5, b"hello") in frames
    assert (agent_link.STDERR, 5, b"err\n") in frames
    assert frames[-1] == (agent_link.EXIT, 5, b'{"status":null,"signal":"USR1"}')
    local_agent.proc.stdin.close()  # EOF: the agent exits
    assert local_agent.proc.wait(10) == 0


def test_agent_rejects_an_unknown_version(local_agent) -> None:
    assert local_agent.next()[0] == agent_link.HELLO
    local_agent.send(agent_link.HELLO, 0, b'{"v":99}')
    kind, _, payload = local_agent.next()
    assert kind == agent_link.FATAL and "v99" in json.loads(payload)["message"]
    assert local_agent.proc.wait(10) == 2


@pytest.mark.parametrize("frame, message", [
    (b"Q\0\0\0\1\0\0\0\0", "unknown frame"),
    (agent_link.encode(agent_link.RUN, 1, b"{not json"), "bad b'R' frame"),
    (agent_link.encode(agent_link.RUN, 0, b'{"cmd":"true"}'), "bad or used id"),
    (b"I\0\0\0\1\xff\xff\xff\xff", "frame of"),
], ids=["unknown-kind", "bad-json", "id-zero", "oversized"])
def test_agent_rejects_bad_frames(local_agent, frame, message) -> None:
    assert local_agent.next()[0] == agent_link.HELLO
    local_agent.send(agent_link.HELLO, 0, b'{"v":1}')
    local_agent.proc.stdin.write(frame)
    local_agent.proc.stdin.flush()
    kind, _, payload = local_agent.next()
    assert kind == agent_link.FATAL and message in json.loads(payload)["message"]
    assert local_agent.proc.wait(10) == 2


def test_local_side_rejects_unknown_frames() -> None:
    decoder = agent_link.Decoder()
    with pytest.raises(errors.ProtocolError, match="unknown frame"):
        decoder.feed(agent_link.MARK + b"Q\0\0\0\1\0\0\0\0")


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell, env, argv, env_after", [
    ("/bin/bash", {"A": "1", "SHLVL": "1", "_": "/usr/bin/env"},
     ["bash", "--norc", "--noprofile", "-c", "CMD"], {"A": "1"}),
    ("/usr/bin/bash", {"BASH_ENV": "/h/my rc"},
     ["bash", "--norc", "--noprofile", "-c", "export BASH_ENV='/h/my rc'; CMD"], {}),
    ("/bin/zsh", {"A": "1"}, ["zsh", "-f", "-c", "CMD"], {"A": "1"}),
    ("/bin/tcsh", {}, ["tcsh", "-f", "-c", "CMD"], {}),
    ("/bin/sh", {"BASH_ENV": "x"}, ["sh", "-c", "CMD"], {"BASH_ENV": "x"}),
    ("/usr/bin/fish", {}, ["fish", "-c", "CMD"], {}),
], ids=["bash", "bash-bash-env", "zsh", "tcsh", "sh", "other"])
def test_shell_argv(shell, env, argv, env_after) -> None:
    assert exec_agent.shell_argv(shell, "CMD", env) == (argv, env_after)


@pytest.mark.parametrize("data, env", [
    (b"", None),
    (b"A=1\0B=x=y\0", {"A": "1", "B": "x=y"}),
    (b"MULTI=a\nb\0EMPTY=\0", {"MULTI": "a\nb", "EMPTY": ""}),
    (b"junk\0=nokey\0C=3\0", {"C": "3"}),
], ids=["no-env-0", "plain", "newline-and-empty", "malformed-skipped"])
def test_parse_env_block(data, env) -> None:
    assert exec_agent.parse_env_block(data) == env


@pytest.mark.parametrize("noise", [b"", b"banner\n", b"\0TETHER-EXEC", b"x" * 10000],
                         ids=["none", "banner", "partial-mark", "long"])
def test_decoder_skips_rc_noise_and_finds_split_marks(noise) -> None:
    stream = (noise + agent_link.MARK + agent_link.encode(agent_link.STDOUT, 7, b"abc")
              + agent_link.encode(agent_link.EXIT, 7, b"{}"))
    for step in (1, 3, len(stream)):
        decoder = agent_link.Decoder()
        frames = []
        for i in range(0, len(stream), step):
            frames += decoder.feed(stream[i:i + step])
        assert frames == [(agent_link.STDOUT, 7, b"abc"), (agent_link.EXIT, 7, b"{}")]


def test_both_codecs_agree() -> None:
    frames = [(agent_link.RUN, 1, b'{"cmd":"x"}'), (agent_link.STDIN, 2, b""),
              (agent_link.GRANT, 3, b"\0\0\1\0"), (agent_link.SIGNAL, 4, b"INT")]
    buf = bytearray(b"".join(agent_link.encode(*f) for f in frames))
    assert exec_agent.decode(buf) == frames and not buf
    assert agent_link.HEADER.format == exec_agent.HEADER.format
    assert agent_link.MARK == exec_agent.MARK and agent_link.VERSION == exec_agent.VERSION
    assert agent_link.SIGNALS == exec_agent.SIGNALS


def test_agent_source_is_stdlib_only_and_old_python_safe() -> None:
    import ast

    tree = ast.parse(agent_link.agent_source(), feature_version=(3, 8))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names)
    assert "tether" not in imported


def test_signal_is_forwarded_to_the_whole_group(local_agent, tmp_path) -> None:
    # the command's children (a pipeline, a background job) get the signal too
    assert local_agent.next()[0] == agent_link.HELLO
    local_agent.send(agent_link.HELLO, 0, b'{"v":1}')
    cmd = "sleep 30 & echo $!; sleep 30 | cat; wait"
    local_agent.send(agent_link.RUN, 1, json.dumps({"cmd": cmd, "window": 1 << 20}).encode())
    _, _, payload = local_agent.next()
    child = int(payload)
    local_agent.send(agent_link.SIGNAL, 1, b"TERM")
    assert local_agent.next()[0] == agent_link.EXIT
    deadline = time.monotonic() + 5
    while not _pid_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(child), "the background job survived the signal"
