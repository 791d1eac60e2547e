"""`tether keys ...` through the real entry point: output, exit codes, --json, files."""

from __future__ import annotations

import stat
import subprocess

import pytest


def test_generate_list_show_delete(cli, isolated):
    r = cli("keys", "generate", "id_ed25519", "-C", "ada@laptop")
    assert r.exit_code == 0, r.stderr
    assert "generated ed25519 256 key" in r.stdout and "fingerprint SHA256:" in r.stdout
    private = isolated.home / ".ssh" / "id_ed25519"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.with_suffix(".pub").stat().st_mode) == 0o644

    r = cli("keys", "generate", "deploy", "-t", "rsa", "-b", "3072", "--json")
    assert r.exit_code == 0
    data = r.json()
    assert (data["type"], data["bits"], data["encrypted"]) == ("rsa", 3072, False)

    listed = cli("keys", "list", "--json").json()
    assert [(k["name"], k["type"], k["bits"]) for k in listed] == [
        ("deploy", "rsa", 3072), ("id_ed25519", "ed25519", 256)]
    human = cli("keys", "list").stdout
    assert "id_ed25519" in human and listed[1]["fingerprint"] in human and "ada@laptop" in human

    shown = cli("keys", "show", "id_ed25519")
    assert shown.stdout.strip() == private.with_suffix(".pub").read_text().strip()
    assert cli("keys", "show", "id_ed25519", "--json").json()["public_key"].startswith(
        "ssh-ed25519 ")

    r = cli("keys", "delete", "deploy", "--json")
    assert r.exit_code == 0 and r.json()["deleted"] == "deploy"
    assert [k["name"] for k in cli("keys", "list", "--json").json()] == ["id_ed25519"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["generate", "k", "-t", "dsa"], 2, "unknown key type 'dsa'"),
    (["generate", "k", "-t", "rsa", "-b", "1024"], 2, "1024 bits is not a size for rsa"),
    (["generate", "../k"], 2, "contains a path separator"),
    (["generate", "config"], 2, "name of an OpenSSH file"),
    (["show", "nope"], 10, "no key named 'nope'"),
    (["delete", "nope"], 10, "no key named 'nope'"),
    (["reset"], 2, "say what to reset"),
    (["config", "remove", "nope"], 10, "no tether block named 'nope'"),
    (["config", "add", "x", "--host", "h", "--port", "70000"], 2, "out of range"),
    (["config", "add", "x", "--host", "h", "-o", "novalue"], 2, "not Key=Value"),
    (["config", "add", "x", "--host", "h", "--identity", "missing"], 10, "no key named"),
    (["config", "add", "x", "--host", "h", "-o", "Port=notanumber"], 2, "Bad port 'notanumber'"),
    (["config", "add", "x", "--host", "h", "-o", "Bogus=1"], 2, "Bad configuration option"),
    (["generate", "k", "-C", "two\nlines"], 2, "a key comment must be one line"),
    (["generate", "k", "--passphrase-file", "/nonexistent/pass"], 2,
     "could not read the key passphrase from /nonexistent/pass"),
], ids=["type", "bits", "separator", "reserved", "show-missing", "delete-missing",
        "reset-nothing", "remove-missing", "port", "option", "identity-missing",
        "openssh-bad-port", "openssh-unknown-option", "comment", "passphrase-file"])
def test_bad_input_is_one_clear_line_and_nothing_written(cli, isolated, args, code, message):
    r = cli("keys", *args)
    assert r.exit_code == code
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert len(r.stderr.splitlines()) == 2 and r.stderr.splitlines()[1].startswith("hint: ")
    assert "Traceback" not in r.stderr
    assert not (isolated.home / ".ssh").exists()


def test_a_non_utf8_passphrase_file_is_a_clear_error(cli, isolated, tmp_path):
    secret = tmp_path / "pass"
    secret.write_bytes(b"caf\xe9 secret\n")  # latin-1, not UTF-8
    r = cli("keys", "generate", "k", "--passphrase-file", str(secret))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: the key passphrase in {secret} is not UTF-8 text")
    assert "\nhint: save it as plain UTF-8 text" in r.stderr
    assert "secret" not in r.stderr.replace(str(secret), "")
    assert not (isolated.home / ".ssh").exists()


