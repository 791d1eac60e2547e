"""Landlock and the in-sandbox helper's command line (pure apart from locating the script).

Landlock is applied from inside the sandbox by `_helper.py`, just before it execs the
command: applying it to bwrap itself is impossible (a Landlock domain forbids mount(2), which
bwrap needs). It confines *writes* to the writable mounts, /tmp, /var/tmp, /dev/shm, the sandbox home and
/dev device files; reads are already confined by the mount namespace (only bound paths exist).
From ABI 6 it also scopes abstract unix sockets and signals to the command's own domain.
"""

from __future__ import annotations

import json
from pathlib import Path

from tether.sandbox.profiles import (
    HELPER_DIR,
    PROXY_PORT,
    PROXY_SOCKET,
    SANDBOX_HOME,
    SOCKS_PORT,
    HostFacts,
    NetworkMode,
    SandboxSpec,
)

HELPER_FILE = str(Path(__file__).with_name("_helper.py"))
HELPER_TARGET = HELPER_DIR + "/helper.py"


def helper_config(spec: SandboxSpec, host: HostFacts) -> dict:
    from tether.sandbox.seccomp import cached_socket_filter

    config: dict = {}
    if spec.network is NetworkMode.ALLOWLIST:
        config.update(forward=True, ports=[PROXY_PORT, SOCKS_PORT], socket=PROXY_SOCKET,
                      socket_filter=cached_socket_filter(host.arch).hex())
    if spec.landlock and host.landlock_abi >= 1:
        writable = [str(m.target) for m in spec.mounts if not m.read_only]
        config.update(landlock=host.landlock_abi,
                      writable=sorted({*writable, "/tmp", "/var/tmp", "/dev/shm", SANDBOX_HOME}),
                      dev_writable=["/dev"])
    return config


def helper_argv(spec: SandboxSpec, host: HostFacts) -> list[str]:
    if host.helper_python is None:
        return []
    config = json.dumps(helper_config(spec, host), separators=(",", ":"))
    return [host.helper_python, "-I", "-S", HELPER_TARGET, config, "--"]
