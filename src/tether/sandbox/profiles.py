"""Sandbox profiles as data, and the pure mapping profile + flags -> SandboxSpec -> bwrap argv.

Nothing here touches the system: host facts come in as a `HostFacts` value (made by
`tether.sandbox.probe`), configuration as an already-parsed `[sandbox]` table. That keeps
every decision about *what* is isolated testable table-driven, and the runner a thin shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path, PurePosixPath

from tether.errors import ConfigError, UsageError


class NetworkMode(str, Enum):
    """What the sandbox may reach. Named by what it allows; there is no "unset"."""

    NONE = "none"            # a fresh network namespace with only loopback
    ALLOWLIST = "allowlist"  # no network, except named domains through the host proxy
    FULL = "full"            # the host's network namespace


@dataclass(frozen=True)
class Mount:
    source: Path
    target: Path
    read_only: bool


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class SandboxSpec:
    profile: str
    command: tuple[str, ...]
    workdir: Path                 # the host workspace directory (bound at the same path)
    cwd: str                      # working directory inside the sandbox
    network: NetworkMode
    allow_domains: tuple[str, ...]
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]   # the complete environment of the command
    limits: Limits
    rootfs: Path | None = None         # a separate distribution's root instead of the host's
    writable_layer: Path | None = None  # a persistent dir mounted as the sandbox's home
    landlock: bool = False             # apply Landlock inside (needs the in-sandbox helper)
    hostname: str = "sandbox"
    # host resolver map for the allowlist proxy (tests, split-horizon setups): name -> ip
    resolve: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    network: NetworkMode
    workspace_writable: bool
    landlock: bool
    # host environment variables passed through when set (besides explicit --env)
    pass_env: tuple[str, ...]
    limits: Limits


_BASE_ENV = ("LANG", "LC_ALL", "TERM", "TZ")

PROFILES: dict[str, Profile] = {
    p.name: p for p in (
        Profile("restrictive", "no network, workspace read-only, nothing from home",
                NetworkMode.NONE, workspace_writable=False, landlock=True,
                pass_env=(), limits=Limits(memory_bytes=2 << 30, pids=256)),
        Profile("moderate", "network, workspace writable, nothing from home",
                NetworkMode.FULL, workspace_writable=True, landlock=False,
                pass_env=_BASE_ENV, limits=Limits()),
        Profile("permissive", "network, current directory writable, chosen env passed",
                NetworkMode.FULL, workspace_writable=True, landlock=False,
                pass_env=(*_BASE_ENV, "COLORTERM", "EDITOR", "PAGER", "HTTP_PROXY",
                          "HTTPS_PROXY", "NO_PROXY"),
                limits=Limits()),
    )
}
DEFAULT_PROFILE = "moderate"

SANDBOX_HOME = "/home/sandbox"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_PORT = 3128              # HTTP/CONNECT proxy inside the sandbox's network namespace
SOCKS_PORT = 1080
PROXY_SOCKET = "/run/tether/proxy.sock"
HELPER_DIR = "/run/tether"

# /etc entries a program needs to run; everything else in /etc (shadow, ssh host keys,
# ssl/private, pip.conf/npmrc with index tokens, environment with whatever an admin exported,
# machine-id) stays out. passwd/group/hostname
# are generated so the sandbox does not learn the host's accounts.
ETC_ALLOW = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "debian_version",
    "fonts", "gai.conf", "host.conf", "inputrc", "java-17-openjdk",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "locale.alias", "localtime", "magic",
    "magic.mime", "mime.types", "nsswitch.conf", "os-release", "profile", "protocols",
    "python3", "python3.11", "rpc", "services", "ssl/certs", "ssl/openssl.cnf", "timezone",
    "xdg",
)
ETC_NETWORK = ("resolv.conf", "hosts")   # only with the host network
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Inside a writable workspace, what host tools would act on stays read-only. git runs hooks and
# config-named programs (core.hooksPath, core.fsmonitor, filters) on the host the next time the
# user runs git; `commondir` moves the config elsewhere; modules/ and worktrees/ hold the
# gitdirs (config, hooks) of submodules and linked worktrees. tether.toml sets how the next
# sandbox is built (it applies only when trusted, and a changed one is refused; this keeps a
# run from even changing it).
GIT_GUARDED = ("config", "hooks", "commondir", "config.worktree", "modules", "worktrees")
GUARD_CANDIDATES = (".git", *(f".git/{name}" for name in GIT_GUARDED), "tether.toml")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.I)
_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class CgroupFacts:
    version: str = "none"          # "v2", "v1" or "none"
    memory: bool = False           # a writable controller tether can put a run under
    pids: bool = False
    cpu: bool = False
    memory_peak: bool = False      # v2 memory.peak / v1 memory.max_usage_in_bytes


@dataclass(frozen=True)
class HostFacts:
    """What this host can enforce; made by `probe`, consumed by the pure argv builder."""

    bwrap: str | None = None
    bwrap_version: str | None = None
    userns: bool = False
    seccomp: bool = False
    arch: str = "x86_64"
    landlock_abi: int = 0
    cgroup: CgroupFacts = field(default_factory=CgroupFacts)
    # (path, symlink target or None) for each of SYSTEM_DIRS that exists on the host
    system_dirs: tuple[tuple[str, str | None], ...] = ()
    etc_entries: tuple[str, ...] = ()     # ETC_ALLOW + ETC_NETWORK entries present
    helper_python: str | None = None      # a python3 usable inside the sandbox
    helper_native: str | None = None      # the built C helper (Landlock without a Python start)
    problems: tuple[str, ...] = ()


def parse_size(text: str | int | None) -> int | None:
    """'512M', '1G', '1.5GiB', 1048576 -> bytes (binary units)."""
    if text is None or isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"invalid size {text!r}", hint="use a number with K, M, G or T, e.g. 1G")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise UsageError(f"invalid size {text!r}", hint="the size must be positive")
    return value


def parse_mount(text: str, base: Path) -> Mount:
    """'SRC[:DST][:ro|rw]' with SRC relative to `base`; DST defaults to the absolute SRC."""
    if text.startswith("-"):
        # the option parser hands --mount the next word when it has no value of its own, so
        # `--mount -- CMD` would look for a directory named "--" (and swallow the separator)
        what = ("needs a value: it took the '--' that starts the command" if text == "--"
                else f"got {text!r}, which looks like an option")
        raise UsageError(f"--mount {what}",
                         hint="write --mount SRC[:DST][:ro] before --, e.g. --mount data:/data:ro "
                              "(a path that starts with '-' as ./-name)")
    parts = text.split(":")
    read_only = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if not parts[0] or len(parts) > 2:
        raise UsageError(f"invalid mount {text!r}", hint="use SRC[:DST][:ro]")
    source = Path(parts[0]) if parts[0].startswith("/") else base / parts[0]
    target = Path(parts[1]) if len(parts) == 2 else source
    if not target.is_absolute():
        raise UsageError(f"mount target {str(target)!r} is not absolute",
                         hint="write the destination inside the sandbox as /path")
    return Mount(Path(_normpath(str(source))), Path(_normpath(str(target))), read_only)


def parse_env(items: Iterable[str], host_env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """'K=V' sets a value; a bare 'K' passes the host's value (and is skipped when unset)."""
    out: list[tuple[str, str]] = []
    for item in items:
        name, eq, value = item.partition("=")
        if not _ENV_NAME.match(name):
            raise UsageError(f"invalid environment variable name {name!r}",
                             hint="use --env NAME=VALUE or --env NAME")
        if eq:
            out.append((name, value))
        elif name in host_env:
            out.append((name, host_env[name]))
    return tuple(out)