def test_config_add_refuses_a_user_config_openssh_rejects(cli, isolated):
    isolated.ssh_config.parent.mkdir(mode=0o700)
    broken = "Host a\n  User b\nThisIsNotAnOption 1\n"
    isolated.ssh_config.write_text(broken)
    r = cli("keys", "config", "add", "ok", "--host", "h", "--user", "u")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: OpenSSH already refuses the ssh config (line 3 of ")
    assert f"hint: fix line 3 of {isolated.ssh_config}" in r.stderr
    assert isolated.ssh_config.read_text() == broken
    assert not isolated.ssh_config.with_name("config.bak").exists()


@pytest.mark.parametrize(("main", "extra"), [
    ("Include extra\n", {"extra": "Host github.com\n  IdentityFile ~/.ssh/gh\n"}),
    ("Host *\n  User me\nInclude conf.d/*.conf\n",
     {"conf.d/10-gh.conf": "Host github.com\n  IdentityFile ~/.ssh/gh\n"}),
], ids=["relative", "glob"])
def test_delete_follows_includes(cli, isolated, main, extra):
    ssh = isolated.home / ".ssh"
    ssh.mkdir(mode=0o700)
    isolated.ssh_config.write_text(main)
    for name, text in extra.items():
        (ssh / name).parent.mkdir(exist_ok=True)
        (ssh / name).write_text(text)
    assert cli("keys", "generate", "gh").exit_code == 0
    r = cli("keys", "delete", "gh")
    assert r.exit_code == 2
    included = ssh / next(iter(extra))
    assert f"still uses the key gh (Host github.com in {included})" in r.stderr
    assert (ssh / "gh").exists() and (ssh / "gh.pub").exists()
    assert cli("keys", "delete", "gh", "--force").exit_code == 0
    assert not (ssh / "gh").exists()


def test_errors_in_json_mode_are_json(cli):
    r = cli("keys", "show", "nope", "--json")
    assert r.exit_code == 10
    assert r.json()["kind"] == "NotFoundError"


def test_existing_key_needs_overwrite(cli, isolated):
    assert cli("keys", "generate", "k").exit_code == 0
    before = (isolated.home / ".ssh" / "k").read_bytes()
    r = cli("keys", "generate", "k")
    assert r.exit_code == 2
    assert "exists already" in r.stderr and "--overwrite" in r.stderr
    assert (isolated.home / ".ssh" / "k").read_bytes() == before
    assert cli("keys", "generate", "k", "--overwrite").exit_code == 0
    assert (isolated.home / ".ssh" / "k").read_bytes() != before


def test_passphrase_from_file_env_and_never_argv(cli, isolated, tmp_path, monkeypatch):
    secret = tmp_path / "pass"
    secret.write_text("file secret\n")
    r = cli("keys", "generate", "f", "--passphrase-file", str(secret), "--json")
    assert r.json()["encrypted"] is True
    assert "file secret" not in r.stdout + r.stderr
    ok = subprocess.run(["ssh-keygen", "-y", "-P", "file secret", "-f",
                         str(isolated.home / ".ssh" / "f")], capture_output=True)
    assert ok.returncode == 0

    monkeypatch.setenv("TETHER_KEY_PASSPHRASE", "env secret")
    assert cli("keys", "generate", "e", "--json").json()["encrypted"] is True
    monkeypatch.delenv("TETHER_KEY_PASSPHRASE")

    # Not a terminal and nothing given: no passphrase, no prompt, no hang.
    assert cli("keys", "generate", "n", "--json").json()["encrypted"] is False
    # Asked for one without a terminal: a clear error, no key.
    r = cli("keys", "generate", "a", "--ask-passphrase")
    assert r.exit_code == 2 and "no key passphrase given" in r.stderr
    assert not (isolated.home / ".ssh" / "a").exists()
    # There is no option that takes the passphrase itself.
    assert cli("keys", "generate", "p", "--passphrase", "x").exit_code == 2


def test_config_add_list_remove_and_delete_guard(cli, isolated):
    isolated.ssh_config.parent.mkdir(mode=0o700)
    isolated.ssh_config.write_text("Host *\n  ServerAliveInterval 30\n")
    assert cli("keys", "generate", "id_ed25519").exit_code == 0
    r = cli("keys", "config", "add", "laptop", "--host", "tether-laptop", "--hostname",
            "127.0.0.1", "--user", "root", "--port", "2222", "--identity", "id_ed25519",
            "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["backup"].endswith("config.bak")
    text = isolated.ssh_config.read_text()
    assert text.index("Host tether-laptop") < text.index("Host *")
    assert f"IdentityFile {isolated.home}/.ssh/id_ed25519" in text

    listed = cli("keys", "config", "list", "--json").json()
    assert listed == [{"name": "laptop", "host": "tether-laptop", "options": [
        ["HostName", "127.0.0.1"], ["User", "root"], ["Port", "2222"],
        ["IdentityFile", f"{isolated.home}/.ssh/id_ed25519"], ["IdentitiesOnly", "yes"]]}]
    assert "tether-laptop" in cli("keys", "config", "list").stdout

    r = cli("keys", "delete", "id_ed25519")
    assert r.exit_code == 2 and "still uses the key id_ed25519 (Host tether-laptop)" in r.stderr
    assert (isolated.home / ".ssh" / "id_ed25519").exists()

    assert cli("keys", "config", "remove", "laptop").exit_code == 0
    assert isolated.ssh_config.read_text() == "Host *\n  ServerAliveInterval 30\n"
    assert cli("keys", "delete", "id_ed25519").exit_code == 0


def test_malformed_config_is_refused_untouched(cli, isolated):
    isolated.ssh_config.parent.mkdir(mode=0o700)
    garbage = b"Host a\n# >>> tether: x >>>\n\x00\xff binary"
    isolated.ssh_config.write_bytes(garbage)
    r = cli("keys", "config", "add", "laptop", "--host", "h")
    assert r.exit_code == 2
    assert "NUL bytes" in r.stderr and "did not change it" in r.stderr
    assert isolated.ssh_config.read_bytes() == garbage


def test_reset_flags_each_with_backup(cli, isolated):
    ssh = isolated.home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text("Host a\n")
    (ssh / "known_hosts").write_text("a ssh-ed25519 AAAA\n")
    r = cli("keys", "reset", "--known-hosts", "--json")
    assert r.exit_code == 0
    backup = r.json()["known_hosts"]["backup"]
    assert open(backup).read() == "a ssh-ed25519 AAAA\n"
    assert (ssh / "known_hosts").read_text() == ""
    assert (ssh / "config").read_text() == "Host a\n"  # untouched: its own flag
    r = cli("keys", "reset", "--ssh-config")
    assert r.exit_code == 0 and "reset ssh config (backup:" in r.stdout
    assert (ssh / "config").read_text() == ""


def test_reset_known_hosts_managed_only_keeps_the_users_entries(cli, isolated):
    from tether.ssh.known_hosts import add_known_host

    ssh = isolated.home / ".ssh"
    ssh.mkdir(mode=0o700)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    mine = f"# my hosts\nbox.example {key}\n@cert-authority *.corp {key}\n"
    (ssh / "known_hosts").write_text(mine)
    add_known_host(ssh / "known_hosts", "github.com", key)
    add_known_host(ssh / "known_hosts", "gitlab.com", key + " its comment")
    full = (ssh / "known_hosts").read_text()
    assert full.count("tether-pin") == 2
    r = cli("keys", "reset", "--known-hosts", "--managed-only", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["known_hosts"]["managed_only"] is True
    assert (ssh / "known_hosts").read_text() == mine
    assert open(r.json()["known_hosts"]["backup"]).read() == full
    r = cli("keys", "reset", "--known-hosts", "--managed-only")
    assert r.exit_code == 0 and "reset known hosts, tether's entries only (backup:" in r.stdout
    assert (ssh / "known_hosts").read_text() == mine


def _run_on_a_terminal(argv: list[str], env: dict, answers: list[tuple[bytes, bytes]],
                       timeout: float = 20.0) -> tuple[int, bytes]:
    """Run ``argv`` on a pseudo-terminal, answering each prompt; return (exit code, output)."""
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, so getpass reads from it
        os.execvpe(argv[0], argv, env)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if pending and pending[0][0] in output:
                os.write(fd, pending.pop(0)[1])
                output += b"\n"  # keep later prompts distinguishable from this one
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


@pytest.mark.timeout(60)
def test_prompts_for_a_passphrase_on_a_terminal(isolated, tether_bin):
    env = dict(isolated.env)
    code, out = _run_on_a_terminal(
        [tether_bin, "keys", "generate", "t"], env,
        [(b"key passphrase (empty for none): ", b"typed secret\n"),
         (b"same passphrase again: ", b"typed secret\n")])
    assert code == 0, out
    assert b"typed secret" not in out  # hidden input is not echoed
    key = isolated.home / ".ssh" / "t"
    ok = subprocess.run(["ssh-keygen", "-y", "-P", "typed secret", "-f", str(key)],
                        capture_output=True)
    assert ok.returncode == 0

    code, out = _run_on_a_terminal(
        [tether_bin, "keys", "generate", "u"], env,
        [(b"(empty for none): ", b"one\n"), (b"again: ", b"two\n")])
    assert code == 2 and b"the passphrases differ" in out
    assert not (isolated.home / ".ssh" / "u").exists()


@pytest.mark.timeout(60)
def test_read_only_ssh_dir_is_one_clear_error_and_untouched(isolated, tether_bin):
    """A real read-only ~/.ssh through bubblewrap (root ignores permission bits)."""
    ssh = isolated.home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text("Host a\n")

    def run(*args):
        return subprocess.run(["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                               "--ro-bind", str(ssh), str(ssh), tether_bin, *args],
                              capture_output=True, text=True, timeout=30, env=isolated.env)

    r = run("keys", "config", "add", "x", "--host", "h")
    assert r.returncode == 1
    assert r.stderr.startswith("error: could not write") and "Read-only file system" in r.stderr
    assert "hint: check that" in r.stderr and "Traceback" not in r.stderr
    r = run("keys", "generate", "k")
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    assert sorted(p.name for p in ssh.iterdir()) == ["config"]
    assert (ssh / "config").read_text() == "Host a\n"


@pytest.mark.timeout(60)
def test_deleting_from_a_read_only_ssh_dir_is_one_error_with_a_hint(cli, isolated, tether_bin):
    ssh = isolated.home / ".ssh"
    assert cli("keys", "generate", "k").exit_code == 0
    r = subprocess.run(["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                        "--ro-bind", str(ssh), str(ssh), tether_bin, "keys", "delete", "k"],
                       capture_output=True, text=True, timeout=30, env=isolated.env)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: could not delete") and "Read-only file system" in lines[0]
    assert lines[1] == f"hint: check that {ssh} is writable (not a read-only mount) and run " \
                       "the command again"
    assert len(lines) == 2
    assert sorted(p.name for p in ssh.iterdir()) == ["k", "k.pub"]
