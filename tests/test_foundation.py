"""The foundation every capability stands on: errors, paths, secrets, the CLI shell, doctor."""

from __future__ import annotations

import json
import os
import stat
import subprocess

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
    "snapshot_pull", "snapshot_push", "snapshot_verify", "status", "status_async",
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
    assert "No such command" in result.stderr


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
        ["python3", "-c",
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