def check_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if not _DOMAIN.match(d) or len(d) > 253:
        raise UsageError(f"invalid domain {domain!r}",
                         hint="use a host name such as pypi.org or *.example.com")
    return d


def domain_allowed(host: str, allow: Sequence[str]) -> bool:
    """Exact names match themselves; '*.example.com' matches subdomains, not the apex."""
    h = host.lower().rstrip(".")
    for pattern in allow:
        if pattern.startswith("*."):
            if h.endswith(pattern[1:]) and h != pattern[2:]:
                return True
        elif h == pattern:
            return True
    return False


def _normpath(p: str) -> str:
    parts: list[str] = []
    for part in PurePosixPath(p).parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def _config_value(config: Mapping[str, object], key: str, kind: type | tuple[type, ...]):
    value = config.get(key)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"tether.toml [sandbox] {key} has the wrong type",
                          hint=f"expected {getattr(kind, '__name__', kind)}")
    return value


_CONFIG_KEYS = {"profile", "network", "allow_domains", "mounts", "env", "memory", "cpus",
                "pids", "timeout", "rootfs", "landlock"}


def check_config_keys(config: Mapping[str, object], source: str = "tether.toml") -> None:
    unknown = set(config) - _CONFIG_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in {source} [sandbox]: {', '.join(sorted(unknown))}",
                          hint=f"known keys: {', '.join(sorted(_CONFIG_KEYS))}")


