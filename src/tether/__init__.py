"""tether: secure workspaces on borrowed machines.

The public Python API. Names load on first use, so `import tether` stays cheap (the CLI's
fast path depends on it); `tether.__all__` is frozen by a test.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing itself costs the CLI's exec fast path ~10 ms to import
if TYPE_CHECKING:
    from typing import Any

from tether._version import __version__
from tether.errors import TetherError

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "run_checks": "tether.doctor",
    "snapshot_push": "tether.snapshot",
    "snapshot_pull": "tether.snapshot",
    "snapshot_list": "tether.snapshot",
    "snapshot_diff": "tether.snapshot",
    "snapshot_verify": "tether.snapshot",
    "snapshot_prune": "tether.snapshot",
    "snapshot_forget": "tether.snapshot",
    "snapshot_repair": "tether.snapshot",
    "sandbox_run": "tether.sandbox.runner",
    "sandbox_probe": "tether.sandbox.probe",
    "SandboxClient": "tether.sandbox.client",
    "AsyncSandboxClient": "tether.sandbox.client",
    "WarmPool": "tether.sandbox.pool",
    "exec": "tether.link.api",
    "exec_async": "tether.link.api",
    "copy": "tether.link.api",
    "copy_async": "tether.link.api",
    "forward": "tether.link.api",
    "forward_async": "tether.link.api",
    "status": "tether.link.api",
    "status_async": "tether.link.api",
    "ExecResult": "tether.link.api",
    "CopyResult": "tether.link.api",
    "HostStatus": "tether.link.api",
    "Forwarding": "tether.link.api",
    "up": "tether.host.api",
    "down": "tether.host.api",
    "host_status": "tether.host.api",
    "pair_code": "tether.host.api",
    "HostHandle": "tether.host.api",
    "connect": "tether.link.pairing",
    "ConnectionString": "tether.link.connstring",
    "HostProfile": "tether.link.profiles",
    "KeyInfo": "tether.ssh.keys",
    "generate_key": "tether.ssh.keys",
    "list_keys": "tether.ssh.keys",
    "get_key": "tether.ssh.keys",
    "delete_key": "tether.ssh.keys",
    "fingerprint_of_public_key": "tether.ssh.keys",
    "ManagedBlock": "tether.ssh.config",
    "upsert_block": "tether.ssh.config",
    "remove_block": "tether.ssh.config",
    "list_blocks": "tether.ssh.config",
    "add_known_host": "tether.ssh.known_hosts",
    "remove_known_host": "tether.ssh.known_hosts",
    "set_git_identity": "tether.git_identity",
    "get_git_identity": "tether.git_identity",
    "login_forge": "tether.forges",
    "setup_forge": "tether.forges",
    "RemoteKernelSpec": "tether.kernels.specs",
    "add_kernel": "tether.kernels.specs",
    "edit_kernel": "tether.kernels.specs",
    "delete_kernel": "tether.kernels.specs",
    "list_kernels": "tether.kernels.specs",
    "attach_kernel": "tether.kernels.attach",
    "TetherSSHProvisioner": "tether.kernels.provisioner",
    "install_code_server": "tether.ide.api",
    "sync_once": "tether.sync.api",
    "sync_once_async": "tether.sync.api",
    "sync_watch": "tether.sync.api",
    "sync_list": "tether.sync.api",
    "sync_status": "tether.sync.api",
    "sync_stop": "tether.sync.api",
    "sync_conflicts": "tether.sync.api",
    "sync_resolve": "tether.sync.api",
    "SyncResult": "tether.sync.api",
    "reconcile": "tether.sync.reconcile",
}

__all__ = ["TetherError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
