"""The host link through the real sshd: one OpenSSH master and one launcher agent per host,
shared by a process's kernels, that leaves nothing behind when it idles out, breaks, or its
process dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from jupyter_client.manager import AsyncKernelManager, KernelManager

from kernel_helpers import leftovers, remote_record, wait_gone

from tether.kernels import hostlink

pytestmark = pytest.mark.timeout(90)


def value(kc, expr: str, timeout: float = 20) -> str:
    msg_id = kc.execute("", silent=True, user_expressions={"v": expr})
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["user_expressions"]["v"]["data"]["text/plain"]


async def test_kernels_on_one_host_share_one_link_until_it_idles_out(kenv, monkeypatch):
    monkeypatch.setenv(hostlink.IDLE_ENV, "1")
    kenv.spec("rk")
    kms = [AsyncKernelManager(kernel_name="tether-rk") for _ in range(3)]
    await asyncio.gather(*(km.start_kernel() for km in kms))  # at once: one start for all
    clients = []
    try:
        links = {km.provisioner.link.host for km in kms}
        assert len(links) == 1
        [link] = links
        seen = leftovers(kenv.procs)
        assert len(seen["kernel"]) == 3
        assert link.agent_pid in seen["launcher"] and len(seen["launcher"]) == 4
        for i, km in enumerate(kms):
            kc = km.client()
            kc.start_channels()
            clients.append(kc)
            await kc.wait_for_ready(timeout=30)
            reply = await kc.execute_interactive(f"k = {i}", timeout=20)
            assert reply["content"]["status"] == "ok"
        await kms[0].shutdown_kernel()
        assert link.alive  # the others still use it
        for km in kms[1:]:
            await km.shutdown_kernel()
        assert link.alive  # idle, for one more second
        assert wait_gone(kenv.procs, timeout=10) == {}  # then master and agent leave
        assert not link.alive
    finally:
        for kc in clients:
            kc.stop_channels()
        for km in kms:
            if await km.is_alive():
                await km.shutdown_kernel(now=True)


def test_a_launch_after_the_agent_died_opens_a_new_link(kenv, monkeypatch):
    monkeypatch.setenv(hostlink.IDLE_ENV, "600")
    kenv.spec("rk", lifetime="session")
    first, second = KernelManager(kernel_name="tether-rk"), KernelManager(kernel_name="tether-rk")
    first.start_kernel()
    kc = first.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        old = first.provisioner.link.host
        os.kill(old.agent_pid, signal.SIGKILL)  # the master lives on: the first kernel uses it
        second.start_kernel()
        new = second.provisioner.link.host
        assert new is not old and new.proc.pid != old.proc.pid
        assert old.alive  # the old master was still up: its agent's refusal made the switch
        assert value(kc, "6 * 7") == "42"  # the first kernel never noticed
    finally:
        kc.stop_channels()
        for km in (first, second):
            km.shutdown_kernel(now=True)
    hostlink.close_all()
    assert wait_gone(kenv.procs) == {}


def test_a_killed_master_takes_every_kernel_link_on_it_and_the_next_launch_recovers(kenv,
                                                                                    monkeypatch):
    monkeypatch.setenv(hostlink.IDLE_ENV, "600")
    kenv.spec("rk", lifetime="session")
    kms = [KernelManager(kernel_name="tether-rk") for _ in range(2)]
    for km in kms:
        km.start_kernel()
    try:
        master = kms[0].provisioner.link.proc
        assert kms[1].provisioner.link.proc is master
        master.kill()
        master.wait(5)
        deadline = time.monotonic() + 10
        while any(km.is_alive() for km in kms) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(km.is_alive() for km in kms)  # both report the lost link
        assert wait_gone(kenv.procs, kinds=("kernel", "launcher")) == {}
        again = KernelManager(kernel_name="tether-rk")
        again.start_kernel()
        assert again.provisioner.link.proc is not master and again.is_alive()
        again.shutdown_kernel()
    finally:
        for km in kms:
            km.shutdown_kernel(now=True)
    hostlink.close_all()
    assert wait_gone(kenv.procs) == {}


def test_a_process_that_dies_leaves_no_link_and_no_kernel_behind(kenv, tmp_path):
    """The master's stdin is a pipe from its process: even SIGKILL ends agent and master."""
    kenv.spec("rk", lifetime="session")
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from jupyter_client.manager import KernelManager
        km = KernelManager(kernel_name="tether-rk")
        km.start_kernel()
        print(km.provisioner.link.host.agent_pid, flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    env = {**os.environ, hostlink.IDLE_ENV: "600"}
    owner = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        agent_pid = int(owner.stdout.readline())
        seen = leftovers(kenv.procs)
        assert agent_pid in seen["launcher"] and seen["kernel"] and seen["local"]
        assert remote_record(kenv.state_dir)["lifetime"] == "session"
        owner.stdin.write("\n")
        owner.stdin.flush()
        assert owner.wait(10) == -signal.SIGKILL
        assert wait_gone(kenv.procs, timeout=20) == {}
    finally:
        if owner.poll() is None:
            owner.kill()


def test_a_host_that_refuses_forwarding_fails_the_launch_with_a_reason(kenv, sshd_server,
                                                                       tmp_path):
    """`no-port-forwarding` on the key: the kernel's ports could never be reached either, so
    the launch must fail at once and say why, not leave a client waiting for a kernel."""
    from tether.errors import PeerError
    from tether.kernels import specs

    key = tmp_path / "nofwd"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshd_server.authorize("no-port-forwarding " + key.with_suffix(".pub").read_text())
    config = tmp_path / "ssh_config"
    config.write_text(f"Host nofwd\n  HostName 127.0.0.1\n  Port {sshd_server.port}\n"
                      f"  User {sshd_server.user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {sshd_server.known_hosts}\n"
                      "  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n")
    specs.add_kernel(specs.RemoteKernelSpec(
        name="nofwd", host="nofwd", python=sys.executable, ssh_config=str(config),
        remote_state_dir=str(kenv.state_dir),
        remote_argv=(sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}")),
        check=False)
    km = KernelManager(kernel_name="tether-nofwd")
    started = time.monotonic()
    with pytest.raises(PeerError, match="refuses to forward") as info:
        km.start_kernel()
    assert "AllowTcpForwarding" in (info.value.hint or "")
    assert time.monotonic() - started < 20
    assert wait_gone(kenv.procs) == {}


def _alias_config(path, alias: str, server, key=None) -> None:
    path.write_text(f"Host {alias}\n  HostName 127.0.0.1\n  Port {server.port}\n"
                    f"  User {server.user}\n  IdentityFile {key or server.client_key}\n"
                    f"  IdentitiesOnly yes\n  UserKnownHostsFile {server.known_hosts}\n"
                    "  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n")


def test_a_host_without_unix_socket_forwarding_gets_the_agent_on_loopback(kenv, tmp_path):
    from kernel_helpers import KernelProcs

    from tests.conftest import start_sshd, stop_process  # the suite's sshd, one setting changed
    from tether.kernels import specs

    proc, server = start_sshd(tmp_path / "sshd", {"AllowStreamLocalForwarding": "no"})
    try:
        config = tmp_path / "ssh_config"
        _alias_config(config, "nounix", server)
        specs.add_kernel(specs.RemoteKernelSpec(
            name="nounix", host="nounix", python=sys.executable, ssh_config=str(config),
            remote_state_dir=str(kenv.state_dir),
            remote_argv=(sys.executable, "-m", "ipykernel_launcher", "-f",
                         "{connection_file}")), check=False)
        km = KernelManager(kernel_name="tether-nounix")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            assert km.provisioner.link.host.agent_address.startswith("127.0.0.1:")
            assert value(kc, "2 ** 10") == "1024"
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
        hostlink.close_all()
        assert wait_gone(KernelProcs(kenv.state_dir, server.port, kenv.home)) == {}
    finally:
        stop_process(proc)


def test_a_stale_link_is_replaced_not_waited_on(kenv, monkeypatch):
    """An idle link whose master froze (as on a network gone silent) would answer nothing."""
    from tether.kernels import link as kernel_link

    monkeypatch.setenv(hostlink.IDLE_ENV, "600")
    monkeypatch.setattr(kernel_link, "ACCEPT_WAIT_S", 2.0)
    kenv.spec("rk", lifetime="session")
    km = KernelManager(kernel_name="tether-rk")
    km.start_kernel()
    km.shutdown_kernel()
    [stale] = hostlink.live_links()
    os.kill(stale.proc.pid, signal.SIGSTOP)
    try:
        again = KernelManager(kernel_name="tether-rk")
        started = time.monotonic()
        again.start_kernel()
        assert time.monotonic() - started < 15
        assert again.provisioner.link.host is not stale
        again.shutdown_kernel()
    finally:
        with contextlib.suppress(ProcessLookupError):  # it was killed when let go: fine
            os.kill(stale.proc.pid, signal.SIGCONT)
    hostlink.close_all()
    assert wait_gone(kenv.procs) == {}


def test_a_forward_that_fails_part_way_leaves_no_port_bound(kenv, monkeypatch):
    import socket

    from tether.kernels.link import KernelLink
    from tether.kernels.remote_launcher import free_ports
    from tether.kernels.target import resolve_target

    monkeypatch.setenv(hostlink.IDLE_ENV, "600")  # the shared master stays: ports would too
    link = KernelLink(resolve_target(kenv.remote.alias, kenv.remote.config), sys.executable)
    link.open({"v": 1, "op": "list", "state_dir": str(kenv.state_dir)}, 30)
    squatter = socket.socket()
    try:
        local = free_ports(3)
        squatter.bind(("127.0.0.1", local[2]))
        squatter.listen()
        from tether.errors import ConnectError

        with pytest.raises(ConnectError):
            link.forward("127.0.0.1", [(local[0], 1), (local[1], 2), (local[2], 3)])
        for port in local[:2]:
            probe = socket.socket()
            probe.bind(("127.0.0.1", port))  # free again: the master let it go
            probe.close()
    finally:
        squatter.close()
        link.close()
    hostlink.close_all()
    assert wait_gone(kenv.procs) == {}


def test_a_launcher_failure_is_reported_as_itself_and_keeps_the_link(kenv, tmp_path,
                                                                     monkeypatch):
    from tether.errors import PeerError

    monkeypatch.setenv(hostlink.IDLE_ENV, "600")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    kenv.spec("rk", lifetime="session")
    kenv.spec("broken", remote_state_dir=str(blocker / "state"))
    good = KernelManager(kernel_name="tether-rk")
    good.start_kernel()  # the link is up: the failure below is on a reused link
    try:
        link = good.provisioner.link.host
        with pytest.raises(PeerError, match="NotADirectoryError") as info:
            KernelManager(kernel_name="tether-broken").start_kernel()
        assert "forwarding" not in str(info.value) + (info.value.hint or "")
        assert hostlink.live_links() == [link]  # a healthy link is not thrown away
    finally:
        good.shutdown_kernel()
    hostlink.close_all()
    assert wait_gone(kenv.procs) == {}
