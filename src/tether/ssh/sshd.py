"""The workspace's own OpenSSH sshd: config, persistent host key, start and stop.

sshd runs as the current user with a config tether writes under ``<state>/host``: listening on
127.0.0.1 only, public keys only, its own authorized_keys, and a persistent ed25519 host key
(the workspace identity: the same key next session, so clients keep trusting it). It runs in
its own process group so stopping the workspace never leaves an orphan sshd behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether import paths
from tether.errors import ConnectError, LocalIOError, SystemDependencyError
from tether.host import platform as plat

HOST_KEY_NAME = "ssh_host_ed25519_key"

# Environment variables an SSH session on a notebook needs to see the notebook's GPU, CUDA and
# Python setup; sshd otherwise starts sessions with a bare environment.
SESSION_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "COLAB_", "TPU_", "XLA_", "TF_", "KAGGLE_",
                        "LD_LIBRARY", "LIBRARY_PATH", "PYTHON", "CUDNN", "NCCL_", "HF_",
                        "JAX_", "TORCH")
SESSION_ENV_NAMES = ("PATH", "LD_LIBRARY_PATH", "LIBRARY_PATH", "PYTHONPATH", "GCE_METADATA_HOST",
                     "LD_PRELOAD")


@dataclass(frozen=True)
class SshdSettings:
    port: int
    host_key: Path
    authorized_keys: Path
    pid_file: Path
    session_env: tuple[tuple[str, str], ...] = ()
    log_level: str = "VERBOSE"
    extra: tuple[str, ...] = field(default_factory=tuple)


def _quote(value: str) -> str:
    if any(c in value for c in '"\n\r') :
        raise ValueError(f"cannot put {value!r} into sshd_config")
    return f'"{value}"' if (" " in value or "\t" in value) else value


def render_config(s: SshdSettings) -> str:
    """The sshd_config text (pure). Key-only, loopback-only, forwarding allowed."""
    lines = [
        f"Port {s.port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {_quote(str(s.host_key))}",
        f"PidFile {_quote(str(s.pid_file))}",
        f"AuthorizedKeysFile {_quote(str(s.authorized_keys))}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "ChallengeResponseAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        # The files live in tether's 0700 state dir, which the user owns; StrictModes would
        # also demand the whole home path be non-group-writable, which notebooks often break.
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes",
        "GatewayPorts no",
        "X11Forwarding no",
        "PrintMotd no",
        "PermitUserEnvironment no",
        "AcceptEnv LANG LC_* TETHER_*",
        "Subsystem sftp internal-sftp",
        f"LogLevel {s.log_level}",
        "MaxStartups 100:30:200",
        "MaxSessions 50",
        "ClientAliveInterval 30",
        "ClientAliveCountMax 4",
    ]
    if s.session_env:
        lines.append("SetEnv " + " ".join(_quote(f"{k}={v}") for k, v in s.session_env))
    lines.extend(s.extra)
    return "\n".join(lines) + "\n"


def session_env(environ: dict[str, str], kind: plat.PlatformKind,
                workspace: Path | None = None) -> tuple[tuple[str, str], ...]:
    """Variables to hand to every SSH session (pure).

    On Colab and Kaggle the notebook's GPU/CUDA/Python environment is passed through, so
    `nvidia-smi` and `python -c "import torch"` behave in SSH as they do in the notebook.
    """
    out: dict[str, str] = {}
    if kind in (plat.PlatformKind.COLAB, plat.PlatformKind.KAGGLE):
        for key, value in environ.items():
            if not value or any(c in value for c in '"\n\r'):
                continue
            if key in SESSION_ENV_NAMES or key.startswith(SESSION_ENV_PREFIXES):
                out[key] = value
    if workspace is not None:
        out["TETHER_WORKSPACE"] = str(workspace)
    return tuple(sorted(out.items()))


def ensure_sshd(info: plat.PlatformInfo | None = None, *, install: bool = True,
                announce=print) -> str:
    """Path of sshd; installs openssh-server as root on apt Linux (and says so)."""
    found = plat.find_program("sshd")
    if found:
        return found
    info = info or plat.detect()
    command = plat.install_command(info, "sshd")
    if install and info.is_root and info.package_manager == "apt":
        announce("sshd is missing: installing openssh-server with apt-get (running as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "openssh-server"]):
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
                raise SystemDependencyError(f"installing openssh-server failed: {tail[0]}",
                                            f"run it yourself: {command}")
        found = plat.find_program("sshd")
        if found:
            return found
    raise SystemDependencyError(
        "OpenSSH's sshd is not installed",
        f"install it with: {command}" if command else "install the OpenSSH server for your OS")


def ensure_host_key(directory: Path) -> Path:
    """The persistent ed25519 host key in ``directory``; made once, reused every session."""
    paths.ensure_dir(directory)
    key = directory / HOST_KEY_NAME
    pub = key.with_name(key.name + ".pub")
    if key.exists() and pub.exists():
        return key
    for stale in (key, pub):
        stale.unlink(missing_ok=True)
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tether-host",
                           "-f", str(key)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LocalIOError(f"could not create the host key: {proc.stderr.strip()}")
    os.chmod(key, 0o600)
    return key


def host_public_key(key: Path) -> str:
    """The OpenSSH public key line of a host key, without its comment."""
    parts = key.with_name(key.name + ".pub").read_text().split()
    return f"{parts[0]} {parts[1]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A running sshd in its own process group."""

    def __init__(self, directory: Path, *, session_env: tuple[tuple[str, str], ...] = (),
                 port: int | None = None) -> None:
        self.dir = directory
        self.session_env = session_env
        self.requested_port = port
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = directory / "sshd.log"
        self.config = directory / "sshd_config"
        self.authorized_keys = directory / "authorized_keys"
        self.host_key = directory / HOST_KEY_NAME

    def start(self, sshd_path: str, timeout: float = 10.0) -> None:
        paths.ensure_dir(self.dir)
        ensure_host_key(self.dir)
        if not self.authorized_keys.exists():
            paths.atomic_write(self.authorized_keys, "", mode=0o600)
        if os.geteuid() == 0:  # privilege separation dir, required when sshd runs as root
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = self.requested_port or free_port()
        settings = SshdSettings(self.port, self.host_key, self.authorized_keys,
                                self.dir / "sshd.pid", self.session_env)
        paths.atomic_write(self.config, render_config(settings), mode=0o600)
        check = subprocess.run([sshd_path, "-t", "-f", str(self.config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemDependencyError(f"sshd rejected its config: {check.stderr.strip()}")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sshd_path, "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log, start_new_session=True)
        self._wait_listening(timeout)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise ConnectError(f"sshd exited at start: {tail[0]}",
                                   f"see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConnectError(f"sshd did not listen on port {self.port} within {timeout:.0f}s",
                           f"see {self.log}")

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sshd and every session it started (the whole process group)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_group(proc.pid, timeout)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def descendant_groups(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    """Process groups of every descendant of ``root`` (pure; ``table``: pid -> (ppid, pgid)).

    sshd puts each connection, and each session under it, into a session of its own
    (setsid), so killing the listener's group alone leaves every open session running.
    """
    children: dict[int, list[int]] = {}
    for pid, (ppid, _pgid) in table.items():
        children.setdefault(ppid, []).append(pid)
    groups: set[int] = set()
    todo = list(children.get(root, ()))
    seen = {root}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        groups.add(table[pid][1])
        todo.extend(children.get(pid, ()))
    return groups


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of the live processes we can see (/proc on Linux, else `ps`).

    Zombies are left out: they hold no resources, and one nobody reaps yet (common in
    containers) would otherwise look like a process that ignores SIGKILL.
    """
    table: dict[int, tuple[int, int]] = {}
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # RACE: the process exited while we listed /proc
                continue
            # the command name is in parentheses and may itself hold spaces or ")"
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), int(fields[2]))
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True,
                         text=True, check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[:3]) and "Z" not in parts[3]:
            table[int(parts[0])] = (int(parts[1]), int(parts[2]))
    return table


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a group; False when the group is gone or not ours to signal."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGTERM a process group and the groups of all its descendants, then SIGKILL what is
    left after ``timeout``.

    The group is stopped (SIGSTOP) while its descendants are listed, so a connection sshd
    accepts meanwhile cannot slip out of the list.
    """
    if not _signal_group(pgid, signal.SIGSTOP):
        return
    groups = {pgid} | (descendant_groups(process_table(), pgid) - {os.getpgrp()})
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while groups and time.monotonic() < deadline:
        # reap our own child, else the group lingers as a zombie
        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
        groups &= {group for _ppid, group in process_table().values()}
        if groups:
            time.sleep(0.05)
    for group in groups:
        _signal_group(group, signal.SIGKILL)
