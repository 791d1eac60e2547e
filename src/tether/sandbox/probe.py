"""Host facts: what this machine can enforce (bwrap, user namespaces, seccomp, Landlock, cgroups).

`probe()` is the I/O shell that fills `HostFacts`; it runs once per process (cached) because
the run path must stay a few milliseconds. It does not trust feature files alone: user
namespaces and seccomp are proven by starting bwrap once with the real filter.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from tether.sandbox.profiles import (
    ETC_ALLOW,
    ETC_NETWORK,
    SYSTEM_DIRS,
    CgroupFacts,
    HostFacts,
)

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
LANDLOCK_CREATE_RULESET = {"x86_64": 444, "aarch64": 444}


@lru_cache(maxsize=1)
def probe() -> HostFacts:
    problems: list[str] = []
    arch = _ARCH.get(platform.machine(), platform.machine())
    bwrap = shutil.which("bwrap") or next(
        (p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap") if os.access(p, os.X_OK)), None)
    version = None
    userns = seccomp_ok = False
    if bwrap is None:
        problems.append("bubblewrap (bwrap) is not installed")
    else:
        version = _bwrap_version(bwrap)
        userns, seccomp_ok, why = _trial(bwrap, arch)
        if why:
            problems.append(why)
    abi = landlock_abi(arch)
    cg, cg_problem = probe_cgroups()
    if cg_problem:
        problems.append(cg_problem)
    system_dirs = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            system_dirs.append((d, os.readlink(d)))
        elif os.path.isdir(d):
            system_dirs.append((d, None))
    etc = tuple(e for e in (*ETC_ALLOW, *ETC_NETWORK) if os.path.exists("/etc/" + e))
    helper = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.access(p, os.X_OK)), None)
    from tether.sandbox._helper_c import helper_binary

    native = helper_binary()
    if helper is None and native is None:
        problems.append("neither a C compiler nor /usr/bin/python3: Landlock and the domain "
                        "allowlist need one of them for their in-sandbox helper")
    return HostFacts(bwrap=bwrap, bwrap_version=version, userns=userns, seccomp=seccomp_ok,
                     arch=arch, landlock_abi=abi, cgroup=cg, system_dirs=tuple(system_dirs),
                     etc_entries=etc, helper_python=helper, helper_native=native,
                     problems=tuple(problems))


def _bwrap_version(bwrap: str) -> str | None:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().removeprefix("bubblewrap ") or None


def _trial(bwrap: str, arch: str) -> tuple[bool, bool, str | None]:
    """Start bwrap with every namespace and the real seccomp filter: both work or we know why."""
    from tether.sandbox.seccomp import SYSCALLS, cached_filter

    base = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    try:
        r = subprocess.run([*base, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, False, f"bwrap failed to start: {exc}"
    if r.returncode != 0:
        return False, False, ("bwrap cannot create namespaces: "
                              + r.stderr.decode(errors="replace").strip()[:200])
    if arch not in SYSCALLS:
        return True, False, f"no seccomp syscall table for {arch}"
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, cached_filter(arch, True))
        os.close(wfd)
        r = subprocess.run([*base, "--seccomp", str(rfd), "true"], capture_output=True,
                           pass_fds=(rfd,), timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return True, False, f"seccomp trial failed: {exc}"
    finally:
        os.close(rfd)
    if r.returncode != 0:
        return True, False, ("seccomp filter rejected: "
                             + r.stderr.decode(errors="replace").strip()[:200])
    return True, True, None


def landlock_abi(arch: str) -> int:
    """landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) -> ABI or 0."""
    nr = LANDLOCK_CREATE_RULESET.get(arch)
    if nr is None:
        return 0
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(nr), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(abi), 0)


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                out.append((parts[1], parts[2], parts[3]))
    return out


def _own_cgroups() -> dict[str, str]:
    """controller -> our cgroup path; '' is the v2 entry."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def cgroup_dirs() -> dict[str, Path]:
    """controller ('memory', 'pids', 'cpu' or 'unified') -> the directory runs are made under."""
    own = _own_cgroups()
    dirs: dict[str, Path] = {}
    for mountpoint, fstype, opts in _mounts():
        if fstype == "cgroup2" and "" in own:
            dirs["unified"] = Path(mountpoint + own[""].rstrip("/"))
        elif fstype == "cgroup":
            for c in ("memory", "pids", "cpu"):
                if c in opts.split(",") and c in own:
                    dirs[c] = Path(mountpoint + own[c].rstrip("/"))
    return dirs


def probe_cgroups() -> tuple[CgroupFacts, str | None]:
    dirs = cgroup_dirs()
    v1 = {c: d for c, d in dirs.items() if c != "unified" and os.access(d, os.W_OK)}
    v2 = dirs.get("unified")
    if v2 is not None and os.access(v2, os.W_OK):
        ctrl = _v2_controllers(v2)
        if {"memory", "pids"} & ctrl:
            return CgroupFacts(version="v2", memory="memory" in ctrl, pids="pids" in ctrl,
                               cpu="cpu" in ctrl,
                               memory_peak=(v2 / "memory.peak").exists()), None
    if v1:
        return CgroupFacts(version="v1", memory="memory" in v1, pids="pids" in v1,
                           cpu="cpu" in v1,
                           memory_peak="memory" in v1), None
    return CgroupFacts(), ("no writable cgroup (v1 or v2) for memory/pids/cpu limits: "
                           "pids and cpu limits cannot be enforced, memory falls back to "
                           "RLIMIT_AS")