def resolve_spec(profile: str | None, command: Sequence[str], *, workdir: Path,
                 cwd: str | None = None, network: NetworkMode | str | None = None,
                 allow_domains: Sequence[str] = (), mounts: Sequence[Mount | str] = (),
                 env: Sequence[str] = (), host_env: Mapping[str, str] | None = None,
                 memory: str | int | None = None, cpus: float | None = None,
                 pids: int | None = None, timeout: float | None = None,
                 rootfs: Path | None = None, writable_layer: Path | None = None,
                 landlock: bool | None = None, config: Mapping[str, object] | None = None,
                 toolchain_mounts: Sequence[Mount] = (), path_prefix: Sequence[str] = (),
                 resolve: Mapping[str, str] | None = None,
                 protect: Mapping[str, str] | None = None) -> SandboxSpec:
    """Profile data, then the tether.toml [sandbox] table, then flags (last wins).

    protect: the kind of each GUARD_CANDIDATES path that exists in the workspace ("dir",
    "file", "link" or "other"; the caller looked, see `workspace_guards`).
    """
    config = dict(config or {})
    check_config_keys(config)
    host_env = host_env or {}
    name = profile or _config_value(config, "profile", str) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise UsageError(f"unknown sandbox profile {name!r}",
                         hint=f"choose one of: {', '.join(PROFILES)}")
    if not command:
        raise UsageError("no command to run", hint="tether sandbox run -- CMD ...")
    base = PROFILES[name]
    workdir = Path(_normpath(str(workdir)))

    net, domains = _resolve_network(base, config, network, allow_domains)
    cfg_mounts = [parse_mount(m, workdir) for m in (_config_value(config, "mounts", list) or ())]
    flag_mounts = [m if isinstance(m, Mount) else parse_mount(m, workdir) for m in mounts]
    work_mount = Mount(workdir, workdir, read_only=not base.workspace_writable)
    guards = workspace_guards(workdir, protect or {}) if base.workspace_writable else ()
    all_mounts = (*toolchain_mounts, work_mount, *guards, *cfg_mounts, *flag_mounts)
    check_mounts(all_mounts, {host_env["HOME"]: HOME_WHAT} if host_env.get("HOME") else {})
    limits = _resolve_limits(base, config, memory=memory, cpus=cpus, pids=pids,
                             timeout=timeout)
    environ = _resolve_env(base, config, env, host_env, net, path_prefix)
    cfg_rootfs = _config_value(config, "rootfs", str)
    use_landlock = landlock if landlock is not None else _config_value(config, "landlock", bool)
    return SandboxSpec(
        profile=name, command=tuple(command), workdir=workdir,
        cwd=cwd or str(workdir), network=net, allow_domains=domains,
        mounts=tuple(all_mounts), env=tuple(sorted(environ.items())), limits=limits,
        rootfs=rootfs or (Path(cfg_rootfs) if cfg_rootfs else None),
        writable_layer=writable_layer,
        landlock=base.landlock if use_landlock is None else use_landlock,
        resolve=tuple(sorted((resolve or {}).items())),
    )


