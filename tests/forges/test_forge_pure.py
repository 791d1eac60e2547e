"""Pure parts of the forge layer: greetings, ssh failures, targets, blocks, pinned host keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.errors import AuthError, ConnectError, HostKeyMismatchError, UsageError
from tether.forges.base import Provider, parse_provider
from tether.forges.setup import (KNOWN_HOST_KEYS, SshTarget, classify_failure, default_target,
                                 forge_block, interpret_greeting, ssh_test_argv)
from tether.ssh.keys import fingerprint_of_public_key


@pytest.mark.parametrize(("code", "output", "expected"), [
    (1, "Hi ada! You've successfully authenticated, but GitHub does not provide shell access.",
     (True, "ada")),
    (0, "Welcome to GitLab, @ada!", (True, "ada")),
    (0, "authenticated via ssh key.\n\nYou can use git to connect to Bitbucket. Shell access "
        "is disabled.", (True, None)),
    (0, "logged in as ada.\n\nYou can use git or hg to connect to Bitbucket.", (True, "ada")),
    (255, "git@github.com: Permission denied (publickey).", (False, None)),
    (1, "some other failure", (False, None)),
    (0, "", (True, None)),
], ids=["github-exit-1", "gitlab", "bitbucket", "bitbucket-user", "denied", "exit-1-no-greeting",
        "plain-exit-0"])
def test_interpret_greeting(code, output, expected):
    assert interpret_greeting(code, output) == expected


GH = SshTarget(Provider.GITHUB, "github.com")


@pytest.mark.parametrize(("output", "error", "text"), [
    ("git@github.com: Permission denied (publickey).", AuthError, "refused the SSH key"),
    ("No ED25519 host key is known for github.com and you have requested strict checking.\n"
     "Host key verification failed.", AuthError, "is not known"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.",
     HostKeyMismatchError, "differs from the pinned one"),
    ("ssh: connect to host github.com port 22: Connection refused", ConnectError,
     "could not reach github.com"),
    ("ssh: Could not resolve hostname github.com: Name or service not known", ConnectError,
     "could not reach"),
    ("kex_exchange_identification: something odd", ConnectError, "ssh to github.com failed"),
], ids=["denied", "unknown-host-key", "changed-host-key", "refused", "dns", "other"])
def test_classify_failure(output, error, text):
    err = classify_failure(output, GH)
    assert type(err) is error
    assert text in err.message


@pytest.mark.parametrize(("provider", "base_url", "alias"), [
    (Provider.GITHUB, None, "github.com"),
    (Provider.GITHUB, "https://api.github.com", "github.com"),
    (Provider.GITHUB, "https://ghe.corp.example/api/v3", "ghe.corp.example"),
    (Provider.GITLAB, "https://gitlab.com", "gitlab.com"),
    (Provider.GITLAB, "https://git.example.org", "git.example.org"),
    (Provider.BITBUCKET, "https://api.bitbucket.org", "bitbucket.org"),
    (Provider.GITHUB, "http://127.0.0.1:8080", "github.com"),
], ids=["github", "github-api", "ghes", "gitlab", "gitlab-self-managed", "bitbucket", "local"])
def test_default_target_alias(provider, base_url, alias):
    assert default_target(provider, base_url).alias == alias


def test_forge_block_and_test_argv():
    target = SshTarget(Provider.GITLAB, "gitlab.com", "127.0.0.1", 2222, "root",
                       Path("/kh"))
    block = forge_block(target, Path("/home/u/.ssh/id_ed25519"))
    assert block.name == "forge-gitlab" and block.host == "gitlab.com"
    assert block.options == (("HostName", "127.0.0.1"), ("Port", "2222"), ("User", "root"),
                             ("IdentityFile", "/home/u/.ssh/id_ed25519"),
                             ("IdentitiesOnly", "yes"), ("UserKnownHostsFile", "/kh"))
    argv = ssh_test_argv(target, Path("/nonexistent/config"), None)
    assert argv[argv.index("-l") + 1] == "root"
    assert "-l" not in ssh_test_argv(SshTarget(Provider.GITHUB, "github.com"), Path("/x"), None,
                                     has_block=True)
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert "BatchMode=yes" in argv and argv[-1] == "gitlab.com"
    assert "StrictHostKeyChecking=no" not in " ".join(argv)
    plain = forge_block(SshTarget(Provider.GITHUB, "github.com"), Path("/k"))
    assert plain.options[0] == ("HostName", "github.com") and ("Port", "22") not in plain.options


# The SHA256 fingerprints each forge publishes for its ed25519 host key.
PUBLISHED = {
    "github.com": "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
    "gitlab.com": "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8",
    "bitbucket.org": "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM",
}


@pytest.mark.parametrize("host", list(PUBLISHED))
def test_pinned_host_keys_match_published_fingerprints(host):
    assert fingerprint_of_public_key(KNOWN_HOST_KEYS[host]) == PUBLISHED[host]


def test_parse_provider():
    assert parse_provider(" GitHub ") is Provider.GITHUB
    with pytest.raises(UsageError):
        parse_provider("gitea")
