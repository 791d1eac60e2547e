"""The host link through the real sshd: one OpenSSH master and one launcher agent per host,
shared by a process's kernels, that leaves nothing behind when it idles out, breaks, or its
process dies."""

from __future__ import annotations

import asyncio
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
    with pytest.raises(PeerError, match="refused the connection") as info:
        km.start_kernel()
    assert "AllowTcpForwarding" in (info.value.hint or "")
    assert time.monotonic() - started < 20
    assert wait_gone(kenv.procs) == {}