def workspace_guards(workdir: Path, kinds: Mapping[str, str]) -> tuple[Mount, ...]:
    """The binds that keep a writable workspace from changing what host tools run.

    kinds: relative path -> "dir", "file", "link" or "other", for each GUARD_CANDIDATES
    entry that exists (lstat: links are not followed).

    - `.git` directory: bound onto itself, so it is a mount point the sandbox cannot rename,
      remove or replace (`mv .git .old; mkdir .git` would otherwise plant a new config), with
      its GIT_GUARDED entries read-only inside; git can still commit. If one of those entries
      is a symlink, binding it would bind its target and the link itself could be replaced,
      so the whole `.git` is read-only instead (git reads work, writes fail).
    - `.git` file (a linked worktree or submodule checkout: "gitdir: PATH"): read-only.
    - `.git` symlink: refused; a mount cannot cover a link, and the sandbox could swap it.
    - `tether.toml` file: read-only. A symlink is left alone: a replaced file is refused by
      the trust check anyway, and binding would expose the link's target.
    """
    out: list[Mount] = []

    def ro(rel: str) -> Mount:
        return Mount(workdir / rel, workdir / rel, read_only=True)

    git = kinds.get(".git")
    if git == "link":
        raise UsageError(f"{workdir / '.git'} is a symlink: a sandbox with a writable "
                         "workspace could replace it, and git on this host would run what the "
                         "new one names",
                         hint="use --profile restrictive (read-only workspace), or make .git "
                              "the directory itself")
    if git in ("file", "other"):
        out.append(ro(".git"))
    elif git == "dir":
        inside = [f".git/{n}" for n in GIT_GUARDED if f".git/{n}" in kinds]
        if any(kinds[rel] not in ("dir", "file") for rel in inside):
            out.append(ro(".git"))
        else:
            out.append(Mount(workdir / ".git", workdir / ".git", read_only=False))
            out += [ro(rel) for rel in inside]
    if kinds.get("tether.toml") == "file":
        out.append(ro("tether.toml"))
    return tuple(out)


def _resolve_network(base: Profile, config: Mapping[str, object],
                     network: NetworkMode | str | None,
                     allow_domains: Sequence[str]) -> tuple[NetworkMode, tuple[str, ...]]:
    net_value = network or _config_value(config, "network", str) or base.network
    try:
        net = NetworkMode(net_value)
    except ValueError:
        raise UsageError(f"unknown network mode {net_value!r}",
                         hint="use none, allowlist or full") from None
    domains = tuple(check_domain(d) for d in
                    (*(_config_value(config, "allow_domains", list) or ()), *allow_domains))
    if domains:
        if network is not None and NetworkMode(network) is NetworkMode.NONE:
            if allow_domains:
                raise UsageError("--no-network and --allow-domain contradict each other",
                                 hint="drop one of them")
            domains = ()          # the flag wins over domains from tether.toml
        else:
            net = NetworkMode.ALLOWLIST   # naming domains narrows any network to them
    if net is NetworkMode.ALLOWLIST and not domains:
        raise UsageError("network mode allowlist needs at least one --allow-domain",
                         hint="or use --no-network")
    return net, domains


HOME_WHAT = "your home directory"


def check_mounts(mounts: Sequence[Mount], private: Mapping[str, str]) -> None:
    """Refuse targets over the sandbox's own machinery, and sources that hold (are, or are
    above) a private directory; ``private`` maps each to what it is, for the message.

    Paths are compared as text: the runner calls it again with symlinks resolved (a link to
    the home is the home), the text check here only fails early.
    """
    for m in mounts:
        if m.target == Path("/") or str(m.target).startswith(("/proc", "/dev", HELPER_DIR)):
            raise UsageError(f"cannot mount over {m.target}",
                             hint="choose another destination inside the sandbox")
        for path, what in private.items():
            if _is_within(Path(_normpath(path)), m.source):
                # the home would expose ~/.ssh, keyrings, tokens; tether's config dir its
                # secrets file and the trusted-config record
                raise UsageError(f"refusing to expose {what} through {m.source}",
                                 hint="use a project subdirectory as the workspace or mount"
                                 + ("" if what == HOME_WHAT else
                                    ", or move it (TETHER_HOME) out of the workspace"))


def _resolve_limits(base: Profile, config: Mapping[str, object], **flags) -> Limits:
    def pick(key: str, kind):
        flag = flags[key]
        return flag if flag is not None else _config_value(config, key, kind)

    return Limits(
        memory_bytes=parse_size(pick("memory", (str, int))) or base.limits.memory_bytes,
        cpus=_positive("cpus", pick("cpus", (int, float))) or base.limits.cpus,
        pids=_positive("pids", pick("pids", int)) or base.limits.pids,
        timeout_s=_positive("timeout", pick("timeout", (int, float))) or base.limits.timeout_s,
    )


