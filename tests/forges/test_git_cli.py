"""`tether git login/logout/whoami/keys/identity` through the real entry point."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from tether.forges.base import SPECS, Provider


def _login_args(forge, tmp_path, token=None) -> list[str]:
    creds = forge.full
    token_file = tmp_path / "token"
    token_file.write_text((token or creds.token) + "\n")
    args = ["git", "login", forge.provider.value, "--token-file", str(token_file)]
    if forge.provider is Provider.BITBUCKET:
        args += ["--email", creds.email]
    return args


def test_login_whoami_logout(cli, isolated, monkeypatch, forge, tmp_path):
    forge.env(monkeypatch)
    r = cli(*_login_args(forge, tmp_path), "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["login"] == "octocat"
    assert forge.full.token not in r.stdout + r.stderr
    secrets_file = isolated.tether_home / "config" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert json.loads(secrets_file.read_text()) == {
        f"forge:{forge.provider.value}:token": forge.full.token}

    r = cli("git", "whoami", forge.provider.value)
    assert r.exit_code == 0 and r.stdout.startswith("octocat (Octo Cat)")

    r = cli("git", "logout", forge.provider.value)
    assert r.exit_code == 0 and "logged out" in r.stdout
    r = cli("git", "whoami", forge.provider.value)
    assert r.exit_code == 12 and f"not logged in to {SPECS[forge.provider].display}" in r.stderr


def test_login_with_a_bad_token_stores_nothing(cli, isolated, monkeypatch, forge, tmp_path):
    forge.env(monkeypatch)
    r = cli(*_login_args(forge, tmp_path, token="wrong"))
    assert r.exit_code == 12
    assert "refused the token" in r.stderr
    assert not (isolated.tether_home / "config" / "secrets.json").exists()


def test_login_reads_the_token_from_the_environment(cli, monkeypatch, github):
    github.env(monkeypatch)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_full")
    assert cli("git", "login", "github").exit_code == 0
    monkeypatch.delenv("GITHUB_TOKEN")
    assert cli("git", "whoami", "github", "--json").json()["login"] == "octocat"


def test_login_without_any_token_source_says_how(cli, monkeypatch, github):
    github.env(monkeypatch)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    r = cli("git", "login", "github")
    assert r.exit_code == 2
    assert "no GitHub token given" in r.stderr and "GITHUB_TOKEN" in r.stderr


def test_token_is_never_an_argument(cli):
    assert cli("git", "login", "github", "--token", "ghp_full").exit_code == 2


def test_bitbucket_needs_the_account_email(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("BITBUCKET_EMAIL", raising=False)
    monkeypatch.setenv("BITBUCKET_API_TOKEN", "ATATT-full")
    r = cli("git", "login", "bitbucket")
    assert r.exit_code == 2 and "Atlassian account email" in r.stderr


def test_base_url_remembered_from_login(cli, monkeypatch, forge, tmp_path):
    # GitLab self-managed / GitHub Enterprise: --base-url at login, remembered afterwards.
    monkeypatch.delenv(SPECS[forge.provider].base_url_env, raising=False)
    r = cli(*_login_args(forge, tmp_path), "--base-url", forge.base_url)
    assert r.exit_code == 0, r.stderr
    assert cli("git", "whoami", forge.provider.value).exit_code == 0


def test_keys_add_list_delete(cli, monkeypatch, forge, tmp_path):
    forge.env(monkeypatch)
    assert cli(*_login_args(forge, tmp_path)).exit_code == 0
    gen = cli("keys", "generate", "id_ed25519", "--json").json()
    r = cli("git", "keys", "add", forge.provider.value, "--title", "laptop", "--json")
    assert r.exit_code == 0, r.stderr
    added = r.json()
    assert added["fingerprint"] == gen["fingerprint"]

    listed = cli("git", "keys", "list", forge.provider.value, "--json").json()
    assert [(k["id"], k["title"]) for k in listed] == [(added["id"], "laptop")]
    assert "laptop" in cli("git", "keys", "list", forge.provider.value).stdout

    dup = cli("git", "keys", "add", forge.provider.value, "--title", "again",
              "--key", gen["public_path"])
    assert dup.exit_code == 2 and "already registered" in dup.stderr

    r = cli("git", "keys", "delete", forge.provider.value, added["id"])
    assert r.exit_code == 0
    assert cli("git", "keys", "list", forge.provider.value, "--json").json() == []
    assert "no SSH keys" in cli("git", "keys", "list", forge.provider.value).stdout


def test_missing_scope_via_cli(cli, monkeypatch, forge, tmp_path):
    forge.env(monkeypatch)
    assert cli(*_login_args(forge, tmp_path, token=forge.weak.token)).exit_code == 0
    cli("keys", "generate", "id_ed25519")
    r = cli("git", "keys", "add", forge.provider.value, "--title", "t")
    assert r.exit_code == 12
    assert "lacks the scope" in r.stderr and forge.missing_scope in r.stderr
    assert "hint:" in r.stderr


def test_unknown_provider(cli):
    r = cli("git", "whoami", "sourceforge")
    assert r.exit_code == 2 and "unknown forge 'sourceforge'" in r.stderr


def test_git_identity_global_and_local(cli, isolated, tmp_path, monkeypatch):
    r = cli("git", "identity", "--name", "Ada Lovelace", "--email", "ada@example.com", "--json")
    assert r.exit_code == 0
    assert r.json() == {"scope": "global", "name": "Ada Lovelace", "email": "ada@example.com"}
    got = subprocess.run(["git", "config", "--global", "user.email"], capture_output=True,
                         text=True).stdout.strip()
    assert got == "ada@example.com"

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    r = cli("git", "identity", "--name", "Work Me", "--email", "me@work.example",
            "--scope", "local")
    assert r.exit_code == 0
    local = subprocess.run(["git", "config", "--local", "user.name"], capture_output=True,
                           text=True, cwd=repo).stdout.strip()
    assert local == "Work Me"


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "A", "--email", "not-an-email"], "is not an email address"),
    (["--name", "", "--email", "a@b.c"], "not a usable git user name"),
    (["--name", "A", "--email", "a@b.c", "--scope", "system"], "unknown scope 'system'"),
], ids=["email", "name", "scope"])
def test_git_identity_bad_input(cli, isolated, args, message):
    r = cli("git", "identity", *args)
    assert r.exit_code == 2 and message in r.stderr
    assert not (isolated.home / ".gitconfig").exists()


def test_git_identity_local_outside_a_repo(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    r = cli("git", "identity", "--name", "A", "--email", "a@b.c", "--scope", "local")
    assert r.exit_code == 2 and "not inside a git repository" in r.stderr


# -- secrets storage failures are clear errors (or a fallback), never internal errors ---------


def test_login_with_a_non_utf8_token_file_is_a_clear_error(cli, isolated, github, tmp_path,
                                                            monkeypatch):
    github.env(monkeypatch)
    token_file = tmp_path / "token"
    token_file.write_bytes("ghp_full".encode("utf-16"))
    r = cli("git", "login", "github", "--token-file", str(token_file))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: the GitHub token in {token_file} is not UTF-8 text")
    assert "\nhint: save it as plain UTF-8 text" in r.stderr and "internal error" not in r.stderr
    assert not (isolated.tether_home / "config" / "secrets.json").exists()


@pytest.fixture
def use_keyring():
    """Install a keyring backend for the test (keyring's process-wide choice), then restore."""
    import keyring

    before = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(before)


def _read_only_keyring():
    import keyring.backend
    import keyring.errors

    class ReadOnlyKeyring(keyring.backend.KeyringBackend):
        priority = 1

        def get_password(self, service, username):
            return None

        def set_password(self, service, username, password):
            raise keyring.errors.PasswordSetError("the collection is locked")

        def delete_password(self, service, username):
            raise keyring.errors.PasswordDeleteError("not found")

    return ReadOnlyKeyring()


def test_forced_keyring_without_a_backend_is_a_clear_error(cli, isolated, github, tmp_path,
                                                           monkeypatch, use_keyring):
    from keyring.backends import fail

    use_keyring(fail.Keyring())
    github.env(monkeypatch)
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "keyring")
    r = cli(*_login_args(github, tmp_path))
    assert r.exit_code == 1
    assert r.stderr.startswith("error: TETHER_SECRETS_BACKEND=keyring, but no OS keyring "
                               "backend is available\nhint: ")
    assert "unset TETHER_SECRETS_BACKEND" in r.stderr and "internal error" not in r.stderr
    assert github.full.token not in r.stdout + r.stderr
    # Forced means forced: the token was not put in the file instead.
    assert not (isolated.tether_home / "config" / "secrets.json").exists()


