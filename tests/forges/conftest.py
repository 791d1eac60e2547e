"""Fixtures for forge tests: the fake forge servers and a forge-like SSH login on the sshd."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .forge_fakes import (Account, FakeBitbucket, FakeForge, FakeGitHub, FakeGitLab, ForgeSsh,
                         make_forge_ssh)
from tether.forges.base import SPECS, Credentials, Provider

EMAIL = "octo@example.com"


@dataclass
class ForgeCase:
    provider: Provider
    fake: FakeForge
    full: Credentials  # may do everything
    weak: Credentials  # may read, not write
    missing_scope: str  # what the error must name for ``weak`` adding a key

    @property
    def base_url(self) -> str:
        return self.fake.url

    def client(self, credentials: Credentials | None = None):
        from tether.forges.accounts import client_class

        return client_class(self.provider)(self.base_url, credentials or self.full)

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point tether at the fake (as a user would with TETHER_<FORGE>_..._URL)."""
        monkeypatch.setenv(SPECS[self.provider].base_url_env, self.base_url)


def _case(provider: Provider) -> ForgeCase:
    if provider is Provider.GITHUB:
        fake = FakeGitHub(accounts={
            "ghp_full": Account("octocat", {"admin:public_key"}),
            "ghp_read": Account("octocat", {"read:public_key", "repo"}),
            "github_pat_fine": Account("octocat", set()),
        })
        return ForgeCase(provider, fake.start(), Credentials("ghp_full"),
                         Credentials("ghp_read"), "write:public_key")
    if provider is Provider.GITLAB:
        fake = FakeGitLab(accounts={
            "glpat-full": Account("octocat", {"api"}),
            "glpat-read": Account("octocat", {"read_api"}),
        })
        return ForgeCase(provider, fake.start(), Credentials("glpat-full"),
                         Credentials("glpat-read"), "api")
    fake = FakeBitbucket(accounts={
        f"{EMAIL}:ATATT-full": Account("octocat", {
            "read:user:bitbucket", "read:ssh-key:bitbucket", "write:ssh-key:bitbucket",
            "delete:ssh-key:bitbucket"}),
        f"{EMAIL}:ATATT-read": Account("octocat", {"read:user:bitbucket",
                                                   "read:ssh-key:bitbucket"}),
    })
    return ForgeCase(provider, fake.start(), Credentials("ATATT-full", EMAIL),
                     Credentials("ATATT-read", EMAIL), "write:ssh-key:bitbucket")


@pytest.fixture(params=list(Provider), ids=lambda p: p.value)
def forge(request) -> ForgeCase:
    case = _case(request.param)
    yield case
    case.fake.stop()


@pytest.fixture
def github() -> ForgeCase:
    case = _case(Provider.GITHUB)
    yield case
    case.fake.stop()


@pytest.fixture
def forge_ssh(sshd_server, tmp_path) -> ForgeSsh:
    return make_forge_ssh(sshd_server, tmp_path, Provider.GITHUB)


@pytest.fixture
def bare_repo(tmp_path) -> Path:
    """A bare repository with one commit on main, served by the sshd through its path."""
    seed = tmp_path / "seed"
    bare = tmp_path / "served" / "project.git"
    env_args = ["-c", "user.name=Seed", "-c", "user.email=seed@example.com",
                "-c", "init.defaultBranch=main"]
    subprocess.run(["git", *env_args, "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", *env_args, "init", "-q", str(seed)], check=True)
    (seed / "README.md").write_text("hello\n")
    subprocess.run(["git", *env_args, "-C", str(seed), "add", "README.md"], check=True)
    subprocess.run(["git", *env_args, "-C", str(seed), "commit", "-q", "-m", "first"], check=True)
    subprocess.run(["git", "-C", str(seed), "push", "-q", str(bare), "HEAD:refs/heads/main"],
                   check=True)
    subprocess.run(["git", "--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/main"],
                   check=True)
    return bare
