"""Pinned host keys in known_hosts: add/replace/remove by alias, hashed entries, reset."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import subprocess

import pytest

from tether.errors import ConfigError
from tether.ssh import known_hosts as kh

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf"


def _hashed(alias: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, alias.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(("text", "expected"), [
    ("", f"tether-x {KEY_A} tether-pin\n"),
    ("other ssh-rsa AAAA\n", f"other ssh-rsa AAAA\ntether-x {KEY_A} tether-pin\n"),
    ("other ssh-rsa AAAA", f"other ssh-rsa AAAA\ntether-x {KEY_A} tether-pin\n"),
    (f"tether-x {KEY_B}\n", f"tether-x {KEY_A} tether-pin\n"),
    (f"a,tether-x {KEY_B}\n", f"a {KEY_B}\ntether-x {KEY_A} tether-pin\n"),
    (f"{_hashed('tether-x')} {KEY_B}\n", f"tether-x {KEY_A} tether-pin\n"),
    (f"{_hashed('other')} {KEY_B}\n", f"{_hashed('other')} {KEY_B}\ntether-x {KEY_A} tether-pin\n"),
    (f"@cert-authority tether-x {KEY_B}\n", f"@cert-authority tether-x {KEY_B}\n"
                                            f"tether-x {KEY_A} tether-pin\n"),
    (f"# tether-x {KEY_B}\n", f"# tether-x {KEY_B}\ntether-x {KEY_A} tether-pin\n"),
], ids=["empty", "append", "no-newline", "replace", "shared-line", "hashed", "hashed-other",
        "cert-authority-kept", "comment-kept"])
def test_add_pins_exactly_one_key(text, expected):
    assert kh.add_text(text, "tether-x", KEY_A + " a comment") == expected


@pytest.mark.parametrize(("alias", "line"), [
    ("has space", KEY_A), ("a,b", KEY_A), ("", KEY_A), ("ok", "not a key"),
], ids=["space", "comma", "empty", "bad-key"])
def test_add_rejects_bad_input(alias, line):
    with pytest.raises(ConfigError):
        kh.add_text("", alias, line)


def test_file_helpers_and_ssh_honours_the_pin(tmp_path, sshd_server):
    path = tmp_path / "known_hosts"
    alias = "tether-fixture"
    kh.add_known_host(path, alias, sshd_server.host_key_pub)
    kh.add_known_host(path, alias, sshd_server.host_key_pub)  # idempotent
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kh.find_known_host(path, alias) == [" ".join(sshd_server.host_key_pub.split()[:2])]
    cmd = ["ssh", *_replace_known_hosts(sshd_server.ssh_args(), path),
           "-o", f"HostKeyAlias={alias}", f"{sshd_server.user}@{sshd_server.host}", "true"]
    assert subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    # A different pin for the alias makes ssh refuse the host.
    kh.add_known_host(path, alias, KEY_A)
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr
    assert kh.remove_known_host(path, alias) == 1
    assert kh.find_known_host(path, alias) == []


def _replace_known_hosts(args: list[str], path) -> list[str]:
    return [f"UserKnownHostsFile={path}" if a.startswith("UserKnownHostsFile=") else a
            for a in args]


def test_reset_known_hosts_keeps_a_backup(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"a {KEY_A}\n")
    backup = kh.reset_known_hosts(path)
    assert backup.read_text() == f"a {KEY_A}\n"
    assert path.read_text() == ""
    assert kh.reset_known_hosts(tmp_path / "absent") is None


@pytest.mark.parametrize(("line", "pin"), [
    (f"github.com {KEY_A} tether-pin\n", True),
    (f"{_hashed('x')} {KEY_A} tether-pin\n", True),
    (f"github.com {KEY_A}\n", False),
    (f"github.com {KEY_A} my note\n", False),
    (f"github.com {KEY_A} tether-pin extra\n", False),
    (f"@cert-authority *.corp {KEY_A}\n", False),
    (f"# github.com {KEY_A} tether-pin\n", False),
    ("\n", False),
], ids=["pin", "hashed-pin", "unmarked", "user-comment", "longer-comment", "cert-authority",
        "commented-out", "blank"])
def test_is_pin(line, pin):
    assert kh.is_pin(line) is pin


def test_reset_managed_only_removes_exactly_the_pins(tmp_path):
    path = tmp_path / "known_hosts"
    mine = f"# mine\nbox {KEY_B}\n\n{_hashed('h')} {KEY_B}\n"
    path.write_text(mine)
    kh.add_known_host(path, "github.com", KEY_A)
    kh.add_known_host(path, "tether-x", KEY_B)
    full = path.read_text()
    backup = kh.reset_known_hosts(path, managed_only=True)
    assert backup.read_text() == full
    assert path.read_text() == mine
    assert kh.remove_pins_text(full) == (mine, 2)
