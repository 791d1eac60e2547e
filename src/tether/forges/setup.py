"""Reaching a forge over SSH: the config block, pinned host keys, `ssh -T`, and `setup`.

``test_connection`` runs the real OpenSSH client (``ssh -T``) the way a person checks their
set-up; forges never give a shell, so success is read from their greeting, not the exit code:
GitHub exits 1 with "You've successfully authenticated", GitLab exits 0 with "Welcome to
GitLab, @user!", Bitbucket with "authenticated via ssh key".

``setup`` is the whole workflow in one call: key if missing, host key pin, config block,
upload (skipped when the forge has the key already), test, and what to do next. Its steps are
returned as data, so a failing test still reports what was done.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tether.errors import (AuthError, ConnectError, DeadlineError, HostKeyMismatchError,
                           NotFoundError, SystemDependencyError, TetherError)
from tether.forges.base import SPECS, Provider

# Published ed25519 host keys (docs.github.com "GitHub's SSH key fingerprints", docs.gitlab.com
# "GitLab.com settings", Atlassian "Configure SSH"); their SHA256 fingerprints are checked by a
# test against the published ones. OpenSSH prefers a host key algorithm it already knows for a
# host, so one pinned key type is enough.
KNOWN_HOST_KEYS: dict[str, str] = {
    "github.com":
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "gitlab.com":
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf",
    "bitbucket.org":
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO",
}

_GREETINGS = (
    re.compile(r"Hi (?P<user>[^!\s]+)! You've successfully authenticated"),  # GitHub
    re.compile(r"Welcome to GitLab, @(?P<user>[^!\s]+)!"),  # GitLab
    re.compile(r"logged in as (?P<user>\S+?)\.?\s*$", re.M),  # Bitbucket
    re.compile(r"authenticated via ssh key"),  # Bitbucket (no user on some accounts)
)


@dataclass(frozen=True)
class SshTarget:
    """How to reach a forge's git SSH endpoint (overridable for self-hosted and tests)."""

    provider: Provider
    alias: str  # the Host pattern users type in git URLs, e.g. github.com
    hostname: str | None = None  # HostName when it differs from the alias
    port: int | None = None
    user: str | None = None  # None: the config block's User, else "git"
    known_hosts: Path | None = None  # UserKnownHostsFile, when not the default

    @property
    def block_name(self) -> str:
        return f"forge-{self.provider.value}"


def default_target(provider: Provider, base_url: str | None = None, *,
                   ssh_host: str | None = None, ssh_port: int | None = None,
                   ssh_user: str | None = None, known_hosts: Path | None = None) -> SshTarget:
    """The SSH target for a forge; a self-hosted base URL implies its host as the alias."""
    from urllib.parse import urlsplit

    alias = SPECS[provider].ssh_host
    if base_url and provider is not Provider.BITBUCKET:
        host = urlsplit(base_url).hostname or alias
        if host not in ("api.github.com", "gitlab.com", "127.0.0.1", "localhost", "::1"):
            alias = host
    return SshTarget(provider, alias, ssh_host, ssh_port, ssh_user, known_hosts)


def forge_block(target: SshTarget, identity: Path):
    from tether.ssh.config import ManagedBlock

    options: list[tuple[str, str]] = [("HostName", target.hostname or target.alias)]
    if target.port and target.port != 22:
        options.append(("Port", str(target.port)))
    options += [("User", target.user or "git"), ("IdentityFile", str(identity)),
                ("IdentitiesOnly", "yes")]
    if target.known_hosts is not None:
        options.append(("UserKnownHostsFile", str(target.known_hosts)))
    return ManagedBlock(target.block_name, target.alias, tuple(options))


# -- ssh -T -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    ok: bool
    user: str | None
    exit_code: int
    message: str  # the forge's greeting or ssh's complaint
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def interpret_greeting(exit_code: int, output: str) -> tuple[bool, str | None]:
    """(authenticated?, user) from what ``ssh -T`` printed and its exit code (pure)."""
    for pattern in _GREETINGS:
        m = pattern.search(output)
        if m:
            return True, m.groupdict().get("user")
    return exit_code == 0, None


