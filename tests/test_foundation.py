"""The foundation every capability stands on: errors, paths, secrets, the CLI shell, doctor."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import tether
from tether import errors, paths, secrets
from tether.cli.main import EXIT_CODES, exit_code_for
from tether.host import platform as plat


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.TetherError("x"), 1),
        (errors.UsageError("x"), 2),
        (errors.ConfigError("x"), 2),
        (errors.AlreadyExistsError("x"), 2),
        (errors.PartialFailureError("x"), 3),
        (errors.NotFoundError("x"), 10),
        (errors.LockedError("x"), 11),
        (errors.AuthError("x"), 12),
        (errors.HostKeyMismatchError("x"), 12),
        (errors.ConnectError("x"), 1),
        (errors.SystemDependencyError("x"), 1),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_exit_code_table(exc, code):
    assert exit_code_for(exc) == code


def test_exit_code_table_is_documented():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")).read()
    for cls, code in EXIT_CODES.items():
        assert f"`{cls.__name__}`" in doc and f"| {code} " in doc


PUBLIC_API = {
    "AsyncSandboxClient", "ConnectionString", "CopyResult", "ExecResult", "Forwarding",
    "HostHandle", "HostProfile", "HostStatus", "KeyInfo", "ManagedBlock", "RemoteKernelSpec",
    "SandboxClient", "SyncResult", "TetherError", "TetherSSHProvisioner", "WarmPool",
    "__version__", "add_kernel", "add_known_host", "attach_kernel", "connect", "copy",
    "copy_async", "delete_kernel", "delete_key", "down", "edit_kernel", "exec", "exec_async",
    "fingerprint_of_public_key", "forward", "forward_async", "generate_key",
    "get_git_identity", "get_key", "host_status", "install_code_server", "list_blocks",
    "list_kernels", "list_keys", "login_forge", "pair_code", "reconcile", "remove_block",
    "remove_known_host", "run_checks", "sandbox_probe", "sandbox_run", "set_git_identity",
    "setup_forge", "snapshot_diff", "snapshot_forget", "snapshot_list", "snapshot_prune",
    "snapshot_pull", "snapshot_push", "snapshot_repair", "snapshot_verify", "status", "status_async",
    "sync_conflicts", "sync_list", "sync_once", "sync_once_async", "sync_resolve",
    "sync_status", "sync_stop", "sync_watch", "up", "upsert_block",
}


def test_public_api_is_frozen():
    # Changing the public surface is a decision: update PUBLIC_API on purpose, in the same commit.
    assert set(tether.__all__) == PUBLIC_API
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name
    # `import tether` stays cheap: the CLI fast paths depend on it.
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, tether; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True).stdout.split()
    heavy = {"asyncssh", "typer", "rich", "fastapi", "boto3", "httpx", "websockets"}
    assert heavy.isdisjoint(loaded), heavy.intersection(loaded)


def test_tether_home_relocates_all_dirs(isolated):
    for d in (paths.config_dir(), paths.state_dir(), paths.cache_dir()):
        assert str(d).startswith(str(isolated.tether_home))


def test_atomic_write_modes_and_backup(tmp_path):
    target = tmp_path / "sub" / "file"
    paths.atomic_write(target, "one", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    backup = paths.atomic_write(target, "two", mode=0o644, backup=True)
    assert target.read_text() == "two" and backup.read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_failure_leaves_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("keep")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(errors.LocalIOError, match="No space"):
        paths.atomic_write(target, "new")
    assert target.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_file_secret_backend_is_private(isolated):
    backend = secrets.default_backend()
    assert backend.name == "file"
    secrets.set_secret("github:token", "s3cret")
    assert secrets.get_secret("github:token") == "s3cret"
    path = paths.config_dir() / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secrets.delete_secret("github:token") is True
    assert secrets.get_secret("github:token") is None
    assert secrets.delete_secret("github:token") is False


def test_read_secret_order_file_then_env(isolated, tmp_path, monkeypatch):
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    monkeypatch.setenv("X_TOKEN", "from-env")
    assert secrets.read_secret(secrets.SecretSource("token", file=f, env="X_TOKEN")) == "from-file"
    assert secrets.read_secret(secrets.SecretSource("token", env="X_TOKEN")) == "from-env"
    monkeypatch.delenv("X_TOKEN")
    with pytest.raises(errors.UsageError) as info:
        secrets.read_secret(secrets.SecretSource("token", env="X_TOKEN"))
    assert "X_TOKEN" in info.value.hint


def test_broken_secrets_file_is_config_error(isolated):
    path = paths.config_dir() / "secrets.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(errors.ConfigError):
        secrets.get_secret("x")


@pytest.mark.parametrize(
    ("environ", "files", "kind"),
    [
        ({}, {}, plat.PlatformKind.LINUX),
        ({"COLAB_RELEASE_TAG": "release-colab_2026"}, {}, plat.PlatformKind.COLAB),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, plat.PlatformKind.KAGGLE),
        ({}, {"kaggle/input/x": ""}, plat.PlatformKind.KAGGLE),
    ],
    ids=["generic", "colab", "kaggle-env", "kaggle-dir"],
)
def test_platform_detection(tmp_path, environ, files, kind):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=ubuntu\nID_LIKE=debian\n')
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    info = plat.detect(environ, root=tmp_path, platform="linux")
    assert info.kind is kind
    assert info.package_manager == "apt"
    assert (info.remote_shell_policy is not None) == (kind is plat.PlatformKind.COLAB)


def test_install_commands():
    info = plat.PlatformInfo(plat.PlatformKind.LINUX, "debian", "apt", False, None)
    assert plat.install_command(info, "sshd") == "sudo apt-get install -y openssh-server"
    assert plat.install_command(info, "bwrap") == "sudo apt-get install -y bubblewrap"
    mac = plat.PlatformInfo(plat.PlatformKind.MACOS, None, "brew", False, None)
    assert plat.install_command(mac, "bwrap") is None


def test_cli_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tether {tether.__version__}"


def test_cli_unknown_command_is_usage_error(cli):
    result = cli("no-such-command")
    assert result.exit_code == 2
    assert result.stderr == "error: no such command 'no-such-command'\nhint: run `tether --help`\n"


@pytest.mark.parametrize(("args", "message", "help_of"), [
    (["keys", "generate"], "missing argument 'name'", "tether keys generate"),
    (["keys", "generate", "k", "-b", "abc"], "invalid value for '--bits' / '-b'",
     "tether keys generate"),
    (["keys", "generate", "k", "--bogus"], "no such option: --bogus", "tether keys generate"),
    (["keys", "genrate"], "no such command 'genrate'. Did you mean 'generate'?", "tether keys"),
    (["keys", "config", "add", "x"], "missing option '--host'", "tether keys config add"),
    (["git", "login"], "missing argument 'provider'", "tether git login"),
    (["doctor", "extra"], "got unexpected extra argument(s) (extra)", "tether doctor"),
    (["--bogus"], "no such option: --bogus", "tether"),
], ids=["missing-argument", "bad-int", "unknown-option", "unknown-command", "missing-option",
        "git-group", "extra-argument", "root-option"])
def test_usage_errors_are_one_line_and_a_hint(cli, args, message, help_of):
    result = cli(*args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: {message}")
    assert lines[1] == f"hint: run `{help_of} --help`"
    assert result.stdout == ""


def test_a_group_without_a_command_shows_its_help(cli):
    result = cli("keys")
    assert "Usage: tether keys" in result.stdout + result.stderr
    assert "error:" not in result.stderr


def test_doctor_json_names_every_check(cli):
    result = cli("doctor", "--json")
    data = json.loads(result.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"ssh", "sshd", "scp", "rsync", "git", "bwrap", "keyring", "python"} <= names
    assert data["platform_kind"] in {k.value for k in plat.PlatformKind}
    for check in data["checks"]:
        assert check["status"] in {"ok", "missing", "warn"}
        if check["status"] == "missing":
            assert check["fix"]
    assert result.exit_code == (0 if data["ok"] else 1)


def test_doctor_reports_missing_tool_with_install_command(cli, monkeypatch, tmp_path):
    # A PATH without rsync: doctor names it and the exact command that installs it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ssh", "ssh-keygen", "scp", "git", "bwrap"):
        real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if real:
            (bindir / tool).symlink_to(real)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(plat, "find_program",
                        lambda name: str(bindir / name) if (bindir / name).exists() else None)
    result = cli("doctor", "--json")
    data = json.loads(result.stdout)
    rsync = next(c for c in data["checks"] if c["name"] == "rsync")
    assert rsync["status"] == "missing"
    assert "rsync" in rsync["fix"] and "install" in rsync["fix"]
    assert result.exit_code == 1


def test_tether_error_is_one_line_with_hint_not_traceback(isolated, tether_bin, tmp_path):
    env = dict(isolated.env)
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from tether.cli.main import report_error; from tether import errors;"
         "sys.exit(report_error(errors.NotFoundError('no host named x', 'run tether hosts')))"],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 10
    assert proc.stderr == "error: no host named x\nhint: run tether hosts\n"


def test_sshd_fixture_is_real_and_key_only(sshd_server):
    ok = sshd_server.ssh("echo", "hello")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "hello"
    # a key that is not authorized is refused, and no password prompt is offered
    stranger = sshd_server.dir / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    denied = sshd_server.ssh("true", key=stranger)
    assert denied.returncode == 255
    assert "Permission denied (publickey)" in denied.stderr


def test_a_real_command_error_is_one_line_with_hint(isolated, tether_bin):
    proc = subprocess.run([tether_bin, "keys", "show", "nope"], capture_output=True, text=True,
                          env=isolated.env, timeout=30)
    assert proc.returncode == 10
    assert proc.stderr == (f"error: no key named 'nope' in {isolated.home}/.ssh\n"
                           "hint: see `tether keys list`, or create it with "
                           "`tether keys generate`\n")
    assert proc.stdout == ""


# A bug of ours inside a real command: `tether keys list` whose library call raises.
_BUGGY = ("import sys, tether.ssh.keys as k\n"
          "def boom(*a, **kw):\n    raise RuntimeError('boom')\n"
          "k.list_keys = boom\n"
          "from tether.cli.main import main\nsys.argv[0] = 'tether'\nmain()\n")


@pytest.mark.parametrize(("args", "env", "traceback"), [
    ([], {}, False),
    (["--debug"], {}, True),
    ([], {"TETHER_DEBUG": "1"}, True),
    ([], {"TETHER_DEBUG": "0"}, False),
], ids=["plain", "debug-flag", "debug-env", "debug-env-off"])
def test_internal_errors_show_a_traceback_only_when_asked(isolated, args, env, traceback):
    proc = subprocess.run([sys.executable, "-c", _BUGGY, *args, "keys", "list"],
                          capture_output=True, text=True, env=isolated.env | env, timeout=60)
    assert proc.returncode == 1
    if traceback:
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.rstrip().endswith("RuntimeError: boom")
    else:
        assert proc.stderr == ("error: internal error: RuntimeError: boom\n"
                               "hint: run again with --debug for the traceback and report it\n")


def test_debug_shows_the_traceback_of_a_tether_error_too(isolated, tether_bin):
    proc = subprocess.run([tether_bin, "--debug", "keys", "show", "nope"], capture_output=True,
                          text=True, env=isolated.env, timeout=30)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "NotFoundError: no key named 'nope'" in proc.stderr


def test_shell_completion_script_and_answers(isolated, tether_bin):
    script = subprocess.run([tether_bin, "--show-completion", "bash"], capture_output=True,
                            text=True, env=isolated.env, timeout=30)
    assert script.returncode == 0, script.stderr
    assert "_TETHER_COMPLETE=complete_bash" in script.stdout
    assert "complete -o default -F _tether_completion tether" in script.stdout

    def complete(words: str) -> list[str]:
        env = isolated.env | {"_TETHER_COMPLETE": "complete_bash", "COMP_WORDS": words,
                              "COMP_CWORD": str(len(words.split()) - 1)}
        proc = subprocess.run([tether_bin], capture_output=True, text=True, env=env,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("tether ke") == ["kernel", "keys"]
    assert complete("tether keys gen") == ["generate"]
    assert complete("tether keys config re") == ["remove"]


def test_tether_bin_is_found_beside_the_interpreter(monkeypatch):
    from tests.conftest import find_tether_bin

    monkeypatch.setenv("PATH", "/nonexistent")
    path = find_tether_bin()
    assert path == os.path.join(os.path.dirname(sys.executable), "tether")
    assert os.access(path, os.X_OK)


# -- secrets: every failure is translated at the seam ----------------------------------------


def test_a_non_utf8_secret_file_is_a_usage_error(tmp_path):
    f = tmp_path / "tok"
    f.write_bytes(b"\xff\xfetoken")
    with pytest.raises(errors.UsageError) as info:
        secrets.read_secret(secrets.SecretSource("GitHub token", file=f))
    assert info.value.message == f"the GitHub token in {f} is not UTF-8 text (bad byte at offset 0)"
    assert "UTF-8" in info.value.hint


def test_a_missing_secret_file_has_a_hint(tmp_path):
    with pytest.raises(errors.UsageError) as info:
        secrets.read_secret(secrets.SecretSource("token", file=tmp_path / "none"))
    assert "No such file" in info.value.message and "'-'" in info.value.hint


class _MemoryBackend:
    name = "memory"

    def __init__(self, fail: bool = False) -> None:
        self.data: dict[str, str] = {}
        self.fail = fail

    def _check(self):
        if self.fail:
            raise errors.SecretStoreError("keyring refused")

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value):
        self._check()
        self.data[key] = value

    def delete(self, key):
        self._check()
        return self.data.pop(key, None) is not None


def test_auto_backend_falls_back_to_the_file_and_finds_it_again(isolated):
    refusing = _MemoryBackend(fail=True)
    auto = secrets.AutoBackend(refusing, secrets.FileBackend())
    auto.set("k", "v1")
    assert refusing.data == {} and auto.file.get("k") == "v1"
    assert auto.get("k") == "v1"
    # The keyring works again: a new value goes there and the file's copy is dropped.
    working = _MemoryBackend()
    auto = secrets.AutoBackend(working, secrets.FileBackend())
    auto.set("k", "v2")
    assert working.data == {"k": "v2"} and auto.file.get("k") is None
    assert auto.get("k") == "v2"
    assert auto.delete("k") is True and auto.get("k") is None


def test_auto_backend_prefers_a_newer_file_copy_over_an_older_keyring_one(isolated):
    keyring = _MemoryBackend()
    auto = secrets.AutoBackend(keyring, secrets.FileBackend())
    auto.set("k", "old")                      # in the keyring
    keyring.fail = True
    auto.set("k", "new")                      # the keyring is locked: the file
    keyring.fail = False                      # unlocked again, still holding "old"
    assert keyring.data == {"k": "old"}
    assert auto.get("k") == "new"             # the last write wins, not a stale token


def test_doctor_keyring_fix_is_an_exact_command(monkeypatch):
    import tether.doctor as doctor

    monkeypatch.setattr(doctor, "keyring_status", lambda: (False, "no keyring backend available"))
    monkeypatch.delenv("TETHER_SECRETS_BACKEND", raising=False)
    debian = plat.PlatformInfo(plat.PlatformKind.LINUX, "debian", "apt", False, None)
    check = next(c for c in doctor.run_checks(debian).checks if c.name == "keyring")
    assert check.status is doctor.CheckStatus.WARN
    assert check.fix.startswith("sudo apt-get install -y gnome-keyring dbus-user-session, ")
    assert "export TETHER_SECRETS_BACKEND=file" in check.fix
    fedora = plat.PlatformInfo(plat.PlatformKind.LINUX, "fedora", "dnf", True, None)
    assert doctor.keyring_fix(fedora).startswith("dnf install -y gnome-keyring, ")
    # Forced keyring without one: storing a secret would fail, so it is missing, not a warning.
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "keyring")
    check = next(c for c in doctor.run_checks(debian).checks if c.name == "keyring")
    assert check.status is doctor.CheckStatus.MISSING and check.fix.startswith("sudo apt-get")
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "file")
    check = next(c for c in doctor.run_checks(debian).checks if c.name == "keyring")
    assert check.status is doctor.CheckStatus.OK and check.fix is None
