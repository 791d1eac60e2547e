"""Fixtures for remote-kernel tests: the real sshd as "the remote", reached through an ssh
config file with a direct alias, a ProxyJump alias and a ProxyCommand alias, and an isolated
Jupyter data/runtime dir so kernelspecs never touch the real ones."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# the helpers module must import the same way whether or not tests/ is a package
sys.path.insert(0, str(Path(__file__).parent))
from kernel_helpers import KernelProcs, leftovers  # noqa: E402

from tether.kernels import hostlink, specs

PY = sys.executable  # the "remote" python: the same interpreter, with ipykernel


@dataclass
class Remote:
    config: Path          # ssh config with the aliases below
    sshd_port: int        # the sshd behind every alias
    alias: str = "rk"     # direct
    jump: str = "rk-jump"  # ProxyJump through rk
    proxycmd: str = "rk-pc"  # ProxyCommand ssh -W through rk


@pytest.fixture(scope="session")
def remote(sshd_server, tmp_path_factory) -> Remote:
    d = tmp_path_factory.mktemp("kernel-ssh")
    cfg = d / "ssh_config"
    s = sshd_server
    common = (f"  HostName 127.0.0.1\n  Port {s.port}\n  User {s.user}\n"
              f"  IdentityFile {s.client_key}\n  IdentitiesOnly yes\n"
              f"  UserKnownHostsFile {s.known_hosts}\n  StrictHostKeyChecking yes\n"
              "  GlobalKnownHostsFile /dev/null\n")
    cfg.write_text(
        f"Host rk\n{common}\n"
        f"Host rk-jump\n{common}  ProxyJump rk\n\n"
        f"Host rk-pc\n{common}  ProxyCommand ssh -F {cfg} -W %h:%p rk\n")
    cfg.chmod(0o600)
    return Remote(cfg, s.port)


@dataclass
class KernelEnv:
    remote: Remote
    data_dir: Path
    runtime_dir: Path
    state_dir: Path  # the remote launcher's state dir (per test)
    home: Path  # the test's isolated HOME, which local ssh processes inherit

    @property
    def procs(self) -> KernelProcs:
        """This test's kernels, launchers and local ssh (for ``wait_gone``)."""
        return KernelProcs(self.state_dir, self.remote.sshd_port, self.home)

    def spec(self, name: str = "rk", *, host: str | None = None, python: str = PY,
             interrupt_mode: str = "signal", lifetime: str = "session", grace_s: float = 0,
             remote_state_dir: str | None = None, **extra) -> specs.RemoteKernelSpec:
        """Install a kernelspec without the (slower) health checks; argv cached as add does."""
        spec = specs.RemoteKernelSpec(
            name=name, host=host or self.remote.alias, python=python,
            ssh_config=str(self.remote.config),
            interrupt_mode=specs.InterruptMode(interrupt_mode), lifetime=lifetime,
            grace_s=grace_s, remote_state_dir=remote_state_dir or str(self.state_dir),
            remote_argv=(PY, "-m", "ipykernel_launcher", "-f", "{connection_file}"), **extra)
        return specs.add_kernel(spec, check=False, replace_existing=True).spec


@pytest.fixture
def kenv(isolated, remote, tmp_path, monkeypatch) -> KernelEnv:
    data = tmp_path / "jupyter-data"
    runtime = tmp_path / "jupyter-runtime"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("TETHER_SSH_CONFIG", str(remote.config))
    # a host link closes with its last kernel unless a test says otherwise, so every test's
    # no-orphan check also covers the link; tests of the shared link raise it
    monkeypatch.setenv(hostlink.IDLE_ENV, "0")
    state = tmp_path / "remote-state"
    env = KernelEnv(remote, data, runtime, state, isolated.home)
    yield env
    hostlink.close_all()
    # whatever a test left behind is a bug, but never leave processes for the next test
    for pids in leftovers(env.procs).values():
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