def classify_failure(output: str, target: SshTarget) -> TetherError:
    """Turn ssh's complaint into the tether error a person can act on (pure)."""
    name = SPECS[target.provider].display
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in output or "key for" in output and \
            "differs" in output:
        return HostKeyMismatchError(f"the host key of {target.alias} differs from the pinned one",
                                    "do not continue: check the forge's published fingerprints;"
                                    " if it really rotated its key, "
                                    "`tether keys reset --known-hosts` and run setup again")
    if "Host key verification failed" in output or "No ED25519 host key is known" in output \
            or "host key is known" in output:
        return AuthError(f"the host key of {target.alias} is not known",
                         "run `tether git setup` (pins the public forges' keys), or check the "
                         "server's fingerprint and add it to known_hosts yourself")
    if "Permission denied" in output:
        return AuthError(f"{name} refused the SSH key",
                         f"upload it: tether git keys add {target.provider.value} --key NAME "
                         "--title T (or run `tether git setup`)")
    if any(s in output for s in ("Connection refused", "Could not resolve", "No route",
                                 "Connection timed out", "Network is unreachable",
                                 "Connection closed")):
        return ConnectError(f"could not reach {target.hostname or target.alias}: "
                            f"{_last_line(output)}", "check the host, port and your network")
    return ConnectError(f"ssh to {target.alias} failed: {_last_line(output)}",
                        f"see the whole exchange: ssh -vT {target.user or 'git'}@{target.alias}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def ssh_test_argv(target: SshTarget, config: Path, identity: Path | None,
                  has_block: bool = False) -> list[str]:
    argv = ["ssh", "-F", str(config) if config.exists() else "/dev/null", "-T",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if target.user or not has_block:
        argv += ["-l", target.user or "git"]
    if target.hostname:
        argv += ["-o", f"HostName={target.hostname}"]
    if target.port:
        argv += ["-p", str(target.port)]
    if identity is not None:
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    if target.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={target.known_hosts}"]
    return argv + [target.alias]


def test_connection(target: SshTarget, *, identity: Path | None = None,
                    config: Path | None = None, timeout: float = 30.0) -> TestResult:
    """Run ``ssh -T`` against the forge; raise the mapped error unless it greets us."""
    from tether.host.platform import find_program
    from tether.ssh.config import config_path, list_blocks

    if find_program("ssh") is None:
        raise SystemDependencyError("the OpenSSH client (ssh) is not installed",
                                    "see `tether doctor` for the install command")
    config = config or config_path()
    has_block = any(b.name == target.block_name for b in list_blocks(config))
    argv = ssh_test_argv(target, config, identity, has_block)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DeadlineError(f"ssh to {target.alias} did not finish within {timeout:.0f} s",
                            "check the host and port") from exc
    output = (proc.stderr or "") + (proc.stdout or "")
    ok, user = interpret_greeting(proc.returncode, output)
    if not ok:
        raise classify_failure(output, target)
    message = next((line.strip() for line in output.splitlines()
                    if any(p.search(line) for p in _GREETINGS)), _last_line(output))
    return TestResult(True, user, proc.returncode, message, argv)


# -- setup ----------------------------------------------------------------------------------


@dataclass
class SetupStep:
    name: str
    status: str  # "done" | "skipped" | "failed"
    detail: str


@dataclass
class SetupReport:
    provider: str
    key: str
    steps: list[SetupStep] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def add(self, name: str, status: str, detail: str) -> None:
        self.steps.append(SetupStep(name, status, detail))

    def to_dict(self) -> dict:
        return {"provider": self.provider, "key": self.key, "ok": self.ok,
                "steps": [asdict(s) for s in self.steps], "next_steps": self.next_steps}


def setup(provider: Provider, *, key_name: str = "id_ed25519", title: str | None = None,
          base_url: str | None = None, target: SshTarget | None = None,
          passphrase: str | None = None, run_test: bool = True) -> SetupReport:
    """Key if missing, host key pin, config block, upload, test; returns what happened."""
    from tether.forges.accounts import client_for, resolve_base_url
    from tether.ssh import config as ssh_config
    from tether.ssh import keys as ssh_keys

    target = target or default_target(provider, resolve_base_url(provider, base_url))
    client = client_for(provider, base_url)  # fails before anything is written when logged out
    report = SetupReport(provider.value, key_name)
    with client:
        user = client.whoami()
        try:
            info = ssh_keys.get_key(key_name)
            report.add("key", "skipped", f"using the existing key {info.path} ({info.fingerprint})")
        except NotFoundError:
            info = ssh_keys.generate_key(key_name, comment=f"{user.login}@{provider.value}",
                                         passphrase=passphrase)
            report.add("key", "done", f"generated {info.type} key {info.path} ({info.fingerprint})")
        _pin_host_key(report, target)
        block = forge_block(target, info.path)
        if block in ssh_config.list_blocks():
            report.add("ssh config", "skipped", f"block {block.name} is up to date")
        else:
            backup = ssh_config.upsert_block(block)
            report.add("ssh config", "done", f"block {block.name} (Host {block.host}) in "
                       f"{ssh_config.config_path()}" + (f"; backup {backup}" if backup else ""))
        try:
            _upload(report, client, info, title)
        except TetherError as exc:  # e.g. a missing scope: keep the report of steps 1-3
            report.add("upload", "failed", _explain(exc))
    if run_test and report.ok:
        try:
            result = test_connection(target, identity=info.path)
            report.add("test", "done", result.message)
        except TetherError as exc:
            report.add("test", "failed", _explain(exc))
    report.next_steps = _next_steps(provider, target)
    return report


def _pin_host_key(report: SetupReport, target: SshTarget) -> None:
    from tether.ssh.known_hosts import add_known_host, known_hosts_path

    pin = KNOWN_HOST_KEYS.get(target.alias)
    if pin is None:
        report.add("host key", "skipped", f"no published key known for {target.alias}; "
                   "ssh asks you to confirm its fingerprint on first use")
    elif target.hostname not in (None, target.alias):
        report.add("host key", "skipped", f"HostName is {target.hostname}, not {target.alias}: "
                   f"{target.alias}'s published key does not apply")
    else:
        kh = target.known_hosts or known_hosts_path()
        add_known_host(kh, target.alias, pin)
        report.add("host key", "done", f"pinned {target.alias}'s published key in {kh}")


def _upload(report: SetupReport, client, info, title: str | None) -> None:
    remote = {k.fingerprint: k for k in client.list_keys()}
    display = client.spec.display
    if info.fingerprint in remote:
        report.add("upload", "skipped", f"{display} has this key already "
                   f"(id {remote[info.fingerprint].id})")
        return
    added = client.add_key(title or _default_title(), info.public_path.read_text().strip())
    report.add("upload", "done", f"added as {added.title!r} (id {added.id})")


def _explain(exc: TetherError) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


def _default_title() -> str:
    import socket

    return f"tether@{socket.gethostname()}"


def _next_steps(provider: Provider, target: SshTarget) -> list[str]:
    from tether.git_identity import get_git_identity

    steps = [f"git clone git@{target.alias}:OWNER/REPO.git"]
    try:
        ident = get_git_identity()
    except TetherError:
        ident = {}
    if not ident.get("name") or not ident.get("email"):
        steps.append('tether git identity --name "Your Name" --email you@example.com')
    return steps
