"""`tether up` as real processes: foreground stop by signal, --detach + down, a gateway killed
mid-copy, restart and reconnect without pairing, and a tunnel restarted by the supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.host.conftest import RelayTunnel
from tests.host.test_link_e2e import activated, make_env
from tether.gateway.state import HostState
from tether.host.workspace import UpOptions, Workspace
from tether.link import profiles
from tether.link.connstring import ConnectionString
from tether.link.pairing import connect
from tether.tunnels.supervisor import wait_for

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_foreground_up_stops_everything_on_signal(tmp_path, tether_bin, sig) -> None:
    e = make_env(tmp_path)
    proc = subprocess.Popen([tether_bin, "up", str(e.workdir), "--json"], env=e.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        raw = ""
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            raw += line
            if line.startswith("}"):
                break
        info = json.loads(raw)
        assert info["detached"] is False
        ConnectionString.decode(info["connection_string"])
        run = json.loads((e.tether_home / "state/host/run.json").read_text())
        sshd_pid = run["sshd_pid"]
        assert _alive(sshd_pid)
        proc.send_signal(sig)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_for(lambda: not _alive(sshd_pid), 5), "sshd was left running"
    assert not (e.tether_home / "state/host/run.json").exists()


def test_detach_kill_mid_copy_restart_and_reconnect(tmp_path, tether_bin) -> None:
    e = make_env(tmp_path)
    r = e.run(tether_bin, "up", str(e.workdir), "--detach", "--connect", "mid", "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["detached"] and first["connected"]["name"] == "mid"
    assert e.ssh("tether-mid", "true").returncode == 0
    status = json.loads(e.run(tether_bin, "host", "status", "--json").stdout)
    assert status["running"] and status["pid"] == first["pid"]
    sshd_pid = json.loads((e.tether_home / "state/host/run.json").read_text())["sshd_pid"]

    # a large pull, then the gateway process dies under it
    big = e.workdir / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: cheap to read, slow to carry
    dest = e.root / "dest"
    dest.mkdir()
    rsync = subprocess.Popen(["rsync", "-a", "-e", f"ssh -F {e.ssh_config}",
                              f"tether-mid:{big}", f"{dest}/"], env=e.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert rsync.poll() is None, rsync.stderr.read()
    os.kill(first["pid"], signal.SIGKILL)
    assert rsync.wait(30) != 0
    err = rsync.stderr.read()
    assert "connection to 'mid' lost" in err or "closed" in err
    assert list(dest.iterdir()) == []  # rsync's temp file is gone, no partial big.bin

    # down cleans up after the crash: no orphan sshd
    r = e.run(tether_bin, "down", "--json")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: not _alive(sshd_pid), 5), "sshd outlived a crashed host"

    # up again: a new URL, the same host key; reconnect updates the URL without pairing
    r = e.run(tether_bin, "up", str(e.workdir), "--detach", "--json")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert second["host_key_fingerprint"] == first["host_key_fingerprint"]
    assert second["workspace_id"] == first["workspace_id"]
    assert second["url"] != first["url"]
    assert e.ssh("tether-mid", "true").returncode == 255  # still the old URL
    r = e.run(tether_bin, "connect", second["connection_string"], "--name", "mid", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["paired"] is False
    ok = e.ssh("tether-mid", "echo back")
    assert ok.returncode == 0 and ok.stdout.strip() == "back", ok.stderr
    # the code in the string was not spent by the reconnect: another laptop can still use it
    with activated(e):
        assert connect(second["connection_string"], "other").paired is True
    r = e.run(tether_bin, "down")
    assert r.returncode == 0 and "stopped" in r.stdout
    r = e.run(tether_bin, "down", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["stopped"] is False


def test_supervisor_restarts_the_tunnel_of_a_workspace(tmp_path) -> None:
    e = make_env(tmp_path)
    messages: list[str] = []
    with activated(e):
        ws = Workspace(UpOptions(directory=e.workdir, supervise_interval_s=0.1),
                       announce=messages.append, tunnel=RelayTunnel(0))
        ws.start()
        try:
            first_url = ws.url
            assert first_url != ws.local_url  # traffic goes through the relay process
            connect(ws.new_connection_string(), "relay")
            assert e.ssh("tether-relay", "true").returncode == 0
            os.kill(ws.supervisor.tunnel.proc.pid, signal.SIGKILL)
            state = HostState()
            assert wait_for(lambda: (state.read_run() or {}).get("tunnel_restarts") == 1, 10)
            run = state.read_run()
            assert run["url"] != first_url
            # RACE: run.json is written before the announcement (same thread, just after)
            assert wait_for(lambda: any("new URL" in m and run["url"] in m for m in messages), 5)
            assert e.ssh("tether-relay", "true").returncode == 255
            result = connect(ws.new_connection_string(), "relay")
            assert result.paired is False and profiles.load_profile("relay").url == run["url"]
            assert e.ssh("tether-relay", "true").returncode == 0
        finally:
            ws.stop()


def test_a_cut_off_tunnel_is_restarted_and_host_status_shows_the_new_url(tmp_path, cli) -> None:
    e = make_env(tmp_path)
    messages: list[str] = []
    with activated(e):
        ws = Workspace(UpOptions(directory=e.workdir, supervise_interval_s=0.05,
                                 tunnel_probe_every_s=0.1, tunnel_probe_failures=3,
                                 tunnel_probe_timeout_s=0.5),
                       announce=messages.append, tunnel=RelayTunnel(0))
        ws.start()
        try:
            first_url = ws.url
            relay = ws.supervisor.tunnel.proc
            time.sleep(1.0)  # many probes pass through a working relay: no restart
            assert (HostState().read_run() or {}).get("tunnel_restarts") == 0
            os.kill(relay.pid, signal.SIGUSR1)  # cut off, still running
            state = HostState()
            assert wait_for(lambda: (state.read_run() or {}).get("tunnel_restarts") == 1, 20)
            run = state.read_run()
            assert run["url"] != first_url and relay.poll() is not None
            assert wait_for(lambda: any("new URL" in m and run["url"] in m
                                        and "/.tether/health failed 3 times" in m
                                        for m in messages), 5), messages
            r = cli("host", "status", "--json")
            assert r.exit_code == 0 and r.json()["url"] == run["url"]
            assert r.json()["tunnel_restarts"] == 1
            assert run["url"] in cli("host", "status").stdout
        finally:
            ws.stop()
