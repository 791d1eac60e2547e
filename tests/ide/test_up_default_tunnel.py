"""`tether up` without --tunnel: local on an ordinary machine, a public tunnel on Colab/Kaggle.

Colab is faked as tests/host/test_cli_host.py does (its environment variable); "cloudflared" is
a script on PATH that runs the loopback relay of tests/host (relay_tunnel.py), so the URL the
tunnel announces really reaches the gateway, as a quick tunnel's would.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.host.conftest import RELAY, parse_relay_url
from tether.errors import SystemDependencyError
from tether.host import platform as plat

pytestmark = pytest.mark.timeout(120, func_only=True)
COLAB = ("COLAB_RELEASE_TAG", "release-colab_20260101")
KAGGLE = ("KAGGLE_KERNEL_RUN_TYPE", "Interactive")


def _info(kind: plat.PlatformKind) -> plat.PlatformInfo:
    return plat.PlatformInfo(kind, "ubuntu", "apt", True, None)


@pytest.mark.parametrize(("kind", "cloudflared", "token", "expected"), [
    (plat.PlatformKind.LINUX, True, True, "local"),
    (plat.PlatformKind.LINUX, False, False, "local"),
    (plat.PlatformKind.MACOS, True, False, "local"),
    (plat.PlatformKind.COLAB, True, True, "cloudflared"),
    (plat.PlatformKind.COLAB, False, True, "ngrok"),
    (plat.PlatformKind.KAGGLE, True, False, "cloudflared"),
    (plat.PlatformKind.KAGGLE, False, True, "ngrok"),
], ids=["linux-keeps-local", "linux-without-tunnels", "macos", "colab-prefers-cloudflared",
        "colab-ngrok-with-token", "kaggle-cloudflared", "kaggle-ngrok"])
def test_default_tunnel_table(kind, cloudflared, token, expected):
    assert plat.default_tunnel(_info(kind), cloudflared=cloudflared,
                               ngrok_token=token) == expected


@pytest.mark.parametrize("kind", [plat.PlatformKind.COLAB, plat.PlatformKind.KAGGLE])
def test_default_tunnel_without_any_public_tunnel_names_every_way_out(kind):
    with pytest.raises(SystemDependencyError) as err:
        plat.default_tunnel(_info(kind), cloudflared=False, ngrok_token=False)
    assert _info(kind).name in err.value.message
    for way in ("cloudflared", "NGROK_AUTHTOKEN", "--tunnel ngrok", "--tunnel local"):
        assert way in err.value.hint


@pytest.fixture
def no_public_tunnel(isolated, tmp_path, monkeypatch):
    """No cloudflared on PATH (nor in ~/.local/bin) and no ngrok token anywhere."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    from tether.tunnels.process import which

    assert which("cloudflared") is None, "a real cloudflared would make this test meaningless"
    return isolated


@pytest.mark.parametrize("env", [COLAB, KAGGLE], ids=["colab", "kaggle"])
def test_up_on_a_notebook_without_a_public_tunnel_fails_before_starting(
        no_public_tunnel, cli, monkeypatch, tmp_path, env):
    monkeypatch.setenv(*env)
    ws = tmp_path / "ws"
    ws.mkdir()
    r = cli("up", str(ws), "--ide")
    assert r.exit_code == 1, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: on ") and "needs a public tunnel" in lines[0], r.stderr
    assert lines[1].startswith("hint: ") and "--tunnel local" in lines[1]
    assert "NGROK_AUTHTOKEN" in lines[1] and "cloudflared" in lines[1]
    assert "Traceback" not in r.stderr
    host = no_public_tunnel.tether_home / "state" / "host"
    assert not (host / "sshd_config").exists()  # refused before sshd was even configured


def test_default_on_a_notebook_finds_an_ngrok_token_in_env_or_secrets(no_public_tunnel,
                                                                      monkeypatch):
    from tether import secrets
    from tether.host.api import default_tunnel

    monkeypatch.setenv(*COLAB)
    messages: list[str] = []
    monkeypatch.setenv("NGROK_AUTHTOKEN", "tok-from-env-0123456789")
    assert default_tunnel(announce=messages.append) == "ngrok"
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    secrets.set_secret("ngrok:authtoken", "tok-from-secrets-0123456789")
    assert default_tunnel(announce=messages.append) == "ngrok"
    assert len(messages) == 2 and all("ngrok" in m and "--tunnel local" in m
                                      for m in messages)
    assert not any("tok-from" in m for m in messages)  # the token is looked up, never shown
    # a --public-url says the port is reachable already: that is the local tunnel's job
    assert default_tunnel("https://ws.example.org") == "local"
    monkeypatch.delenv(COLAB[0])
    assert default_tunnel() == "local"


def test_default_on_a_notebook_with_cloudflared_never_asks_a_broken_secrets_store(
        relay_cloudflared, isolated, monkeypatch):
    """The ngrok token matters only without cloudflared: a keyring that cannot answer (forced,
    no backend) must not stop a notebook that has cloudflared."""
    from tether.host.api import default_tunnel

    monkeypatch.setenv(*COLAB)
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "keyring")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    assert default_tunnel() == "cloudflared"


