"""The sandbox's seccomp filters as raw classic BPF (pure; no libseccomp on the run path).

Two filters, both built once per process and cached:

- the *base* filter, installed by bwrap (`--seccomp FD`) on everything in the sandbox:
  kills foreign architectures, returns EPERM for debugging/kernel/mount/keyring/bpf calls and
  namespace creation, ENOSYS for clone3 (its flags sit behind a pointer seccomp cannot read,
  so libc falls back to clone, whose flags it can), EPERM for setting set-user/group-ID bits
  (chmod family, and creating files or nodes with them: when tether runs as root the sandbox's
  files belong to root, and a set-uid root binary left in the workspace would be a way up for
  any other user of the host; openat2, whose mode sits behind a pointer, gets ENOSYS), and,
  when the network is filtered, refuses
  new sockets of any family but AF_INET/AF_INET6/AF_NETLINK (no AF_UNIX: no path to a host
  socket even if one were mounted).
- the *stacked* socket filter, used when the in-sandbox helper must keep AF_UNIX for itself
  (the allowlist forwarder talks to the host proxy's unix socket): bwrap installs the base
  filter without the socket rule, the helper stacks this one on the user command just before
  exec. Seccomp filters only ever add restrictions, so the command cannot drop either.

The syscall numbers are cross-checked against libseccomp (pyseccomp) in the tests.
"""

from __future__ import annotations

import struct
from functools import lru_cache

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
EPERM, ENOSYS = 1, 38

AF_INET, AF_INET6, AF_NETLINK = 2, 10, 16
S_ISUID_ISGID = 0o6000
# syscall -> index of its mode argument
MODE_ARG = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "open": 2, "openat": 3,
            "creat": 1, "mknod": 1, "mknodat": 2}
# every CLONE_NEW* flag: creating namespaces from inside is how most escapes start
CLONE_NEW_MASK = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "unshare", "setns", "open_by_handle_at", "syslog",
    "lookup_dcookie", "quotactl", "vhangup",
)

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246,
        "kexec_file_load": 320, "mount": 165, "umount2": 166, "pivot_root": 155,
        "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "bpf": 321, "perf_event_open": 298,
        "keyctl": 250, "add_key": 248, "request_key": 249, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167,
        "swapoff": 168, "acct": 163, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "unshare": 272, "setns": 308,
        "open_by_handle_at": 304, "syslog": 103, "lookup_dcookie": 212, "quotactl": 179,
        "vhangup": 153, "clone": 56, "clone3": 435, "socket": 41,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "open": 2,
        "openat": 257, "creat": 85, "mknod": 133, "mknodat": 259, "openat2": 437,
    },
    "aarch64": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kexec_load": 104,
        "kexec_file_load": 294, "mount": 40, "umount2": 39, "pivot_root": 41,
        "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "bpf": 280, "perf_event_open": 241,
        "keyctl": 219, "add_key": 217, "request_key": 218, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224,
        "swapoff": 225, "acct": 89, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "unshare": 97, "setns": 268,
        "open_by_handle_at": 265, "syslog": 116, "lookup_dcookie": 18, "quotactl": 60,
        "vhangup": 58, "clone": 220, "clone3": 435, "socket": 198,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452, "openat": 56, "mknodat": 33,
        "openat2": 437,
    },
}

# classic BPF opcodes
_LD_ABS_W = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16   # struct seccomp_data (little endian arg0 low word)


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _socket_block(nr: int) -> list[bytes]:
    """socket(domain, ...) allowed for inet/inet6/netlink, EPERM for anything else."""
    return [
        _ins(_LD_ABS_W, _OFF_NR),
        _ins(_JEQ_K, nr, 0, 6),
        _ins(_LD_ABS_W, _OFF_ARG0),
        _ins(_JEQ_K, AF_INET, 2, 0),
        _ins(_JEQ_K, AF_INET6, 1, 0),
        _ins(_JEQ_K, AF_NETLINK, 0, 1),
        _ins(_RET_K, RET_ALLOW),
        _ins(_RET_K, RET_ERRNO | EPERM),
    ]


def _arch_check(arch: str) -> list[bytes]:
    out = [_ins(_LD_ABS_W, _OFF_ARCH), _ins(_JEQ_K, AUDIT_ARCH[arch], 1, 0),
           _ins(_RET_K, RET_KILL_PROCESS), _ins(_LD_ABS_W, _OFF_NR)]
    if arch == "x86_64":   # x32 ABI numbers alias the 64-bit ones: refuse them outright
        out += [_ins(_JGE_K, X32_SYSCALL_BIT, 0, 1), _ins(_RET_K, RET_ERRNO | ENOSYS)]
    return out


def build_filter(arch: str, *, deny_sockets: bool) -> bytes:
    """The base filter for `arch` as a packed `struct sock_filter[]` (bwrap --seccomp)."""
    if arch not in SYSCALLS:
        raise ValueError(f"no seccomp syscall table for {arch}")
    table = SYSCALLS[arch]
    prog = _arch_check(arch)
    for name in DENIED:
        prog += [_ins(_JEQ_K, table[name], 0, 1), _ins(_RET_K, RET_ERRNO | EPERM)]
    for name in ("clone3", "openat2"):
        prog += [_ins(_JEQ_K, table[name], 0, 1), _ins(_RET_K, RET_ERRNO | ENOSYS)]
    # clone with any CLONE_NEW* flag -> EPERM; plain fork/thread creation passes
    prog += [_ins(_JEQ_K, table["clone"], 0, 3), _ins(_LD_ABS_W, _OFF_ARG0),
             _ins(_JSET_K, CLONE_NEW_MASK, 0, 1), _ins(_RET_K, RET_ERRNO | EPERM)]
    for name, arg in MODE_ARG.items():
        if name in table:
            prog += _mode_block(table[name], arg)
    if deny_sockets:
        prog += _socket_block(table["socket"])
    prog.append(_ins(_RET_K, RET_ALLOW))
    return b"".join(prog)


def _mode_block(nr: int, arg: int) -> list[bytes]:
    """EPERM when syscall `nr`'s mode argument carries set-user/group-ID bits."""
    return [
        _ins(_LD_ABS_W, _OFF_NR),
        _ins(_JEQ_K, nr, 0, 3),
        _ins(_LD_ABS_W, _OFF_ARG0 + 8 * arg),
        _ins(_JSET_K, S_ISUID_ISGID, 0, 1),
        _ins(_RET_K, RET_ERRNO | EPERM),
    ]


def build_socket_filter(arch: str) -> bytes:
    """The stacked filter the helper puts on the user command (see module docstring)."""
    table = SYSCALLS[arch]
    prog = _arch_check(arch) + _socket_block(table["socket"]) + [_ins(_RET_K, RET_ALLOW)]
    return b"".join(prog)


@lru_cache(maxsize=8)
def cached_filter(arch: str, deny_sockets: bool) -> bytes:
    return build_filter(arch, deny_sockets=deny_sockets)


@lru_cache(maxsize=4)
def cached_socket_filter(arch: str) -> bytes:
    return build_socket_filter(arch)