def _v2_controllers(d: Path) -> set[str]:
    """Controllers a child of `d` can use: enabled in d's subtree_control (or enable-able)."""
    try:
        enabled = set((d / "cgroup.subtree_control").read_text().split())
        available = set((d / "cgroup.controllers").read_text().split())
    except OSError:
        return set()
    if not (available - enabled):
        return enabled
    # enabling needs an empty cgroup ("no internal processes"), except at the root
    try:
        procs = (d / "cgroup.procs").read_text().split()
    except OSError:
        return enabled
    if procs and d != Path("/sys/fs/cgroup"):
        return enabled
    wanted = available & {"memory", "pids", "cpu"}
    try:
        (d / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
    except OSError:
        return enabled
    return enabled | wanted


def report(host: HostFacts) -> dict:
    """What is enforced here, per mechanism and per profile (for `tether sandbox probe`)."""
    from tether.sandbox.profiles import (
        PROFILES,
        SCOPE_NAMES,
        landlock_scopes,
        missing_features,
        resolve_spec,
    )

    cg = host.cgroup
    mechanisms = {
        "bubblewrap": host.bwrap_version or "missing",
        "namespaces": ("user, mount, pid, ipc, uts, cgroup, net (--unshare-all)"
                       if host.userns else "unavailable"),
        "seccomp": ("raw BPF filter: ptrace, process_vm_*, kexec, mount family, bpf, "
                    "perf_event_open, keyring, io_uring, namespace creation, set-uid/gid bits "
                    "denied; non-inet sockets denied when the network is filtered"
                    if host.seccomp else "unavailable"),
        "landlock": (f"ABI {host.landlock_abi}: writes confined to writable mounts, /tmp, "
                     "home, /dev" + ("; signals scoped" if host.landlock_abi >= 6 else "")
                     + " (profiles with landlock = true: restrictive; elsewhere the mount "
                       "namespace alone confines files); helper: "
                     + ("native" if host.helper_native else "python")
                     if host.landlock_abi else "unavailable (mount namespace confines files)"),
        "abstract_unix_sockets": _scoping(host),
        "cgroup": (f"{cg.version}: " + ", ".join(
            n for n, ok in (("memory", cg.memory), ("pids", cg.pids), ("cpu", cg.cpu)) if ok)
            if cg.version != "none" else "none: memory via RLIMIT_AS only; pids/cpu refused"),
        "network_allowlist": ("HTTP/CONNECT(+SNI)/SOCKS5 proxy on a bound unix socket"
                              if host.helper_python or host.helper_native
                              else "unavailable (no C compiler, no /usr/bin/python3)"),
        "timeout": "SIGKILL of bwrap; the pid namespace dies with it",
        "identity": ("host root (tether runs as root): the sandbox's files are root's, so "
                     "confinement rests on the mounts (read-only system, /proc/sys read-only, "
                     "nothing of home), no capabilities, seccomp and Landlock"
                     if os.getuid() == 0 else
                     f"uid {os.getuid()}: the sandbox can touch only what this user can"),
    }
    profiles = {}
    for name in PROFILES:
        spec = resolve_spec(name, ["true"], workdir=Path("/workspace"))
        missing = missing_features(spec, host)
        scopes = landlock_scopes(spec, host)
        profiles[name] = {"enforceable": not missing, "missing": missing,
                          "network": spec.network.value, "landlock": spec.landlock,
                          "scoped": [n for bit, n in SCOPE_NAMES.items() if scopes & bit],
                          "limits": {k: v for k, v in vars(spec.limits).items() if v}}
    from dataclasses import asdict

    facts = asdict(host)
    facts["system_dirs"] = [list(x) for x in host.system_dirs]
    return {"arch": host.arch, "mechanisms": mechanisms, "profiles": profiles,
            "facts": facts, "problems": list(host.problems)}


def _scoping(host: HostFacts) -> str:
    """Whether a sandbox can reach the host's abstract unix sockets (dbus, X11, runtimes)."""
    if host.landlock_abi < 6:
        return (f"NOT scoped: needs Landlock ABI 6 (this kernel: {host.landlock_abi}); "
                "moderate and permissive share the host network namespace and can connect "
                "to the host's abstract unix sockets")
    if host.helper_native is None and host.helper_python is None:
        return ("NOT scoped: no helper to apply Landlock (no C compiler, no /usr/bin/python3); "
                "moderate and permissive can connect to the host's abstract unix sockets")
    return (f"scoped to the sandbox in every profile (Landlock ABI {host.landlock_abi}); "
            "with --rootfs only by the native helper")


def sandbox_probe() -> dict:
    """The public API of `tether sandbox probe --json`."""
    return report(probe())
