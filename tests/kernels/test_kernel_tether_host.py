"""A kernel on a tether host NAME: `tether up --connect NAME` writes `Host tether-NAME` (with
`tether proxy` as its ProxyCommand, through the gateway's WebSocket) and the kernel reaches it
by that name alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from jupyter_client.manager import KernelManager
from kernel_helpers import wait_gone


@pytest.mark.timeout(120)
def test_kernel_on_a_tether_host_by_name(kenv, cli, tether_bin, monkeypatch, tmp_path):
    monkeypatch.delenv("TETHER_SSH_CONFIG")  # tether's own $HOME/.ssh/config must be found
    workdir = tmp_path / "ws"
    workdir.mkdir()
    up = subprocess.run([tether_bin, "up", str(workdir), "--detach", "--connect", "tw",
                         "--json"], capture_output=True, text=True, timeout=60, env=os.environ)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["connected"]["ssh_host"] == "tether-tw"
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
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
        assert wait_gone(kenv.state_dir) == []
    finally:
        subprocess.run([tether_bin, "down"], capture_output=True, timeout=30, env=os.environ)
