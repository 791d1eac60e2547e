"""SSH keys: validation (pure), generation checked by the real ssh-keygen, list/show/delete."""

from __future__ import annotations

import stat
import subprocess

import pytest

from tether.errors import (AlreadyExistsError, ConfigError, InUseError, NotFoundError,
                           UsageError)
from tether.ssh import keys
from tether.ssh.config import ManagedBlock, upsert_block


@pytest.mark.parametrize(("key_type", "bits", "expected"), [
    ("ed25519", None, ("ed25519", 256)),
    ("ED25519", 256, ("ed25519", 256)),
    ("ssh-ed25519", None, ("ed25519", 256)),
    ("rsa", None, ("rsa", 3072)),
    ("rsa", 2048, ("rsa", 2048)),
    ("rsa", 4096, ("rsa", 4096)),
    ("ecdsa", None, ("ecdsa", 256)),
    ("ecdsa", 384, ("ecdsa", 384)),
    ("ecdsa", 521, ("ecdsa", 521)),
], ids=lambda v: str(v))
def test_type_and_bits_accepted(key_type, bits, expected):
    assert keys.normalize_type_and_bits(key_type, bits) == expected


@pytest.mark.parametrize(("key_type", "bits", "message"), [
    ("dsa", None, "unknown key type 'dsa'"),
    ("", None, "unknown key type"),
    ("rsa", 1024, "1024 bits is not a size for rsa"),
    ("rsa", 2047, "2047 bits is not a size for rsa"),
    ("ecdsa", 512, "512 bits is not a size for ecdsa"),
    ("ed25519", 4096, "4096 bits is not a size for ed25519"),
], ids=["dsa", "empty", "rsa-1024", "rsa-2047", "ecdsa-512", "ed25519-4096"])
def test_type_and_bits_rejected(key_type, bits, message):
    with pytest.raises(UsageError) as err:
        keys.normalize_type_and_bits(key_type, bits)
    assert message in err.value.message
    assert err.value.hint


@pytest.mark.parametrize("name", ["id_ed25519", "github", "work.key", "a-b_c@host+1", "x"])
def test_names_accepted(name):
    assert keys.validate_name(name) == name


@pytest.mark.parametrize(("name", "message"), [
    ("../evil", "path separator"),
    ("sub/key", "path separator"),
    ("back\\slash", "path separator"),
    ("key.pub", "ends in .pub"),
    ("", "not allowed"),
    (".hidden", "not allowed"),
    ("-flag", "not allowed"),
    ("with space", "not allowed"),
    ("config", "OpenSSH file"),
    ("known_hosts", "OpenSSH file"),
    ("authorized_keys", "OpenSSH file"),
], ids=lambda v: v or "empty")
def test_names_rejected(name, message):
    with pytest.raises(UsageError) as err:
        keys.validate_name(name)
    assert message in err.value.message


def _keygen_list(path) -> list[str]:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out  # [bits, fingerprint, comment..., (TYPE)]


@pytest.mark.parametrize(("key_type", "bits", "keygen_type"), [
    ("ed25519", None, "(ED25519)"),
    ("rsa", 2048, "(RSA)"),
    ("ecdsa", 256, "(ECDSA)"),
    ("ecdsa", 384, "(ECDSA)"),
    ("ecdsa", 521, "(ECDSA)"),
], ids=["ed25519", "rsa2048", "ecdsa256", "ecdsa384", "ecdsa521"])
def test_generated_keys_are_what_ssh_keygen_reads(tmp_path, key_type, bits, keygen_type):
    info = keys.generate_key("k", type=key_type, bits=bits, comment="ada@laptop",
                             directory=tmp_path)
    for path in (info.path, info.public_path):
        listed = _keygen_list(path)
        assert listed[0] == str(info.bits)
        assert listed[1] == info.fingerprint
        assert listed[-1] == keygen_type
    assert _keygen_list(info.public_path)[2] == "ada@laptop"
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(info.public_path.stat().st_mode) == 0o644
    # The private key really is the public key's other half.
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(info.path)], capture_output=True,
                             text=True, check=True).stdout.split()[:2]
    assert derived == info.public_path.read_text().split()[:2]
    assert info.encrypted is False


def test_passphrase_encrypts_the_private_key(tmp_path):
    info = keys.generate_key("k", passphrase="correct horse", directory=tmp_path)
    assert info.encrypted is True
    assert keys.get_key("k", tmp_path).encrypted is True
    wrong = subprocess.run(["ssh-keygen", "-y", "-P", "wrong", "-f", str(info.path)],
                           capture_output=True, text=True)
    assert wrong.returncode != 0
    right = subprocess.run(["ssh-keygen", "-y", "-P", "correct horse", "-f", str(info.path)],
                           capture_output=True, text=True)
    assert right.returncode == 0
    assert right.stdout.split()[:2] == info.public_path.read_text().split()[:2]


