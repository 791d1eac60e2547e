"""The sshd runner: its config (pure), session environment, host key, missing sshd."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tether.errors import SystemDependencyError
from tether.host import platform as plat
from tether.ssh import sshd


def _settings(**kw) -> sshd.SshdSettings:
    base = dict(port=2222, host_key=Path("/s/hk"), authorized_keys=Path("/s/ak"),
                pid_file=Path("/s/pid"))
    return sshd.SshdSettings(**{**base, **kw})


@pytest.mark.parametrize("line", [
    "ListenAddress 127.0.0.1", "PasswordAuthentication no", "PubkeyAuthentication yes",
    "KbdInteractiveAuthentication no", "AllowTcpForwarding yes", "AuthorizedKeysFile /s/ak",
    "HostKey /s/hk", "Port 2222", "PermitUserEnvironment no",
], ids=lambda l: l.split()[0])
def test_config_is_locked_down(line: str) -> None:
    assert line in sshd.render_config(_settings()).splitlines()


def test_config_passes_session_env_and_quotes_paths() -> None:
    text = sshd.render_config(_settings(host_key=Path("/a b/hk"),
                                        session_env=(("CUDA_HOME", "/usr/local/cuda"),
                                                     ("X", "a b"))))
    assert 'HostKey "/a b/hk"' in text
    assert 'SetEnv CUDA_HOME=/usr/local/cuda "X=a b"' in text


def test_config_refuses_injection() -> None:
    with pytest.raises(ValueError):
        sshd.render_config(_settings(host_key=Path('/x"\nPasswordAuthentication yes')))


COLAB_ENV = {"PATH": "/usr/local/nvidia/bin:/usr/bin", "LD_LIBRARY_PATH": "/usr/lib64-nvidia",
             "CUDA_VERSION": "12.2", "NVIDIA_VISIBLE_DEVICES": "all", "COLAB_GPU": "1",
             "HOME": "/root", "SECRET_TOKEN": "x", "BAD": 'a"b', "CUDA_BAD": 'a"b'}


@pytest.mark.parametrize("kind,expected", [
    (plat.PlatformKind.COLAB, {"PATH", "LD_LIBRARY_PATH", "CUDA_VERSION", "NVIDIA_VISIBLE_DEVICES",
                               "COLAB_GPU", "TETHER_WORKSPACE"}),
    (plat.PlatformKind.KAGGLE, {"PATH", "LD_LIBRARY_PATH", "CUDA_VERSION",
                                "NVIDIA_VISIBLE_DEVICES", "COLAB_GPU", "TETHER_WORKSPACE"}),
    (plat.PlatformKind.LINUX, {"TETHER_WORKSPACE"}),
], ids=["colab-passes-gpu-env", "kaggle-too", "plain-linux-passes-nothing"])
def test_session_env(kind, expected) -> None:
    env = dict(sshd.session_env(COLAB_ENV, kind, Path("/w")))
    assert set(env) == expected
    assert env["TETHER_WORKSPACE"] == "/w"


def test_host_key_is_persistent(tmp_path) -> None:
    key = sshd.ensure_host_key(tmp_path)
    first = sshd.host_public_key(key)
    assert sshd.host_public_key(sshd.ensure_host_key(tmp_path)) == first
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert first.startswith("ssh-ed25519 ")


def test_missing_sshd_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(plat, "find_program", lambda name: None)
    info = plat.PlatformInfo(plat.PlatformKind.LINUX, "debian", "apt", False, None)
    with pytest.raises(SystemDependencyError) as exc:
        sshd.ensure_sshd(info)
    assert exc.value.hint == "install it with: sudo apt-get install -y openssh-server"
    mac = plat.PlatformInfo(plat.PlatformKind.MACOS, None, "brew", False, None)
    with pytest.raises(SystemDependencyError):
        sshd.ensure_sshd(mac)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_sshd_runs_and_stops_with_its_sessions(tmp_path, sshd_server) -> None:
    # our runner, with a client key of the session sshd fixture authorized
    d = sshd.Sshd(tmp_path / "h", session_env=(("TETHER_WORKSPACE", "/w"),))
    d.start(sshd.ensure_sshd(install=False))
    try:
        d.authorized_keys.write_text(sshd_server.client_key.with_suffix(".pub").read_text())
        kh = tmp_path / "kh"
        kh.write_text(f"[127.0.0.1]:{d.port} {sshd.host_public_key(d.host_key)}\n")
        args = ["ssh", "-F", "/dev/null", "-p", str(d.port), "-i", str(sshd_server.client_key),
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={kh}",
                "-o", "StrictHostKeyChecking=yes", f"{sshd_server.user}@127.0.0.1"]
        r = subprocess.run([*args, "echo $TETHER_WORKSPACE"], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "/w"
        # a password-only attempt is refused outright
        r = subprocess.run([*args[:-1], "-o", "PubkeyAuthentication=no",
                            "-o", "PreferredAuthentications=password",
                            f"{sshd_server.user}@127.0.0.1", "true"], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 255
        # a session that is running when sshd stops (sshd gives each its own process group)
        sleeper = subprocess.Popen([*args, "echo $$; exec sleep 60"], stdout=subprocess.PIPE,
                                   text=True)
        remote = sleeper.stdout.readline().strip()
        assert remote.isdigit(), "the session did not start"
        assert _alive(int(remote))
        pid = d.proc.pid
    finally:
        d.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert sleeper.wait(10) == 255
    assert not _alive(int(remote)), "the session's command outlived sshd"


@pytest.mark.parametrize("table,root,groups", [
    ({}, 10, set()),
    ({10: (1, 10), 11: (10, 10)}, 10, {10}),
    # sshd: connection (own session) -> privsep child + user shell (own session) -> command
    ({10: (1, 10), 20: (10, 20), 21: (20, 20), 30: (20, 30), 31: (30, 30), 40: (1, 40)},
     10, {20, 30}),
    ({10: (1, 10), 20: (99, 20)}, 10, set()),
    ({10: (20, 10), 20: (10, 20)}, 10, {20}),
], ids=["nothing", "own-group-child", "sshd-sessions", "unrelated", "cycle-terminates"])
def test_descendant_groups(table, root, groups) -> None:
    assert sshd.descendant_groups(table, root) == groups
