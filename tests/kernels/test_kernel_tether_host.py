"""A kernel on a tether host NAME: `tether up --connect NAME` writes `Host tether-NAME` (with
`tether proxy` as its ProxyCommand, through the gateway's WebSocket) and the kernel reaches it
by that name alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dataclasses import replace

from jupyter_client.manager import KernelManager
from kernel_helpers import leftovers, wait_gone


@pytest.mark.timeout(120)
def test_kernel_on_a_tether_host_by_name(kenv, cli, tether_bin, monkeypatch, tmp_path):
    monkeypatch.delenv("TETHER_SSH_CONFIG")  # tether's own $HOME/.ssh/config must be found
    workdir = tmp_path / "ws"
    workdir.mkdir()
    up = subprocess.run([tether_bin, "up", str(workdir), "--detach", "--connect", "tw",
                         "--json"], capture_output=True, text=True, timeout=60, env=os.environ)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    assert info["connected"]["ssh_host"] == "tether-tw"
    # the launcher comes in through the workspace's own sshd, not the fixture's
    procs = replace(kenv.procs, sshd_port=info["sshd_port"])
    try:
        r = cli("kernel", "add", "tk", "--host", "tw", "--python", sys.executable, "--json")
        assert r.exit_code == 0, r.stderr
        km = KernelManager(kernel_name="tether-tk")
        km.kernel_spec.metadata["kernel_provisioner"]["config"]["remote_state_dir"] = str(
            kenv.state_dir)
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            reply = kc.execute_interactive("import os; z = os.getpid()", timeout=20)
            assert reply["content"]["status"] == "ok"
            assert km.provisioner.link.target.alias == "tether-tw"
            seen = leftovers(procs)
            assert set(seen) == {"kernel", "launcher", "local"}, seen
            assert len(seen["local"]) >= 2  # the link's ssh and its `tether proxy`
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
        assert wait_gone(procs) == {}
    finally:
        subprocess.run([tether_bin, "down"], capture_output=True, timeout=30, env=os.environ)