def test_refuses_to_overwrite_and_leaves_the_key_alone(tmp_path):
    first = keys.generate_key("k", directory=tmp_path)
    before = (first.path.read_bytes(), first.public_path.read_bytes())
    with pytest.raises(AlreadyExistsError) as err:
        keys.generate_key("k", directory=tmp_path)
    assert "--overwrite" in err.value.hint
    assert (first.path.read_bytes(), first.public_path.read_bytes()) == before
    replaced = keys.generate_key("k", directory=tmp_path, overwrite=True)
    assert replaced.fingerprint != first.fingerprint


def test_a_stray_public_half_also_blocks_generation(tmp_path):
    (tmp_path / "k.pub").write_text("ssh-ed25519 AAAA old\n")
    with pytest.raises(AlreadyExistsError):
        keys.generate_key("k", directory=tmp_path)
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"type": "dsa"}, UsageError),
    ({"type": "rsa", "bits": 1024}, UsageError),
    ({"comment": "two\nlines"}, UsageError),
], ids=["type", "bits", "comment"])
def test_bad_input_writes_nothing(tmp_path, kwargs, error):
    with pytest.raises(error):
        keys.generate_key("k", directory=tmp_path / "ssh", **kwargs)
    assert not (tmp_path / "ssh").exists()


def test_new_ssh_dir_is_private(tmp_path):
    keys.generate_key("k", directory=tmp_path / ".ssh")
    assert stat.S_IMODE((tmp_path / ".ssh").stat().st_mode) == 0o700


def test_list_skips_what_is_not_a_key_pair(tmp_path):
    keys.generate_key("b", directory=tmp_path, comment="")
    keys.generate_key("a", type="ecdsa", directory=tmp_path)
    (tmp_path / "config").write_text("Host x\n")
    (tmp_path / "lonely.pub").write_text("ssh-ed25519 AAAA\n")
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "notakey").write_text("hello")
    (tmp_path / "notakey.pub").write_text("hello")
    listed = keys.list_keys(tmp_path)
    assert [(k.name, k.type, k.comment) for k in listed] == [
        ("a", "ecdsa", keys.default_comment()), ("b", "ed25519", "")]


def test_list_of_a_missing_dir_is_empty(tmp_path):
    assert keys.list_keys(tmp_path / "nope") == []


def test_get_unknown_key_is_not_found(tmp_path):
    with pytest.raises(NotFoundError) as err:
        keys.get_key("nope", tmp_path)
    assert "tether keys generate" in err.value.hint


def test_delete_refuses_a_key_the_config_uses(tmp_path):
    info = keys.generate_key("k", directory=tmp_path)
    config = tmp_path / "config"
    upsert_block(ManagedBlock("laptop", "laptop", (("IdentityFile", str(info.path)),)), config)
    with pytest.raises(InUseError) as err:
        keys.delete_key("k", directory=tmp_path, config_path=config)
    assert "Host laptop" in err.value.message and "--force" in err.value.hint
    assert info.path.exists() and info.public_path.exists()
    keys.delete_key("k", directory=tmp_path, config_path=config, force=True)
    assert not info.path.exists() and not info.public_path.exists()


def test_delete_sees_tilde_paths_in_user_sections(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    info = keys.generate_key("work", directory=tmp_path / ".ssh")
    config = tmp_path / ".ssh" / "config"
    config.write_text("Host work\n  IdentityFile ~/.ssh/work\n")
    with pytest.raises(InUseError):
        keys.delete_key("work", directory=tmp_path / ".ssh", config_path=config)
    keys.delete_key("work", directory=tmp_path / ".ssh", config_path=config, force=True)
    assert not info.path.exists()


def test_fingerprint_matches_ssh_keygen_for_a_foreign_key(tmp_path):
    path = tmp_path / "foreign"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)],
                   check=True)
    line = path.with_suffix(".pub").read_text()
    assert keys.fingerprint_of_public_key(line) == _keygen_list(path.with_suffix(".pub"))[1]
    assert keys.describe_public_key(line)[:2] == ("rsa", 2048)
    # A key made by ssh-keygen is listed like ours.
    assert keys.get_key("foreign", tmp_path).fingerprint == _keygen_list(path)[1]


ED25519_BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.mark.parametrize("line", ["", "ssh-ed25519", "ssh-ed25519 !!!notbase64",
                                  f"ssh-rsa {ED25519_BLOB}"],
                         ids=["empty", "no-blob", "bad-base64", "type-mismatch"])
def test_bad_public_key_lines_are_config_errors(line):
    with pytest.raises(ConfigError):
        keys.fingerprint_of_public_key(line)


def test_public_api_exports_the_key_functions():
    import tether

    for name in ("generate_key", "list_keys", "get_key", "delete_key",
                 "fingerprint_of_public_key", "upsert_block", "add_known_host"):
        assert name in tether.__all__ and callable(getattr(tether, name))
    assert tether.generate_key is keys.generate_key
