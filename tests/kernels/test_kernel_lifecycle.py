"""A real ipykernel on the "remote" (localhost through the real sshd fixture), driven by real
jupyter_client kernel managers through TetherSSHProvisioner."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager, KernelManager

from kernel_helpers import KINDS, alive, leftovers, remote_record, wait_dead, wait_gone

from tether.kernels import hostlink

pytestmark = pytest.mark.timeout(90)


def run(kc, code: str, timeout: float = 20) -> dict:
    """Execute ``code``; return the reply content plus captured stdout."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return {**reply["content"], "stdout": "".join(out)}


def value(kc, expr: str, timeout: float = 20) -> str:
    """``repr`` of ``expr`` in the kernel, over the shell channel only (iopub may lag)."""
    msg_id = kc.execute("", silent=True, user_expressions={"v": expr})
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            result = reply["content"]["user_expressions"]["v"]
            assert result["status"] == "ok", result
            return result["data"]["text/plain"]


def interrupt_while_true(km, kc) -> dict:
    # stop_on_error=False: else ipykernel aborts the requests queued behind the interrupted one
    msg_id = kc.execute("while True:\n    pass", stop_on_error=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the loop is really running
        msg = kc.get_iopub_msg(timeout=10)
        if (msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "execute_input"):
            break
    time.sleep(0.2)
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def start(km) -> object:
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    return kc


def test_sync_manager_signal_interrupt_restart_shutdown_leaves_nothing(kenv, monkeypatch):
    monkeypatch.setenv(hostlink.IDLE_ENV, "600")  # as in a Jupyter server: the link stays
    kenv.spec("rk", interrupt_mode="signal")
    km = KernelManager(kernel_name="tether-rk")
    kc = start(km)
    try:
        rec = remote_record(kenv.state_dir)
        # the no-orphan check sees each part while it runs (else `wait_gone` proves nothing)
        seen = leftovers(kenv.procs)
        assert set(seen) == set(KINDS), seen
        link = km.provisioner.link
        agent_pid = link.host.agent_pid
        assert seen["kernel"] == [rec["kernel_pid"]]
        assert sorted(seen["launcher"]) == sorted([rec["launcher_pid"], agent_pid])
        assert link.pid in seen["local"]
        info = run(kc, "import os; print(os.getpid(), os.environ['TETHER_KERNEL_ID'])")
        pid, kid = info["stdout"].split()
        assert int(pid) == rec["kernel_pid"] and kid == km.kernel_id
        # signal mode: the provisioner's send_signal reaches the REMOTE kernel's group
        reply = interrupt_while_true(km, kc)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert run(kc, "x = 41; x + 1")["status"] == "ok"
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=30)
        assert value(kc, "'x' in globals()") == "False"
        rec2 = remote_record(kenv.state_dir)
        assert rec2["kernel_pid"] != rec["kernel_pid"]
        assert wait_dead(rec["launcher_pid"]) and wait_dead(rec["kernel_pid"])
        # the restart went through the same host link: no new SSH login
        assert km.provisioner.link.pid == link.pid
        assert km.provisioner.link.host.agent_pid == agent_pid
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert not km.is_alive()
    assert wait_dead(rec2["launcher_pid"])
    assert list(kenv.state_dir.iterdir()) == []  # the remote record is cleaned up too
    # the idle host link is all that is left: its master and its agent, until it is closed
    assert wait_gone(kenv.procs, kinds=("kernel",)) == {}
    assert leftovers(kenv.procs, ("launcher",)) == {"launcher": [agent_pid]}
    hostlink.close_all()
    assert wait_gone(kenv.procs) == {}


async def test_async_manager_message_interrupt_and_shutdown(kenv):
    kenv.spec("rk", interrupt_mode="message")
    km = AsyncKernelManager(kernel_name="tether-rk")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        msg_id = kc.execute("import time\nwhile True:\n    time.sleep(0.01)",
                            stop_on_error=False)
        # interrupt only once the cell runs: an idle kernel has nothing to interrupt, and a
        # fixed sleep is not enough on a loaded machine
        while True:
            msg = await kc.get_iopub_msg(timeout=30)
            if (msg["parent_header"].get("msg_id") == msg_id
                    and msg["msg_type"] == "execute_input"):
                break
        await asyncio.sleep(0.2)
        await km.interrupt_kernel()  # an interrupt_request over the forwarded control port
        while True:
            reply = await kc.get_shell_msg(timeout=10)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert await km.is_alive()
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    assert wait_gone(kenv.procs) == {}