def _resolve_env(base: Profile, config: Mapping[str, object], env: Sequence[str],
                 host_env: Mapping[str, str], net: NetworkMode,
                 path_prefix: Sequence[str]) -> dict[str, str]:
    environ: dict[str, str] = {"HOME": SANDBOX_HOME, "USER": "sandbox", "LOGNAME": "sandbox",
                               "PATH": ":".join((*path_prefix, SANDBOX_PATH)),
                               "TMPDIR": "/tmp"}
    for key in base.pass_env:
        if key in host_env:
            environ[key] = host_env[key]
    cfg_env = _config_value(config, "env", (list, dict)) or ()
    if isinstance(cfg_env, dict):
        cfg_env = [f"{k}={v}" for k, v in cfg_env.items()]
    environ.update(parse_env([*cfg_env, *env], host_env))
    if net is NetworkMode.ALLOWLIST:
        proxy = f"http://127.0.0.1:{PROXY_PORT}"
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            environ[key] = proxy
        environ["ALL_PROXY"] = environ["all_proxy"] = f"socks5h://127.0.0.1:{SOCKS_PORT}"
        environ["NO_PROXY"] = environ["no_proxy"] = "localhost,127.0.0.1"
    return environ


def _is_within(path: Path, ancestor: Path) -> bool:
    return path == ancestor or ancestor in path.parents


_POSITIVE_EXAMPLES = {"cpus": "--cpus 1.5", "pids": "--pids 256", "timeout": "--timeout 60"}


def _positive(name: str, value):
    if value is not None and value <= 0:
        raise UsageError(f"--{name} must be positive, got {value}",
                         hint=f"pass a number above 0 (e.g. {_POSITIVE_EXAMPLES[name]}), "
                              "or leave it out for the profile's default")
    return value


# Landlock scopes (ABI >= 6): what a sandboxed process may reach outside its own domain
SCOPE_ABSTRACT_UNIX_SOCKET = 1
SCOPE_SIGNAL = 2
SCOPE_NAMES = {SCOPE_ABSTRACT_UNIX_SOCKET: "abstract_unix_socket", SCOPE_SIGNAL: "signal"}


def _helper_required(spec: SandboxSpec) -> bool:
    return spec.landlock or spec.network is NetworkMode.ALLOWLIST


def landlock_scopes(spec: SandboxSpec, host: HostFacts) -> int:
    """The Landlock scope bits the helper applies for `spec` on `host` (0: none).

    Abstract unix sockets are scoped in every profile: they live in the network namespace,
    which the host network shares, so without the scope moderate and permissive could reach
    the host's (dbus, X11, container runtimes...). Signals are scoped only where Landlock
    confines files too: the sandbox's own pid namespace already hides host processes, and an
    exec into a named sandbox must be able to signal its main command (a sibling domain).
    Best effort where it is not required: without ABI 6, or without a helper that can run
    in the spec's root, nothing is scoped and `tether sandbox probe` says so.
    """
    if host.landlock_abi < 6:
        return 0
    # the Python helper is the host's python3 path, which a --rootfs may not have
    runs = (_helper_required(spec) or host.helper_native is not None
            or (host.helper_python is not None and spec.rootfs is None))
    if not runs:
        return 0
    return SCOPE_ABSTRACT_UNIX_SOCKET | (SCOPE_SIGNAL if spec.landlock else 0)


def needs_helper(spec: SandboxSpec, host: HostFacts) -> bool:
    """The in-sandbox helper runs first for Landlock (files or scopes) or the forwarder."""
    return _helper_required(spec) or landlock_scopes(spec, host) != 0


def required_features(spec: SandboxSpec) -> list[str]:
    """Every protection the spec asks for, by name; the runner refuses if one is missing."""
    need = ["bwrap", "userns", "seccomp"]
    if spec.landlock:
        need.append("landlock")
    if _helper_required(spec):
        need.append("helper")
    if spec.limits.memory_bytes:
        need.append("memory")
    if spec.limits.pids:
        need.append("pids")
    if spec.limits.cpus:
        need.append("cpu")
    return need