def test_default_on_a_notebook_without_cloudflared_and_a_broken_store_says_what_is_missing(
        no_public_tunnel, monkeypatch):
    from tether.host.api import default_tunnel

    monkeypatch.setenv(*COLAB)
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "keyring")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    with pytest.raises(SystemDependencyError, match="needs a public tunnel"):
        default_tunnel()


@pytest.fixture
def relay_cloudflared(tmp_path, monkeypatch) -> None:
    """`cloudflared` on PATH is the test relay; its announced URL is parsed as the relay's."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "cloudflared"
    # argv: cloudflared tunnel --no-autoupdate --url http://127.0.0.1:PORT
    script.write_text(f'#!/bin/sh\nfor last; do :; done\n'
                      f'exec {sys.executable} {RELAY} "${{last##*:}}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setattr("tether.tunnels.cloudflared.CloudflaredTunnel.parse_url",
                        staticmethod(parse_relay_url))
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)


def _run_foreground_up(args: list[str], printed, while_up) -> tuple[int, str, str, object]:
    """Run a foreground `tether up` in this process (its tunnel patched as the test set it).

    Once its stdout satisfies ``printed``, ``while_up(stdout)`` runs in another thread and the
    workspace is then stopped as `tether down` would stop it; returns the exit code, stdout,
    stderr and what ``while_up`` returned (or raised).
    """
    from tether.cli.main import main
    from tether.host.api import down

    out, err = io.StringIO(), io.StringIO()
    result: dict = {}

    def watch() -> None:
        try:
            deadline = time.monotonic() + 90
            while not printed(out.getvalue()):
                if time.monotonic() > deadline or result.get("returned"):
                    raise AssertionError("`tether up` never printed what the test waits for")
                time.sleep(0.1)
            result["value"] = while_up(out.getvalue())
        except BaseException as exc:  # re-raised in the test's thread
            result["value"] = exc
        finally:
            while not result.get("returned") and down().get("stopped") is not True:
                time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        finally:
            result["returned"] = True
    watcher.join(30)
    value = result.get("value")
    if isinstance(value, BaseException):
        raise value
    return code, out.getvalue(), err.getvalue(), value


def _login_page(url: str) -> int:
    return httpx.get(url + "login", timeout=10).status_code


def _json_printed(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.ide
def test_up_ide_on_colab_prints_the_tunnel_url(ide_env, relay_cloudflared, monkeypatch,
                                               tmp_path):
    monkeypatch.setenv(*COLAB)
    monkeypatch.setenv("TETHER_IDE_PASSWORD", "colab-tunnel-password")
    ws = tmp_path / "ws"
    ws.mkdir()

    code, stdout, stderr, status = _run_foreground_up(
        ["up", str(ws), "--ide", "--json"], _json_printed,
        lambda text: _login_page(json.loads(text)["ide"]["url"]))
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["tunnel"] == "cloudflared" and info["platform"] == "Google Colab"
    tunnel_url = info["url"]
    assert parse_relay_url(f"relay-url: {tunnel_url}") == tunnel_url  # the relay's address
    assert tunnel_url != info["local_url"]
    assert info["ide"]["url"] == tunnel_url + "/"
    assert status == 200  # code-server's login page, reached through the tunnel

    code, stdout, stderr, (url, local_url) = _run_foreground_up(
        ["up", str(ws), "--ide"], lambda text: "IDE password" in text, _printed_and_local)
    assert code == 0, stderr
    first = stdout.splitlines()[0]
    assert "(tunnel: cloudflared, platform: Google Colab)" in first
    assert "using a cloudflared tunnel" in stderr and "--tunnel local" in stderr
    tunnel_url = first.split(" is up at ", 1)[1].split()[0]
    assert url == tunnel_url + "/" and tunnel_url != local_url


def _printed_and_local(text: str) -> tuple[str, str]:
    """The IDE URL `up` printed, and the gateway's local URL (from `tether host status`)."""
    from tether.host.api import host_status

    return text.split("VS Code in the browser: ", 1)[1].split()[0], host_status()["local_url"]


@pytest.mark.ide
def test_up_ide_on_colab_with_tunnel_local_prints_the_local_url(ide_env, relay_cloudflared,
                                                                monkeypatch, tmp_path):
    monkeypatch.setenv(*COLAB)
    ws = tmp_path / "ws"
    ws.mkdir()
    code, stdout, stderr, (url, local_url) = _run_foreground_up(
        ["up", str(ws), "--ide", "--tunnel", "local"], lambda text: "IDE password" in text,
        _printed_and_local)
    assert code == 0, stderr
    assert "(tunnel: local, platform: Google Colab)" in stdout.splitlines()[0]
    assert url == local_url + "/"
    assert "using a" not in stderr  # nothing was chosen for the user
