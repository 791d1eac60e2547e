"""Remote Jupyter kernels over SSH: a jupyter_client provisioner, kernelspecs, attach.

- :mod:`tether.kernels.provisioner`: ``TetherSSHProvisioner`` (entry point
  ``tether-ssh-provisioner``), used by any jupyter_client-based frontend.
- :mod:`tether.kernels.specs`: ``tether kernel add/edit/delete/list`` with health checks.
- :mod:`tether.kernels.attach`: re-attach to a kernel that outlived its link.
- :mod:`tether.kernels.remote_launcher`: the stdlib-only script that runs on the remote side
  (sent over SSH stdin, never installed); protocol in docs/kernel-launch.md.

Names load lazily: importing this package does not import jupyter_client.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TetherSSHProvisioner": "tether.kernels.provisioner",
    "KernelLifetime": "tether.kernels.provisioner",
    "LinkDropPolicy": "tether.kernels.provisioner",
    "RemoteKernelSpec": "tether.kernels.specs",
    "InterruptMode": "tether.kernels.specs",
    "KernelEntry": "tether.kernels.specs",
    "Health": "tether.kernels.specs",
    "add_kernel": "tether.kernels.specs",
    "edit_kernel": "tether.kernels.specs",
    "delete_kernel": "tether.kernels.specs",
    "list_kernels": "tether.kernels.specs",
    "check_spec": "tether.kernels.specs",
    "AttachedKernel": "tether.kernels.attach",
    "attach_kernel": "tether.kernels.attach",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