def missing_features(spec: SandboxSpec, host: HostFacts) -> list[str]:
    have = {
        "bwrap": host.bwrap is not None, "userns": host.userns, "seccomp": host.seccomp,
        "landlock": host.landlock_abi >= 1,
        "helper": host.helper_python is not None or host.helper_native is not None,
        # memory falls back to RLIMIT_AS (per process; reported as such); pids and cpu have
        # no honest rlimit equivalent (RLIMIT_NPROC is per user and root ignores it).
        "memory": True, "pids": host.cgroup.pids, "cpu": host.cgroup.cpu,
    }
    return [f for f in required_features(spec) if not have[f]]


def sandbox_environ(spec: SandboxSpec) -> dict[str, str]:
    """The environment bwrap starts with and passes on unchanged.

    Values are handed over in bwrap's own environment instead of `--setenv K V`, because argv
    is world-readable in /proc/PID/cmdline and env values may be secrets.
    """
    return dict(spec.env)


def etc_entries(spec: SandboxSpec, host: HostFacts) -> tuple[str, ...]:
    """The host /etc entries the sandbox sees: resolver files only with the host network."""
    return tuple(e for e in host.etc_entries
                 if e not in ETC_NETWORK or spec.network is NetworkMode.FULL)


def bwrap_argv(spec: SandboxSpec, host: HostFacts, *, seccomp_fd: int | None = None,
               etc_dir: str | None = None, helper: Sequence[str] = (),
               proxy_socket: str | None = None, info_fd: int | None = None,
               helper_file: str | None = None) -> list[str]:
    """The complete bwrap command line for `spec` on `host` (pure).

    etc_dir: a host directory holding copies of `etc_entries(spec, host)` plus generated
        passwd, group and hostname, bound as /etc (unused with a rootfs).
    helper: argv of the in-sandbox helper to run before the command (see needs_helper),
        whose script or binary `helper_file` is bound read-only at HELPER_DIR/helper(.py).
    proxy_socket: the host path of the allowlist proxy's unix socket.
    """
    a: list[str] = [host.bwrap or "bwrap", "--unshare-all"]
    if spec.network is NetworkMode.FULL:
        a.append("--share-net")
    a += ["--die-with-parent", "--new-session", "--cap-drop", "ALL",
          "--hostname", spec.hostname]
    if spec.rootfs is not None:
        root = str(spec.rootfs)
        for d in SYSTEM_DIRS:
            a += ["--ro-bind-try", root + d, d]
        # the rootfs's own /etc: its accounts are the image's, not the host's
        a += ["--ro-bind", root + "/etc", "/etc"]
    else:
        for path, target in host.system_dirs:
            if target is not None:
                a += ["--symlink", target, path]
            else:
                a += ["--ro-bind", path, path]
        if etc_dir is not None:
            # one prepared copy of the allowed entries: one mount instead of ~35 (each costs
            # ~0.15 ms of bwrap's start-up)
            a += ["--ro-bind", etc_dir, "/etc"]
        else:
            for e in etc_entries(spec, host):
                a += ["--ro-bind", "/etc/" + e, "/etc/" + e]
    # bwrap covers /proc/sys read-only only when it looks writable to access(2), which it does
    # not for its directory mode; but a sandbox whose uid is the host's root owns the files
    # inside (vm.*, kernel.core_pattern...) and could write host-global sysctls. Values are
    # resolved against the reader's namespaces, so binding the host's view read-only is exact.
    a += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
          "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
          "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
          "--tmpfs", "/var/tmp", "--dir", "/var"]
    if spec.writable_layer is not None:
        a += ["--bind", str(spec.writable_layer), SANDBOX_HOME]
    else:
        a += ["--tmpfs", SANDBOX_HOME]
    for m in spec.mounts:
        a += ["--ro-bind" if m.read_only else "--bind", str(m.source), str(m.target)]
    if helper_file is not None:
        target = "/helper.py" if helper_file.endswith(".py") else "/helper"
        a += ["--ro-bind", helper_file, HELPER_DIR + target]
    if proxy_socket is not None:
        a += ["--bind", proxy_socket, PROXY_SOCKET]
    if seccomp_fd is not None:
        a += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        a += ["--info-fd", str(info_fd)]
    a += ["--chdir", spec.cwd, "--"]
    return [*a, *helper, *spec.command]


def with_command(spec: SandboxSpec, command: Sequence[str]) -> SandboxSpec:
    return replace(spec, command=tuple(command))
