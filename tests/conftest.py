"""Shared fixtures: real servers on loopback and an isolated home for CLI tests.

`sshd_server` runs a real OpenSSH sshd on 127.0.0.1 with its own config, host key and
authorized_keys in a temp dir; no system file is read or written (as root sshd needs its
privilege-separation dir /run/sshd, which is created empty if missing).

Note: the OpenSSH client resolves ``~/.ssh`` from the passwd entry, not ``$HOME``: tests that
drive ``ssh`` against a config tether wrote pass ``-F <home>/.ssh/config`` explicitly.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tether.host.platform import find_program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                  proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {host}:{port} did not open within {timeout}s")


def keygen(path: Path, kind: str = "ed25519", comment: str = "tether-test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)],
                   check=True)
    return path


@dataclass
class SshServer:
    """A running sshd and what a client needs to reach it."""

    host: str
    port: int
    user: str
    dir: Path
    host_key: Path  # private host key; .pub beside it
    client_key: Path  # a key already in authorized_keys
    authorized_keys: Path
    known_hosts: Path  # pins the host key under [127.0.0.1]:port
    pid: int
    log: Path
    extra_keys: list[str] = field(default_factory=list)

    @property
    def host_key_pub(self) -> str:
        return self.host_key.with_suffix(".pub").read_text().strip()

    def ssh_args(self, key: Path | None = None) -> list[str]:
        """Arguments for the OpenSSH client, pinned to this server's host key."""
        return ["-F", "/dev/null", "-p", str(self.port), "-i", str(key or self.client_key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null"]

    def ssh(self, *command: str, key: Path | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", *self.ssh_args(key), f"{self.user}@{self.host}", *command],
                              capture_output=True, text=True, timeout=30, **kw)

    def authorize(self, line: str) -> None:
        """Append an authorized_keys line (options allowed: `command="..." ssh-ed25519 ...`)."""
        with self.authorized_keys.open("a") as fh:
            fh.write(line.rstrip("\n") + "\n")
        self.extra_keys.append(line)


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {dir}/sshd.pid
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
PermitUserEnvironment no
AcceptEnv LANG LC_* TETHER_*
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 100:30:200
MaxSessions 50
"""


def start_sshd(workdir: Path, settings: dict[str, str] | None = None
               ) -> tuple[subprocess.Popen, SshServer]:
    """Start sshd in ``workdir`` (used by the session fixture and by tests needing their own);
    ``settings`` replace the values of keywords in SSHD_CONFIG (sshd keeps a keyword's first
    value, so they cannot simply be appended)."""
    sshd = find_program("sshd")
    if sshd is None:
        raise RuntimeError("sshd not found: run scripts/bootstrap.sh (installs openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = keygen(workdir / "ssh_host_ed25519_key", comment="tether-test-host")
    client_key = keygen(workdir / "client_ed25519")
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_key.with_suffix(".pub").read_text())
    authorized_keys.chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = workdir / "sshd_config"
    text = SSHD_CONFIG.format(port=port, host_key=host_key, dir=workdir,
                              authorized_keys=authorized_keys)
    for keyword, value in (settings or {}).items():
        text, count = re.subn(rf"(?m)^{keyword} .*$", f"{keyword} {value}", text)
        assert count == 1, f"{keyword} is not in SSHD_CONFIG"
    config.write_text(text)
    log = workdir / "sshd.log"
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), start_new_session=True)
    wait_for_port(port, proc=proc)
    known_hosts = workdir / "known_hosts"
    pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    return proc, SshServer("127.0.0.1", port, user, workdir, host_key, client_key,
                           authorized_keys, known_hosts, proc.pid, log)


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a process started in its own group, and any sshd session a test left open."""
    from tether.ssh.sshd import stop_group

    if proc.poll() is None:
        stop_group(proc.pid, 5)
        proc.wait(5)


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH sshd on 127.0.0.1 for the whole session (key auth only)."""
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_process(proc)


@dataclass
class IsolatedEnv:
    home: Path
    tether_home: Path
    env: dict[str, str]

    @property
    def ssh_config(self) -> Path:
        return self.home / ".ssh" / "config"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IsolatedEnv:
    """A temp HOME and TETHER_HOME, plain fixed-width output, secrets in a file backend."""
    home = tmp_path / "home"
    home.mkdir()
    tether_home = tmp_path / "tether-home"
    values = {
        "HOME": str(home),
        "TETHER_HOME": str(tether_home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "NO_COLOR": "1",
        "TERM": "dumb",
        "COLUMNS": "120",
        "TETHER_SECRETS_BACKEND": "file",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("TETHER_DEBUG", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL"):
        monkeypatch.delenv(key, raising=False)
    return IsolatedEnv(home, tether_home, dict(os.environ))


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        import json

        return json.loads(self.stdout)


@pytest.fixture
def cli(isolated: IsolatedEnv):
    """Run the real `tether` entry point in-process: ``cli("keys", "list", input=...)``."""
    from tether.cli.main import main

    def run(*args: str, input: str | None = None) -> CliResult:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        stdin = io.StringIO(input or "")
        code = 0
        old_stdin = sys.stdin
        sys.stdin = stdin
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main(list(args))
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdin = old_stdin
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def find_tether_bin() -> str | None:
    """The `tether` console script of the interpreter running the tests (beside
    ``sys.executable``, so `.venv/bin/python -m pytest` works without the venv on PATH), else
    the one on PATH."""
    beside = Path(sys.executable).parent / "tether"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("tether")


@pytest.fixture
def tether_bin() -> str:
    """Path of the installed `tether` console script, for tests that need a real process."""
    path = find_tether_bin()
    assert path, "the tether console script is not installed (pip install -e .)"
    return path


def _processes_started_under(root: Path) -> list[int]:
    """Pids whose starting environment put HOME or TETHER_HOME under ``root``."""
    prefixes = (f"HOME={root}/".encode(), f"TETHER_HOME={root}/".encode(),
                f"HOME={root}\0".encode(), f"TETHER_HOME={root}\0".encode())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = b"\0" + fh.read() + b"\0"
        except OSError:
            continue
        if any(b"\0" + p in env for p in prefixes):
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails halfway (before its `tether down`) must not leave a detached
    workspace, link daemon or sandbox running under its temp home for the rest of the run:
    they keep probing and serving, and slow every later test and benchmark on a 2-core box.
    Only processes started with this test's own tmp_path as HOME or TETHER_HOME are stopped."""
    if "tmp_path" not in request.fixturenames or not os.path.isdir("/proc"):
        yield
        return
    import signal

    root = request.getfixturevalue("tmp_path")  # torn down after this fixture, not before
    yield
    pids = _processes_started_under(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _running(p)]
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone
    except OSError:
        return False


def read_pty_to_end(fd: int, timeout: float = 60.0) -> bytes:
    """Everything a pty child writes until it exits (EIO on Linux) or stays silent for
    ``timeout`` seconds."""
    import select

    out = b""
    while select.select([fd], [], [], timeout)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not chunk:
            break
        out += chunk
    return out
