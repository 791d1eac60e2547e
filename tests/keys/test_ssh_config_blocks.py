"""Managed Host blocks in ~/.ssh/config: pure text transforms (table-driven) and the file shell."""

from __future__ import annotations

import stat
import subprocess

import pytest

from tether.errors import ConfigError, UsageError
from tether.ssh import config as c

LAPTOP = c.ManagedBlock("laptop", "tether-laptop",
                        (("HostName", "127.0.0.1"), ("User", "root"), ("Port", "2222")))
LAPTOP_TEXT = ("# >>> tether: laptop >>>\nHost tether-laptop\n    HostName 127.0.0.1\n"
               "    User root\n    Port 2222\n# <<< tether: laptop <<<\n")

# name -> (original user file, expected after upsert of LAPTOP)
UPSERT_CASES = {
    "empty": ("", LAPTOP_TEXT),
    "user-host-only": ("Host work\n  User me\n", "Host work\n  User me\n\n" + LAPTOP_TEXT),
    "no-trailing-newline": ("Host work\n  User me", "Host work\n  User me\n\n" + LAPTOP_TEXT),
    "before-host-star": ("Host work\n  User me\n\nHost *\n  ServerAliveInterval 30\n",
                         "Host work\n  User me\n\n" + LAPTOP_TEXT +
                         "\nHost *\n  ServerAliveInterval 30\n"),
    "before-match": ("Match host foo\n  User x\n",
                     LAPTOP_TEXT + "\nMatch host foo\n  User x\n"),
    "keeps-comment-with-host-star": ("# defaults\nHost *\n  User me\n",
                                     LAPTOP_TEXT + "\n# defaults\nHost *\n  User me\n"),
    "host-equals-star": ("Host=*\n  User me\n", LAPTOP_TEXT + "\nHost=*\n  User me\n"),
    "global-options-first": ("IdentitiesOnly yes\n\nHost *\n  User me\n",
                             "IdentitiesOnly yes\n\n" + LAPTOP_TEXT + "\nHost *\n  User me\n"),
    "wildcard-suffix-is-not-catch-all": ("Host *.corp\n  User me\n",
                                         "Host *.corp\n  User me\n\n" + LAPTOP_TEXT),
}


@pytest.mark.parametrize("case", list(UPSERT_CASES))
def test_upsert_inserts_where_it_takes_effect(case):
    original, expected = UPSERT_CASES[case]
    assert c.upsert_text(original, LAPTOP) == expected


@pytest.mark.parametrize("case", [k for k in UPSERT_CASES if k != "no-trailing-newline"])
def test_add_then_remove_restores_every_byte(case):
    original, _ = UPSERT_CASES[case]
    added = c.upsert_text(original, LAPTOP)
    removed, found = c.remove_text(added, "laptop")
    assert found
    assert removed == original


def test_update_replaces_in_place_and_keeps_neighbours():
    other = c.ManagedBlock("other", "o", (("User", "x"),))
    text = c.upsert_text(c.upsert_text("Host a\n  User b\n", LAPTOP), other)
    changed = c.ManagedBlock("laptop", "tether-laptop", (("HostName", "10.0.0.1"),))
    updated = c.upsert_text(text, changed)
    assert updated.index("laptop") < updated.index("other")
    assert "10.0.0.1" in updated and "2222" not in updated
    assert updated.replace(c.render_block(changed), c.render_block(LAPTOP)) == text


def test_upsert_is_idempotent():
    once = c.upsert_text("Host a\n", LAPTOP)
    assert c.upsert_text(once, LAPTOP) == once


def test_parse_round_trip_with_quoted_values():
    block = c.ManagedBlock("q", "a b", (("IdentityFile", "/path with space/key"),
                                        ("User", "git")))
    text = c.upsert_text("", block)
    assert 'IdentityFile "/path with space/key"' in text
    assert c.parse_blocks(text) == [block]


