"""Which SSH host a kernel runs on, and the OpenSSH command lines that reach it.

The kernel link runs the user's own OpenSSH client, so everything in their ssh config applies
(ProxyJump, ProxyCommand such as ``tether proxy``, agents, certificates, HostKeyAlias). A host
is any alias that config knows, or a tether host name ``NAME`` whose ``tether-NAME`` block
``tether connect`` wrote. The argv builders here are pure; only :func:`resolve_target` and
:func:`ssh_options` touch the system.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tether import paths
from tether.errors import ConfigError, SystemDependencyError, UsageError

SSH_CONFIG_ENV = "TETHER_SSH_CONFIG"

# Reads the launcher source from stdin and runs it, so the command line stays short and
# carries nothing secret (docs/kernel-launch.md, "The command line"). No single quote inside:
# quoted once in '...', it reads the same in sh, bash, zsh, fish and csh.
BOOTSTRAP = ('import sys;b=sys.stdin.buffer;'
             'exec(compile(b.read(int(b.readline())),"tether-launcher","exec"))')

# Options every kernel session needs whatever the user's config says: no prompts (a kernel
# launch has no terminal), no tty, no forwards or remote command from the config (they would
# collide with ours), and keepalives so a dead link is noticed. All exist since OpenSSH 7.6.
SESSION_OPTIONS = (
    "BatchMode=yes",
    "RequestTTY=no",
    "RemoteCommand=none",
    "ClearAllForwardings=yes",
    "PermitLocalCommand=no",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=3",
    "ExitOnForwardFailure=yes",
    "LogLevel=ERROR",
)


@dataclass(frozen=True)
class SshTarget:
    """A host as OpenSSH knows it: the alias to pass and the config file to read."""

    alias: str
    config_file: Path | None = None  # None: OpenSSH's own defaults (~/.ssh/config of passwd)

    def config_args(self) -> list[str]:
        return ["-F", str(self.config_file)] if self.config_file else []

    def describe(self) -> str:
        return self.alias if not self.config_file else f"{self.alias} (via {self.config_file})"


def remote_command(python: str) -> str:
    """The one command line the remote shell runs: the python, told to read the launcher."""
    return f"{shlex.quote(python)} -c {shlex.quote(BOOTSTRAP)}"


def master_argv(target: SshTarget, control_path: Path, python: str) -> list[str]:
    """A ControlMaster session running the launcher; port forwards are added to it later."""
    argv = ["ssh", *target.config_args(), "-M", "-S", str(control_path),
            "-o", "ControlPersist=no", "-T", "-x", "-a"]
    for opt in SESSION_OPTIONS:
        argv += ["-o", opt]
    return [*argv, "--", target.alias, remote_command(python)]


def once_argv(target: SshTarget, python: str) -> list[str]:
    """A plain session running the launcher once (probe, list)."""
    argv = ["ssh", *target.config_args(), "-S", "none", "-T", "-x", "-a"]
    for opt in SESSION_OPTIONS:
        argv += ["-o", opt]
    return [*argv, "--", target.alias, remote_command(python)]


def forward_argv(target: SshTarget, control_path: Path, bind_ip: str,
                 pairs: list[tuple[int, int]], op: str = "forward") -> list[str]:
    """Ask the master to forward (or, op ``cancel``, stop forwarding) local ``bind_ip:l`` to
    the remote ``127.0.0.1:r``."""
    return control_argv(target, control_path, op,
                        [f"{bind_ip}:{local}:127.0.0.1:{remote}" for local, remote in pairs])


def control_argv(target: SshTarget, control_path: Path, op: str,
                 local_forwards: list[str]) -> list[str]:
    """``ssh -O forward|cancel`` with ``-L`` specs (``[bind:]port:host:port`` or
    ``/local/socket:host:port``) for the master on ``control_path``."""
    if op not in ("forward", "cancel"):
        raise ValueError(f"not a forwarding control command: {op}")
    argv = ["ssh", *target.config_args(), "-S", str(control_path), "-O", op]
    for spec in local_forwards:
        argv += ["-L", spec]
    return [*argv, "--", target.alias]


def launcher_payload(source: bytes, request: bytes) -> bytes:
    """What the bootstrap reads from stdin: the source length, the source, one request line."""
    return str(len(source)).encode() + b"\n" + source + request.rstrip(b"\n") + b"\n"


def parse_ssh_g(text: str) -> dict[str, list[str]]:
    """``ssh -G`` output as ``{keyword: [values...]}`` (keywords lower-case, order kept)."""
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            options.setdefault(key.lower(), []).append(value.strip())
    return options


# -- I/O shell ----------------------------------------------------------------------------


def default_config_file() -> Path | None:
    """The ssh config to pass with ``-F``, or None when OpenSSH finds the right one itself.

    OpenSSH reads ``~/.ssh`` of the passwd entry, not ``$HOME``; tether writes its blocks under
    ``$HOME/.ssh``. When the two differ (tests, relocated homes) name tether's file explicitly.
    """
    env = os.environ.get(SSH_CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    ours = paths.ssh_dir() / "config"
    try:
        passwd_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        passwd_home = None
    if ours.is_file() and (passwd_home is None or ours != passwd_home / ".ssh" / "config"):
        return ours
    return None


def resolve_target(host: str, ssh_config: str | os.PathLike | None = None) -> SshTarget:
    """Turn a user's ``--host`` into an :class:`SshTarget` (no network)."""
    host = host.strip()
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise UsageError(f"invalid host {host!r}",
                         "give an alias from your ssh config, user@host, or a tether host name")
    config = Path(ssh_config).expanduser() if ssh_config else default_config_file()
    if config is not None and not config.is_file():
        raise ConfigError(f"ssh config {config} does not exist",
                          "pass --ssh-config with an existing file, or leave it out")
    return SshTarget(_tether_alias(host, config) or host, config)


def _tether_alias(host: str, config: Path | None) -> str | None:
    """``NAME`` -> ``tether-NAME`` when ``tether connect`` wrote that block."""
    if host.startswith("tether-") or "@" in host:
        return None
    try:
        from tether.ssh import config as ssh_config
    except ImportError:
        return None
    try:
        blocks = ssh_config.list_blocks(config or ssh_config.config_path())
    except Exception:  # an unreadable config is reported by ssh -G, with its own words
        return None
    wanted = f"tether-{host}"
    return wanted if any(b.host == wanted for b in blocks) else None


def ssh_options(target: SshTarget, timeout: float = 10.0) -> dict[str, list[str]]:
    """The options OpenSSH will use for ``target`` (``ssh -G``): proves the config parses."""
    argv = ["ssh", *target.config_args(), "-G", "--", target.alias]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SystemDependencyError("the OpenSSH client `ssh` is not installed",
                                    "install openssh-client (tether doctor)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"`ssh -G {target.alias}` did not finish in {timeout:.0f}s") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"ssh cannot resolve {target.describe()}: {detail[0]}",
                          "fix the ssh config (ssh -G ALIAS shows what OpenSSH reads)")
    return parse_ssh_g(proc.stdout)