def test_session_key_never_on_a_command_line_and_kernel_binds_loopback(kenv):
    kenv.spec("rk")
    km = KernelManager(kernel_name="tether-rk")
    kc = start(km)
    try:
        key = km.session.key.decode()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                assert key not in cmdline, f"session key on the command line of pid {pid}"
        [conn] = list(kenv.state_dir.glob("*/connection.json"))
        assert stat.S_IMODE(conn.stat().st_mode) == 0o600
        assert stat.S_IMODE(conn.parent.stat().st_mode) == 0o700
        remote = json.loads(conn.read_text())
        assert remote["key"] == key and remote["ip"] == "127.0.0.1"
        listening = _listening_addresses()
        for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
            assert listening.get(remote[name]) == "127.0.0.1", name
    finally:
        kc.stop_channels()
        km.shutdown_kernel()


@pytest.mark.parametrize("alias", ["jump", "proxycmd"], ids=["ProxyJump", "ProxyCommand"])
def test_proxy_aliases_are_honoured(kenv, alias):
    kenv.spec("rk", host=getattr(kenv.remote, alias))
    km = KernelManager(kernel_name="tether-rk")
    kc = start(km)
    try:
        assert run(kc, "print(6 * 7)")["stdout"].strip() == "42"
        # the link's ssh and the one its ProxyJump / ProxyCommand runs
        assert len(leftovers(kenv.procs)["local"]) >= 2
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert wait_gone(kenv.procs) == {}


def test_link_drop_in_session_lifetime_is_reported_and_leaves_no_orphan(kenv):
    kenv.spec("rk", lifetime="session")
    km = KernelManager(kernel_name="tether-rk")
    kc = start(km)
    try:
        rec = remote_record(kenv.state_dir)
        assert km.is_alive()
        os.kill(km.provisioner.link.pid, signal.SIGKILL)  # the link dies, not the kernel
        deadline = time.monotonic() + 10
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not km.is_alive()
        assert _run_sync(km.provisioner.poll()) == 255  # "link lost", as ssh reports it
        assert wait_gone(kenv.procs) == {}
        assert wait_dead(rec["launcher_pid"])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_link_drop_in_grace_lifetime_reattaches_with_state(kenv):
    kenv.spec("rk", lifetime="grace", grace_s=60)
    km = KernelManager(kernel_name="tether-rk")
    kc = start(km)
    try:
        assert run(kc, "state = {'answer': 42}")["status"] == "ok"
        old_link = km.provisioner.link
        os.kill(old_link.pid, signal.SIGKILL)
        old_link.proc.wait(5)
        # poll() notices the dead link and re-attaches on the same local ports
        assert km.is_alive()
        assert km.provisioner.link is not old_link and km.provisioner.link.alive
        assert value(kc, "state['answer']") == "42"
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert wait_gone(kenv.procs) == {}


