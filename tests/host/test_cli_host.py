"""CLI edges of up/down/host/connect/hosts/proxy with nothing running, and platform awareness."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import read_pty_to_end
from tests.host.test_link_e2e import activated, make_env
from tether.errors import AuthError
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


TOKEN = "2abcDEFghiJKLmnoPQRstu_3vwxYZ0123456789abcd"


def test_ngrok_token_from_file_env_and_clear(cli, isolated, tmp_path, monkeypatch) -> None:
    from tether.tunnels.ngrok import resolve_token

    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    secrets_file = isolated.tether_home / "config" / "secrets.json"
    f = tmp_path / "tok"
    f.write_text(TOKEN + "\n")
    r = cli("host", "ngrok-token", "--token-file", str(f), "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json() == {"stored": True, "removed": False}
    assert TOKEN not in r.stdout + r.stderr
    assert resolve_token({}) == TOKEN  # what `tether up --tunnel ngrok` reads
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    r = cli("host", "ngrok-token", "--token-file", "-", input="other_token_0123456789abc\n")
    assert r.exit_code == 0 and "stored the ngrok authtoken" in r.stdout
    assert resolve_token({}) == "other_token_0123456789abc"
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    assert cli("host", "ngrok-token").exit_code == 0
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    assert resolve_token({}) == TOKEN
    r = cli("host", "ngrok-token", "--clear")
    assert r.exit_code == 0 and "forgot" in r.stdout
    assert cli("host", "ngrok-token", "--clear", "--json").json() == {"stored": False,
                                                                      "removed": False}
    with pytest.raises(AuthError) as info:
        resolve_token({})
    assert "tether host ngrok-token" in info.value.hint


@pytest.mark.parametrize("args,stdin,code,fragment", [
    (("--token-file", "/nonexistent/tok"), None, 2, "could not read the ngrok authtoken"),
    (("--token-file", "-"), "not a token!\n", 2, "does not look like an ngrok authtoken"),
    (("--token-file", "-"), "\n", 2, "holds no ngrok authtoken"),
    ((), None, 2, "no ngrok authtoken given"),
    (("--clear", "--token-file", "x"), None, 2, "--clear takes no token"),
    (("sometoken",), None, 2, "unexpected extra argument"),
], ids=["missing-file", "malformed", "empty", "nothing-given", "clear-and-file",
        "argv-refused"])
def test_ngrok_token_bad_input(cli, monkeypatch, args, stdin, code, fragment) -> None:
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    r = cli("host", "ngrok-token", *args, input=stdin)
    assert r.exit_code == code, r.stderr
    assert fragment in r.stderr.lower() and "Traceback" not in r.stderr
    assert r.stderr.startswith("error:") or "Usage" in r.stderr
    assert "not a token" not in r.stderr  # the input is never echoed
    from tether import secrets

    assert secrets.get_secret("ngrok:authtoken") is None


def test_ngrok_token_prompt_on_a_terminal(isolated, tether_bin) -> None:
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.environ.pop("NGROK_AUTHTOKEN", None)
        os.execv(tether_bin, [tether_bin, "host", "ngrok-token"])
    out = b""
    try:
        while b"authtoken:" not in out:
            out += os.read(fd, 1024)
        os.write(fd, TOKEN.encode() + b"\n")
        out += read_pty_to_end(fd)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert TOKEN.encode() not in out  # the prompt does not echo
    from tether.tunnels.ngrok import resolve_token

    assert resolve_token({}) == TOKEN