def test_a_keyring_that_refuses_writes(cli, isolated, github, tmp_path, monkeypatch,
                                       use_keyring):
    use_keyring(_read_only_keyring())
    github.env(monkeypatch)
    secrets_file = isolated.tether_home / "config" / "secrets.json"
    # Forced: a clear error naming the keyring's complaint.
    monkeypatch.setenv("TETHER_SECRETS_BACKEND", "keyring")
    r = cli(*_login_args(github, tmp_path))
    assert r.exit_code == 1
    assert r.stderr.startswith("error: TETHER_SECRETS_BACKEND=keyring, but the OS keyring could "
                               "not store the secret (PasswordSetError: the collection is "
                               "locked)\nhint: ")
    assert not secrets_file.exists()
    # Chosen automatically: the 0600 file takes the token, and it is found again.
    monkeypatch.delenv("TETHER_SECRETS_BACKEND")
    r = cli(*_login_args(github, tmp_path))
    assert r.exit_code == 0, r.stderr
    assert json.loads(secrets_file.read_text()) == {"forge:github:token": "ghp_full"}
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert cli("git", "whoami", "github", "--json").json()["login"] == "octocat"
    assert cli("git", "logout", "github").exit_code == 0
    assert json.loads(secrets_file.read_text()) == {}
