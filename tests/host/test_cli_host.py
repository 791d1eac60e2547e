"""CLI edges of up/down/host/connect/hosts/proxy with nothing running, and platform awareness."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.host.test_link_e2e import activated, make_env
from tether.host.workspace import UpOptions, Workspace
from tether.link.pairing import connect

pytestmark = pytest.mark.timeout(60)


def test_nothing_running(cli) -> None:
    r = cli("host", "status", "--json")
    assert r.exit_code == 0 and r.json()["running"] is False
    r = cli("down", "--json")
    assert r.exit_code == 0 and r.json() == {"stopped": False, "reason": "no workspace is running"}
    r = cli("host", "pair-code")
    assert r.exit_code == 10 and "no workspace is running" in r.stderr and "tether up" in r.stderr
    r = cli("hosts", "--json")
    assert r.exit_code == 0 and r.json() == []
    r = cli("hosts")
    assert "tether connect" in r.stdout


@pytest.mark.parametrize("args,code,fragment", [
    (("up", "--tunnel", "bogus"), 2, "unknown tunnel"),
    (("up", "--tunnel", "cloudflared", "--public-url", "https://x.org"), 2, "--public-url"),
    (("up", "--public-url", "not a url"), 2, "not an http(s) URL"),
    (("up", "/nonexistent/dir"), 2, "is not a directory"),
    (("up", "--connect", "bad name"), 2, "not a valid host name"),
    (("host", "pair-code", "--ttl", "5"), 2, "between 30 s and 7 days"),
    (("proxy", "nope"), 10, "no host named 'nope'"),
    (("hosts", "rm", "nope"), 10, "no host named"),
], ids=["bad-tunnel", "public-url-with-cloudflared", "bad-public-url", "missing-dir",
        "bad-connect-name", "short-ttl", "proxy-unknown-host", "rm-unknown-host"])
def test_bad_input(cli, args, code, fragment) -> None:
    r = cli(*args)
    assert r.exit_code == code, r.stderr
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_proxy_unknown_host_in_a_real_process(isolated, tether_bin) -> None:
    r = subprocess.run([tether_bin, "proxy", "nope"], capture_output=True, text=True,
                       input="", env=isolated.env, timeout=20)
    assert r.returncode == 10 and r.stderr.startswith("error: no host named 'nope'")


def test_colab_policy_is_stated_and_gpu_env_reaches_ssh(tmp_path, monkeypatch) -> None:
    e = make_env(tmp_path)
    messages: list[str] = []
    with activated(e):
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
        monkeypatch.setenv("CUDA_VERSION", "12.2.1")
        monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
        ws = Workspace(UpOptions(directory=e.workdir), announce=messages.append)
        ws.start()
        try:
            assert any("Google Colab" in m and "forbid SSH" in m for m in messages)
            connect(ws.new_connection_string(), "colab")
            r = e.ssh("tether-colab", "echo $CUDA_VERSION $NVIDIA_VISIBLE_DEVICES")
            assert r.returncode == 0, r.stderr
            assert r.stdout.split() == ["12.2.1", "all"]
            from tether.host.api import host_status

            status = host_status()
            assert status["platform"] == "Google Colab" and "forbid" in status["policy"]
        finally:
            ws.stop()


def test_failed_tunnel_stops_what_started(cli, isolated, monkeypatch) -> None:
    monkeypatch.setattr("tether.tunnels.cloudflared.which", lambda name: None)
    before = subprocess.run(["pgrep", "-f", str(isolated.tether_home)], capture_output=True,
                            text=True).stdout.split()
    r = cli("up", str(isolated.home), "--tunnel", "cloudflared")
    assert r.exit_code == 1 and "cloudflared is not installed" in r.stderr
    assert "--tunnel" in r.stderr  # the hint names the alternatives
    host_dir = isolated.tether_home / "state" / "host"
    assert (host_dir / "sshd_config").exists()  # sshd was started, then stopped
    assert not (host_dir / "run.json").exists()
    after = subprocess.run(["pgrep", "-f", str(isolated.tether_home)], capture_output=True,
                           text=True).stdout.split()
    assert after == before == []
    assert cli("host", "status", "--json").json()["running"] is False