MALFORMED = {
    "begin-without-end": "# >>> tether: a >>>\nHost a\n",
    "end-without-begin": "Host a\n# <<< tether: a <<<\n",
    "mismatched-names": "# >>> tether: a >>>\nHost a\n# <<< tether: b <<<\n",
    "nested": ("# >>> tether: a >>>\n# >>> tether: b >>>\n# <<< tether: b <<<\n"
               "# <<< tether: a <<<\n"),
    "duplicate": ("# >>> tether: a >>>\nHost a\n# <<< tether: a <<<\n"
                  "# >>> tether: a >>>\nHost a\n# <<< tether: a <<<\n"),
    "mangled-marker": "# >>> tether a\nHost a\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_markers_are_refused(case):
    with pytest.raises(ConfigError) as err:
        c.upsert_text(MALFORMED[case], LAPTOP)
    assert "did not change the file" in err.value.hint


@pytest.mark.parametrize(("block", "message"), [
    (c.ManagedBlock("bad name", "h"), "block name"),
    (c.ManagedBlock("ok", ""), "Host"),
    (c.ManagedBlock("ok", "h\nHost *"), "cannot be written"),
    (c.ManagedBlock("ok", "h", (("User", 'a"b'),)), "cannot be written"),
    (c.ManagedBlock("ok", "h", (("User", ""),)), "cannot be written"),
    (c.ManagedBlock("ok", "h", (("Match", "all"),)), "not an ssh config option"),
    (c.ManagedBlock("ok", "h", (("Bad Key", "x"),)), "not an ssh config option"),
], ids=["name", "empty-host", "newline", "quote", "empty-value", "match", "key-space"])
def test_invalid_blocks_are_usage_errors(block, message):
    with pytest.raises(UsageError) as err:
        c.upsert_text("", block)
    assert message in err.value.message


@pytest.mark.parametrize(("text", "hosts"), [
    ("Host a\n  IdentityFile ~/.ssh/k\n", ["a"]),
    ("IdentityFile %d/.ssh/k\n", ["(global)"]),
    ("Host a\n  IdentityFile /other\nHost b c\n  IdentityFile=/home/u/.ssh/k\n", ["b c"]),
    ('Host a\n  IdentityFile "/home/u/.ssh/k"\n', ["a"]),
    ("Host a\n  # IdentityFile /home/u/.ssh/k\n", []),
], ids=["tilde", "percent-d", "equals", "quoted", "commented"])
def test_identity_hosts(text, hosts):
    from pathlib import Path

    assert c.identity_hosts(text, Path("/home/u/.ssh/k"), Path("/home/u")) == hosts


# -- the file shell ---------------------------------------------------------------------------


def test_file_upsert_keeps_backup_mode_and_bytes(tmp_path):
    path = tmp_path / ".ssh" / "config"
    path.parent.mkdir(mode=0o700)
    original = "# mine\r\nHost work\n\tUser me   \n\nHost *\n  ForwardAgent no\n"
    path.write_text(original)
    backup = c.upsert_block(LAPTOP, path)
    assert backup == path.with_name("config.bak")
    assert backup.read_bytes() == original.encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert c.list_blocks(path) == [LAPTOP]
    assert c.upsert_block(LAPTOP, path) is None  # unchanged: no write, no new backup
    assert c.remove_block("laptop", path)
    assert path.read_bytes() == original.encode()
    assert not c.remove_block("laptop", path)


def test_ssh_reads_the_written_block(tmp_path):
    path = tmp_path / "config"
    path.write_text("Host *\n  User fallback\n  Port 1\n")
    c.upsert_block(LAPTOP, path)
    out = subprocess.run(["ssh", "-G", "-F", str(path), "tether-laptop"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert {"hostname 127.0.0.1", "user root", "port 2222"} <= set(out)


def test_symlinked_config_is_edited_where_it_points(tmp_path):
    real = tmp_path / "dotfiles" / "ssh_config"
    real.parent.mkdir()
    real.write_text("Host a\n")
    link = tmp_path / "config"
    link.symlink_to(real)
    c.upsert_block(LAPTOP, link)
    assert link.is_symlink()
    assert "tether-laptop" in real.read_text()


@pytest.mark.parametrize("data", [b"Host a\n\x00\x01\x02garbage", b"Host \xff\xfe\n"],
                         ids=["nul-bytes", "not-utf8"])
def test_binary_garbage_is_refused_untouched(tmp_path, data):
    path = tmp_path / "config"
    path.write_bytes(data)
    with pytest.raises(ConfigError):
        c.upsert_block(LAPTOP, path)
    assert path.read_bytes() == data
    assert not path.with_name("config.bak").exists()


def test_unbalanced_file_is_refused_untouched(tmp_path):
    path = tmp_path / "config"
    path.write_text(MALFORMED["begin-without-end"])
    with pytest.raises(ConfigError) as err:
        c.remove_block("a", path)
    assert "line 1" in err.value.message
    assert path.read_text() == MALFORMED["begin-without-end"]


def test_read_only_ssh_dir_is_a_clear_error_and_untouched(tmp_path):
    """A real read-only ~/.ssh (bubblewrap read-only bind: root ignores permission bits)."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "config").write_text("Host a\n")
    script = ("import sys\nfrom pathlib import Path\nfrom tether.ssh import config as c\n"
              "from tether.errors import LocalIOError\n"
              "try:\n    c.upsert_block(c.ManagedBlock('x', 'x', (('User', 'u'),)),"
              f" Path({str(ssh / 'config')!r}))\n"
              "except LocalIOError as e:\n    print(e.message); print(e.hint); sys.exit(3)\n")
    import sys

    proc = subprocess.run(["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                           "--ro-bind", str(ssh), str(ssh), sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert "Read-only file system" in proc.stdout
    assert "writable" in proc.stdout
    assert (ssh / "config").read_text() == "Host a\n"
    assert sorted(p.name for p in ssh.iterdir()) == ["config"]


def test_reset_keeps_a_timestamped_backup(tmp_path):
    path = tmp_path / "config"
    path.write_text("Host a\n  User b\n")
    c.upsert_block(LAPTOP, path)
    full = path.read_text()
    backup = c.reset_config(path, managed_only=True)
    assert backup.read_text() == full
    assert path.read_text() == "Host a\n  User b\n"
    backup2 = c.reset_config(path)
    assert backup2 != backup and backup2.read_text() == "Host a\n  User b\n"
    assert path.read_text() == ""
    assert c.reset_config(tmp_path / "absent") is None


def test_a_directory_in_place_of_the_config_is_a_config_error(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError) as err:
        c.read_config(tmp_path / "dir")
    assert "is a directory" in err.value.message


def test_command_options_are_written_raw_and_ssh_runs_them(tmp_path):
    # OpenSSH hands ProxyCommand's rest-of-line to the shell: quotes must not be added, and
    # the command's own quotes must survive a write/parse round trip.
    command = "\"/opt/my tools/tether\" proxy laptop --flag 'x y'"
    block = c.ManagedBlock("laptop", "tether-laptop", (("ProxyCommand", command),
                                                       ("User", "me too")))
    text = c.upsert_text("", block)
    assert f"    ProxyCommand {command}\n" in text and '    User "me too"\n' in text
    assert c.parse_blocks(text) == [block]
    path = tmp_path / "config"
    c.upsert_block(block, path)
    out = subprocess.run(["ssh", "-G", "-F", str(path), "tether-laptop"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert f"proxycommand {command}" in out


# -- OpenSSH checks every candidate before it replaces the file ------------------------------


@pytest.mark.parametrize(("option", "complaint"), [
    (("Port", "notanumber"), "Bad port 'notanumber'"),
    (("Bogus", "1"), "Bad configuration option: bogus"),
], ids=["bad-port", "unknown-option"])
def test_a_block_openssh_refuses_is_not_written(tmp_path, option, complaint):
    path = tmp_path / "config"
    original = "Host work\n  User me\n"
    path.write_text(original)
    with pytest.raises(ConfigError) as err:
        c.upsert_block(c.ManagedBlock("ok", "h", (option,)), path)
    assert "OpenSSH refuses" in err.value.message and complaint in err.value.message
    assert "was not changed" in err.value.hint
    assert path.read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]  # no .bak, no temp file


@pytest.mark.parametrize(("user_text", "line"), [
    ("Host\n  User x\n", 1),
    ('Host a\n  HostName "unterminated\n', 2),
    ("Host a\n  User b\nThisIsNotAnOption 1\n", 3),
], ids=["host-without-pattern", "unterminated-quote", "unknown-option"])
def test_a_config_openssh_already_refuses_is_not_edited(tmp_path, user_text, line):
    path = tmp_path / "config"
    path.write_text(user_text)
    with pytest.raises(ConfigError) as err:
        c.upsert_block(LAPTOP, path)
    assert "already refuses" in err.value.message
    assert err.value.hint.startswith(f"fix line {line} of {path}")
    assert path.read_text() == user_text
    # Removing a block is checked the same way.
    path.write_text(LAPTOP_TEXT + user_text)
    with pytest.raises(ConfigError, match="already refuses"):
        c.remove_block("laptop", path)
    assert path.read_text() == LAPTOP_TEXT + user_text


def test_a_bad_line_in_an_included_file_is_named(tmp_path):
    extra = tmp_path / "extra"
    extra.write_text("Host x\n  User y\n  Port notanumber\n")
    path = tmp_path / "config"
    path.write_text(f"Include {extra}\n")
    with pytest.raises(ConfigError) as err:
        c.upsert_block(LAPTOP, path)
    assert err.value.hint.startswith(f"fix line 3 of {extra}")
    assert path.read_text() == f"Include {extra}\n"


def test_a_valid_write_costs_one_ssh_run(tmp_path, monkeypatch):
    import subprocess as sp

    calls = []
    real_run = sp.run

    def counting_run(argv, *a, **k):
        calls.append(argv)
        return real_run(argv, *a, **k)

    monkeypatch.setattr(sp, "run", counting_run)
    path = tmp_path / "config"
    path.write_text("Host *\n  User me\n")
    c.upsert_block(LAPTOP, path)
    assert [argv[1:3] for argv in calls] == [["-G", "-F"]]
    assert "tether-laptop" in calls[0]  # the block's own section is the one applied
    assert c.list_blocks(path) == [LAPTOP]


def test_without_an_ssh_binary_the_check_is_skipped(tmp_path, monkeypatch):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "ssh"
                        else real_which(name, *a, **k))
    path = tmp_path / "config"
    c.upsert_block(c.ManagedBlock("ok", "h", (("Port", "notanumber"),)), path)
    assert "Port notanumber" in path.read_text()


@pytest.mark.parametrize(("stderr", "expected"), [
    ("/h/.ssh/.config.x line 2: Bad port 'x'.\n/h/.ssh/.config.x: terminating, 1 bad "
     "configuration options\n", c.Complaint("/h/.ssh/.config.x", 2, "Bad port 'x'")),
    ("cfg: line 7: Bad configuration option: bogus\ncfg: terminating, 1 bad configuration "
     "options\n", c.Complaint("cfg", 7, "Bad configuration option: bogus")),
    ("Pseudo-terminal will not be allocated because stdin is not a terminal.\n"
     "percent_expand: unknown key %Z\n", c.Complaint(None, None, "percent_expand: unknown key %Z")),
    ("", c.Complaint(None, None, "ssh -G failed")),
], ids=["no-colon", "colon", "no-line", "silent"])
def test_parse_complaint(stderr, expected):
    assert c.parse_complaint(stderr) == expected


# -- Include is followed when deciding whether a key is in use -------------------------------


INCLUDED = {
    "/h/.ssh/extra": "Host gh\n  IdentityFile ~/.ssh/k\n",
    "/h/.ssh/plain": "IdentityFile ~/.ssh/k\nHost other\n  User x\n",
}


@pytest.mark.parametrize(("text", "hosts"), [
    ("Include extra\n", ["gh in /h/.ssh/extra"]),
    ("Host outer\n  Include plain\n", ["outer in /h/.ssh/plain"]),
    ("Include plain\nIdentityFile /other\n", ["(global) in /h/.ssh/plain"]),
    ("Include missing\n", []),
], ids=["own-section", "inherits-section", "no-leak", "missing"])
def test_identity_hosts_follows_includes(text, hosts):
    from pathlib import Path

    def load(argument):
        name = f"/h/.ssh/{argument}"
        return [(name, INCLUDED[name])] if name in INCLUDED else []

    assert c.identity_hosts(text, Path("/h/.ssh/k"), Path("/h"), load) == hosts


def test_include_files_resolves_like_openssh(tmp_path):
    ssh, home = tmp_path / ".ssh", tmp_path
    (ssh / "conf.d").mkdir(parents=True)
    for name in ("conf.d/b", "conf.d/a", "extra", "elsewhere"):
        (ssh / name).write_text("")
    got = c.include_files(f'conf.d/* "extra" ~/.ssh/elsewhere {ssh}/none*', ssh, home)
    assert got == [ssh / "conf.d/a", ssh / "conf.d/b", ssh / "extra", ssh / "elsewhere"]
