"""Landlock and the in-sandbox helper's command line (pure apart from locating the script).

Landlock is applied from inside the sandbox by the helper (the C one from `_helper_c.py` when
a compiler built it, else `_helper.py`; both also run the allowlist forwarder), just before it
execs the command: applying it to bwrap itself is impossible (a Landlock domain forbids mount(2), which
bwrap needs). It confines *writes* to the writable mounts, /tmp, /var/tmp, /dev/shm, the sandbox home and
/dev device files; reads are already confined by the mount namespace (only bound paths exist).
From ABI 6 it also scopes, in every profile, abstract unix sockets (and, with the file rules,
signals) to the command's own domain (`profiles.landlock_scopes`).
"""

from __future__ import annotations

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
    landlock_scopes,
)

HELPER_FILE = str(Path(__file__).with_name("_helper.py"))
HELPER_TARGET = HELPER_DIR + "/helper.py"
NATIVE_TARGET = HELPER_DIR + "/helper"


def helper_options(spec: SandboxSpec, host: HostFacts) -> list[str]:
    """The helper's flags for `spec` (see _helper.py for their meaning)."""
    from tether.sandbox.seccomp import cached_socket_filter

    opts: list[str] = []
    if spec.network is NetworkMode.ALLOWLIST:
        opts += ["--forward", PROXY_SOCKET, str(PROXY_PORT), str(SOCKS_PORT),
                 "--filter", cached_socket_filter(host.arch).hex()]
    if spec.landlock and host.landlock_abi >= 1:
        writable = {str(m.target) for m in spec.mounts if not m.read_only}
        opts += ["--landlock", str(host.landlock_abi)]
        for path in sorted({*writable, "/tmp", "/var/tmp", "/dev/shm", SANDBOX_HOME}):
            opts += ["--rw", path]
        opts += ["--dev", "/dev"]
    scopes = landlock_scopes(spec, host)
    if scopes:
        opts += ["--scope", str(scopes)]
    return opts


def _native(spec: SandboxSpec, host: HostFacts) -> bool:
    """The C helper does the same in ~1 ms instead of a Python start."""
    return host.helper_native is not None


def helper_argv(spec: SandboxSpec, host: HostFacts) -> list[str]:
    if _native(spec, host):
        return [NATIVE_TARGET, *helper_options(spec, host), "--"]
    if host.helper_python is None:
        return []
    return [host.helper_python, "-I", "-S", HELPER_TARGET, *helper_options(spec, host), "--"]


def helper_file(spec: SandboxSpec, host: HostFacts) -> str:
    """The host file bwrap_argv binds for `helper_argv(spec, host)`."""
    return host.helper_native if _native(spec, host) else HELPER_FILE
