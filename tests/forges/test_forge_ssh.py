"""`tether git test` / `setup` and real git over SSH, against the real sshd dressed as a forge."""

from __future__ import annotations

import os
import subprocess

import pytest

from .forge_fakes import make_forge_ssh
from tether.forges.base import Provider

pytestmark = pytest.mark.timeout(60)


def _generate(cli, name="id_ed25519") -> str:
    r = cli("keys", "generate", name, "--json")
    assert r.exit_code == 0, r.stderr
    return open(r.json()["public_path"]).read().strip()


@pytest.mark.parametrize("provider", list(Provider), ids=lambda p: p.value)
def test_git_test_accepts_each_forges_greeting(cli, sshd_server, tmp_path, provider):
    fs = make_forge_ssh(sshd_server, tmp_path, provider)
    fs.authorize(_generate(cli))
    r = cli("git", "test", provider.value, "--key", "id_ed25519", *fs.target_args(), "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["ok"] is True
    # GitHub's greeting comes with exit 1; that is success too.
    assert data["exit_code"] == (1 if provider is Provider.GITHUB else 0)
    if provider is not Provider.BITBUCKET:
        assert data["user"] == "octocat"


def test_git_test_human_output(cli, forge_ssh):
    forge_ssh.authorize(_generate(cli))
    r = cli("git", "test", "github", "--key", "id_ed25519", *forge_ssh.target_args())
    assert r.exit_code == 0
    assert "ok: Hi octocat! You've successfully authenticated" in r.stdout


def test_git_test_with_a_key_the_forge_does_not_know(cli, forge_ssh):
    _generate(cli)  # never authorized
    r = cli("git", "test", "github", "--key", "id_ed25519", *forge_ssh.target_args())
    assert r.exit_code == 12
    assert "error: GitHub refused the SSH key" in r.stderr
    assert "tether git keys add github" in r.stderr


def test_git_test_refuses_an_unknown_host_key(cli, forge_ssh, tmp_path):
    forge_ssh.authorize(_generate(cli))
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    args = forge_ssh.target_args()
    args[args.index("--known-hosts") + 1] = str(empty)
    r = cli("git", "test", "github", "--key", "id_ed25519", *args)
    assert r.exit_code == 12
    assert "host key of github.com is not known" in r.stderr


def test_git_test_reports_a_closed_port(cli, forge_ssh):
    from tests.conftest import free_port

    _generate(cli)
    port = free_port()
    args = forge_ssh.target_args()
    args[args.index("--ssh-port") + 1] = str(port)
    r = cli("git", "test", "github", "--key", "id_ed25519", *args)
    assert r.exit_code == 1
    assert "could not reach 127.0.0.1" in r.stderr


def test_clone_and_push_over_ssh_with_the_managed_block(cli, isolated, forge_ssh, bare_repo,
                                                        tmp_path):
    forge_ssh.authorize(_generate(cli))
    server = forge_ssh.server
    r = cli("keys", "config", "add", "forge-github", "--host", "github.com",
            "--hostname", server.host, "--port", str(server.port), "--user", server.user,
            "--identity", "id_ed25519", "-o", f"UserKnownHostsFile={forge_ssh.known_hosts}")
    assert r.exit_code == 0, r.stderr
    assert cli("git", "identity", "--name", "Ada Lovelace",
               "--email", "ada@example.com").exit_code == 0

    env = dict(os.environ, GIT_SSH_COMMAND=f"ssh -F {isolated.ssh_config} -o BatchMode=yes")
    work = tmp_path / "work"

    def git(*args, cwd=None):
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=30)

    cloned = git("clone", f"github.com:{bare_repo}", str(work))
    assert cloned.returncode == 0, cloned.stderr
    assert (work / "README.md").read_text() == "hello\n"
    (work / "notes.txt").write_text("pushed over ssh\n")
    assert git("add", "notes.txt", cwd=work).returncode == 0
    assert git("commit", "-q", "-m", "second", cwd=work).returncode == 0
    pushed = git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert pushed.returncode == 0, pushed.stderr
    log = subprocess.run(["git", "--git-dir", str(bare_repo), "log", "--format=%an|%s", "main"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert log == ["Ada Lovelace|second", "Seed|first"]


def test_setup_end_to_end_then_idempotent(cli, isolated, monkeypatch, github, forge_ssh,
                                          tmp_path):
    github.env(monkeypatch)
    github.fake.on_key_added = forge_ssh.authorize  # uploading makes SSH work, as on GitHub
    token_file = tmp_path / "token"
    token_file.write_text("ghp_full\n")
    assert cli("git", "login", "github", "--token-file", str(token_file)).exit_code == 0

    r = cli("git", "setup", "github", *forge_ssh.target_args(), "--title", "ci box", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    report = r.json()
    steps = {s["name"]: s["status"] for s in report["steps"]}
    assert steps == {"key": "done", "host key": "skipped", "ssh config": "done",
                     "upload": "done", "test": "done"}
    assert report["ok"] is True
    assert any("git clone git@github.com:" in n for n in report["next_steps"])
    assert [k["title"] for k in github.fake.keys] == ["ci box"]
    assert (isolated.home / ".ssh" / "id_ed25519").exists()
    config = isolated.ssh_config.read_text()
    assert "# >>> tether: forge-github >>>" in config and "Host github.com" in config

    # A plain test afterwards goes through the block alone (its HostName, Port, User, key).
    r = cli("git", "test", "github", "--json")
    assert r.exit_code == 0, r.stderr
    assert "-l" not in r.json()["command"]

    again = cli("git", "setup", "github", *forge_ssh.target_args(), "--json").json()
    steps = {s["name"]: s["status"] for s in again["steps"]}
    assert steps == {"key": "skipped", "host key": "skipped", "ssh config": "skipped",
                     "upload": "skipped", "test": "done"}
    human = cli("git", "setup", "github", *forge_ssh.target_args())
    assert human.exit_code == 0
    assert "upload" in human.stdout and "has this key already" in human.stdout
    assert "next:\n  git clone git@github.com:OWNER/REPO.git" in human.stdout
    assert len(github.fake.keys) == 1


def test_setup_without_login_writes_nothing(cli, isolated, monkeypatch, github, forge_ssh):
    github.env(monkeypatch)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    r = cli("git", "setup", "github", *forge_ssh.target_args())
    assert r.exit_code == 12
    assert "not logged in to GitHub" in r.stderr
    assert "tether git login github" in r.stderr
    assert not (isolated.home / ".ssh").exists()


def test_setup_reports_a_failing_test_as_data(cli, isolated, monkeypatch, github, forge_ssh,
                                              tmp_path):
    github.env(monkeypatch)  # no on_key_added: the upload does not make SSH work
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_full")
    r = cli("git", "setup", "github", *forge_ssh.target_args(), "--json")
    assert r.exit_code == 1
    steps = {s["name"]: s for s in r.json()["steps"]}
    assert steps["upload"]["status"] == "done"
    assert steps["test"]["status"] == "failed"
    assert "refused the SSH key" in steps["test"]["detail"]


def test_setup_for_the_public_host_pins_its_published_key(cli, isolated, monkeypatch, github):
    from tether.forges.setup import KNOWN_HOST_KEYS

    github.env(monkeypatch)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_full")
    r = cli("git", "setup", "github", "--no-test", "--json")
    assert r.exit_code == 0, r.stderr
    steps = {s["name"]: s["status"] for s in r.json()["steps"]}
    assert steps == {"key": "done", "host key": "done", "ssh config": "done", "upload": "done"}
    known = (isolated.home / ".ssh" / "known_hosts").read_text()
    assert known == f"github.com {KNOWN_HOST_KEYS['github.com']} tether-pin\n"
    resolved = subprocess.run(["ssh", "-G", "-F", str(isolated.ssh_config), "github.com"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert {"user git", "hostname github.com", "identitiesonly yes",
            f"identityfile {isolated.home}/.ssh/id_ed25519"} <= set(resolved)


def test_setup_with_a_token_missing_the_scope_reports_it(cli, isolated, monkeypatch, github,
                                                         forge_ssh):
    github.env(monkeypatch)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_read")
    r = cli("git", "setup", "github", *forge_ssh.target_args(), "--json")
    assert r.exit_code == 1
    steps = {s["name"]: s for s in r.json()["steps"]}
    assert steps["upload"]["status"] == "failed"
    assert "lacks the scope" in steps["upload"]["detail"]
    assert "test" not in steps  # nothing to test before the key is on the account
    assert steps["key"]["status"] == "done" and steps["ssh config"]["status"] == "done"