def test_dead_link_reported_then_cli_attach_finds_state(kenv, tether_bin, tmp_path):
    kenv.spec("rk", lifetime="grace", grace_s=60)
    km = KernelManager(kernel_name="tether-rk")
    km.kernel_spec.metadata["kernel_provisioner"]["config"]["on_link_drop"] = "report"
    kc = start(km)
    attach = None
    try:
        assert run(kc, "counter = 7")["status"] == "ok"
        rec = remote_record(kenv.state_dir)
        os.kill(km.provisioner.link.pid, signal.SIGKILL)
        km.provisioner.link.proc.wait(5)
        assert not km.is_alive()  # reported, not hidden
        assert alive(rec["kernel_pid"])  # ... while the kernel waits out its grace period
        kc.stop_channels()
        conn_file = tmp_path / "attached.json"
        import subprocess

        attach = subprocess.Popen([tether_bin, "kernel", "attach", km.kernel_id[:8],
                                   "--connection-file", str(conn_file), "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = json.loads(_read_json_doc(attach.stdout))
        assert first["kernel_id"] == km.kernel_id
        assert stat.S_IMODE(conn_file.stat().st_mode) == 0o600
        from jupyter_client import BlockingKernelClient

        kc2 = BlockingKernelClient(connection_file=str(conn_file))
        kc2.load_connection_file()
        kc2.start_channels()
        kc2.wait_for_ready(timeout=30)
        assert value(kc2, "counter + 1") == "8"
        kc2.shutdown()  # the attached client ends the kernel: the launcher follows
        assert attach.wait(15) == 0
        kc2.stop_channels()
        assert wait_gone(kenv.procs) == {}
    finally:
        if attach is not None and attach.poll() is None:
            attach.kill()
        km.shutdown_kernel(now=True)


def _read_json_doc(stream) -> str:
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith("}"):
            return "".join(lines)
    raise AssertionError("no JSON from tether kernel attach: " + "".join(lines))


def _run_sync(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def _listening_addresses() -> dict[int, str]:
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        addr, state = parts[1], parts[3]
        if state != "0A":  # LISTEN
            continue
        ip_hex, port_hex = addr.split(":")
        ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
        found[int(port_hex, 16)] = ip
    return found


def test_argv_shim_serves_frontends_that_ignore_provisioners(kenv):
    """VS Code-style: the frontend runs kernel.json's argv itself with its own ports."""
    spec = kenv.spec("rk", interrupt_mode="signal")
    ours = json.loads((kenv.data_dir / "kernels" / spec.kernel_name / "kernel.json").read_text())
    plain = kenv.data_dir / "kernels" / "plain"
    plain.mkdir()
    (plain / "kernel.json").write_text(json.dumps(
        {"argv": ours["argv"], "display_name": "plain", "language": "python",
         "interrupt_mode": "signal"}))  # no provisioner stanza: LocalProvisioner runs argv
    km = KernelManager(kernel_name="plain")
    kc = start(km)
    try:
        assert run(kc, "y = 5")["status"] == "ok"
        reply = interrupt_while_true(km, kc)  # SIGINT to the shim, relayed to the remote
        assert reply["ename"] == "KeyboardInterrupt"
        assert value(kc, "y") == "5"
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert wait_gone(kenv.procs) == {}


def test_a_silently_dead_link_still_ends_the_kernel(kenv):
    """No FIN ever reaches sshd (the client is frozen): the launcher's keepalive watch acts."""
    kenv.spec("rk", lifetime="session")
    km = KernelManager(kernel_name="tether-rk")
    config = km.kernel_spec.metadata["kernel_provisioner"]["config"]
    config["keepalive_s"] = 0.25  # silence limit: 4 * 0.25 + 3 = 4 s
    km.start_kernel()
    link = km.provisioner.link
    try:
        rec = remote_record(kenv.state_dir)
        os.kill(link.pid, signal.SIGSTOP)
        assert alive(rec["kernel_pid"])
        # the local ssh is stopped, not gone, until the finally below: only the remote side
        assert wait_gone(kenv.procs, timeout=20, kinds=("kernel", "launcher")) == {}
        assert wait_dead(rec["launcher_pid"])
    finally:
        os.kill(link.pid, signal.SIGCONT)
        km.shutdown_kernel(now=True)
    assert wait_gone(kenv.procs) == {}


def test_a_local_port_taken_before_forwarding_is_replaced(kenv):
    """The manager picks free local ports; if one is taken before ssh binds it, the
    provisioner picks new ones and the manager's connection file follows."""
    import socket

    kenv.spec("rk")
    km = KernelManager(kernel_name="tether-rk")
    km.pre_start_kernel()  # picks the ports and writes the connection file
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", km.shell_port))
    squatter.listen()
    taken = km.shell_port
    km.provisioner.ports_cached = True
    km.cleanup_resources(restart=True)  # keep the same ports for the real start
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        assert km.shell_port != taken
        assert json.loads(Path(km.connection_file).read_text())["shell_port"] == km.shell_port
        assert value(kc, "1 + 1") == "2"
    finally:
        squatter.close()
        kc.stop_channels()
        km.shutdown_kernel()


def test_a_killed_launcher_takes_its_kernel_along(kenv):
    """JPY_PARENT_PID: even a SIGKILLed launcher leaves no kernel behind."""
    kenv.spec("rk", lifetime="grace", grace_s=60)
    km = KernelManager(kernel_name="tether-rk")
    km.kernel_spec.metadata["kernel_provisioner"]["config"]["on_link_drop"] = "report"
    km.start_kernel()
    try:
        rec = remote_record(kenv.state_dir)
        os.kill(rec["launcher_pid"], signal.SIGKILL)
        assert wait_dead(rec["kernel_pid"])
        deadline = time.monotonic() + 10
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not km.is_alive()
    finally:
        km.shutdown_kernel(now=True)
