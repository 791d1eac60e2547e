"""Run code-server on 127.0.0.1 for one workspace, and stop all of it.

Everything code-server writes lives under one IDE folder (``<host state>/ide`` for `up`):

    ide/
      config.yaml        0600: auth + the argon2 hash of the password (never the password)
      code-server.log    its stdout/stderr
      code-server.pid    while it runs: pid + runtime dir, so a crashed owner's group is found
      xdg/{config,data,cache}/   XDG dirs for code-server itself (its coder.json, heartbeat)
      profile/           the "ide" snapshot component: settings, keybindings, extensions
        .tetherignore    logs and caches stay out of snapshots
        data/            --user-data-dir (User/settings.json, User/keybindings.json, ...)
        data/Machine/settings.json   written by tether: terminals get the user's own XDG dirs
        extensions/      --extensions-dir

code-server runs in its own session (process group); `stop()` ends the whole group, so
its extension hosts, terminals and watchers go too, and removes the private XDG_RUNTIME_DIR
(/tmp/tether-ide-XXXX) that holds VS Code's IPC sockets, which it would otherwise leave in /tmp. Login rate limiting is code-server's own
(token buckets of 2 failures a minute and 12 an hour, over all clients): behind the gateway
every request comes from 127.0.0.1, so a per-address limit at the gateway would add nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tether import paths
from tether.errors import ConnectError, DeadlineError, TetherError, UsageError
from tether.ide.install import CodeServer
from tether.ssh.sshd import free_port

READY_PATH = "/healthz"
EXTENSION_ID = re.compile(r"^[A-Za-z0-9][\w-]*\.[A-Za-z0-9][\w.-]*(@[\w.+-]+)?$")
# Environment code-server gets pointed elsewhere; terminals get the user's values back.
SECRET_ENV = ("PASSWORD", "HASHED_PASSWORD", "TETHER_IDE_PASSWORD")
REDIRECTED_ENV = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR")
IGNORED_IN_SNAPSHOTS = ("data/logs/", "data/CachedData/", "data/CachedExtensionVSIXs/",
                        "data/CachedProfilesData/", "data/Backups/", "data/User/History/",
                        "data/User/workspaceStorage/", "data/clp/", "data/*.sock",
                        "data/Machine/", "extensions/.obsolete")


@dataclass(frozen=True)
class IdeLayout:
    root: Path

    profile = property(lambda self: self.root / "profile")
    user_data = property(lambda self: self.root / "profile" / "data")
    extensions = property(lambda self: self.root / "profile" / "extensions")
    config = property(lambda self: self.root / "config.yaml")
    log = property(lambda self: self.root / "code-server.log")
    pid_file = property(lambda self: self.root / "code-server.pid")
    xdg = property(lambda self: self.root / "xdg")
    machine_settings = property(lambda self: self.user_data / "Machine" / "settings.json")


@dataclass(frozen=True)
class IdeOptions:
    workspace: Path
    root: Path
    port: int = 0  # 0: a free one
    extensions: tuple[str, ...] = ()
    idle_timeout_s: int | None = None
    trusted_origins: tuple[str, ...] = ()  # host[:port] of the gateway's public URLs


def ide_root(host_state_dir: Path) -> Path:
    return host_state_dir / "ide"


def component(host_state_dir: Path):
    """The "ide" snapshot component (settings, keybindings, extensions) of a host."""
    from tether.snapshot.components import Component

    return Component("ide", IdeLayout(ide_root(host_state_dir)).profile)


# -- pure -----------------------------------------------------------------------------------


def classify_extension(arg: str) -> tuple[str, str]:
    """("vsix", absolute path) or ("id", publisher.name[@version]); UsageError otherwise."""
    if arg.lower().endswith(".vsix"):
        path = Path(arg).expanduser()
        if not path.is_file():
            raise UsageError(f"extension file {arg} does not exist",
                             "give an existing .vsix file or a marketplace id like "
                             "ms-python.python")
        return "vsix", str(path.resolve())
    if EXTENSION_ID.match(arg):
        return "id", arg
    raise UsageError(f"{arg!r} is neither a .vsix file nor an extension id",
                     "extension ids look like publisher.name, e.g. ms-python.python")


def origin_host(url: str) -> str:
    """The ``host[:port]`` a browser sends in ``Origin`` for pages served from ``url``."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise UsageError(f"{url!r} is not a URL")
    return parts.netloc.rsplit("@", 1)[-1].lower()


def config_text(hashed_password: str) -> str:
    # The hash goes in the 0600 file, not the environment, so nothing code-server starts
    # (terminals, extensions) can read it from its environment.
    return ("auth: password\n"
            f"hashed-password: {json.dumps(hashed_password)}\n"
            "cert: false\n")


def server_argv(cs: CodeServer, opts: IdeOptions, port: int) -> list[str]:
    layout = IdeLayout(opts.root)
    argv = [*cs.argv, "--bind-addr", f"127.0.0.1:{port}", "--auth", "password",
            "--config", str(layout.config), "--user-data-dir", str(layout.user_data),
            "--extensions-dir", str(layout.extensions), "--disable-telemetry",
            "--disable-update-check", "--disable-workspace-trust", "--ignore-last-opened"]
    for host in opts.trusted_origins:
        argv += ["--trusted-origins", host]
    if opts.idle_timeout_s:
        argv += ["--idle-timeout-seconds", str(int(opts.idle_timeout_s))]
    argv.append(str(opts.workspace))
    return argv


def extension_argv(cs: CodeServer, root: Path, extensions: list[str]) -> list[str]:
    layout = IdeLayout(root)
    argv = [*cs.argv, "--config", str(layout.config), "--user-data-dir", str(layout.user_data),
            "--extensions-dir", str(layout.extensions)]
    for ext in extensions:
        argv += ["--install-extension", ext]
    argv.append("--force")  # a changed .vsix with the same version replaces the old one
    return argv


def server_env(base: dict[str, str], root: Path, runtime_dir: Path) -> dict[str, str]:
    """code-server's environment: no password variables, XDG dirs of its own.

    ``runtime_dir`` (XDG_RUNTIME_DIR) is where VS Code puts its IPC sockets instead of /tmp,
    which it never cleans; tether removes the folder when code-server stops. It must be short:
    a Unix socket path has at most 107 bytes.
    """
    # The password must not reach terminals and extensions through the environment.
    env = {k: v for k, v in base.items() if k not in SECRET_ENV}
    xdg = IdeLayout(root).xdg
    env.update(XDG_CONFIG_HOME=str(xdg / "config"), XDG_DATA_HOME=str(xdg / "data"),
               XDG_CACHE_HOME=str(xdg / "cache"), XDG_RUNTIME_DIR=str(runtime_dir))
    return env


def machine_settings(base: dict[str, str], existing: dict | None = None) -> dict:
    """Machine settings that give terminals the user's own XDG dirs (null = unset)."""
    settings = dict(existing or {})
    settings["terminal.integrated.env.linux"] = {k: base.get(k) for k in REDIRECTED_ENV}
    return settings


# -- I/O ------------------------------------------------------------------------------------


def prepare(root: Path, hashed_password: str, base_env: dict[str, str]) -> IdeLayout:
    """Create the IDE folder, write config.yaml (0600), machine settings, .tetherignore."""
    layout = IdeLayout(root)
    for d in (layout.root, layout.profile, layout.user_data, layout.extensions,
              layout.xdg / "config", layout.xdg / "data", layout.xdg / "cache",
              layout.machine_settings.parent):
        paths.ensure_dir(d)
    paths.atomic_write(layout.config, config_text(hashed_password), mode=0o600)
    try:
        existing = json.loads(layout.machine_settings.read_text())
    except (OSError, ValueError):
        existing = None
    paths.atomic_write(layout.machine_settings, json.dumps(
        machine_settings(base_env, existing if isinstance(existing, dict) else None),
        indent=2), mode=0o600)
    paths.atomic_write(layout.profile / ".tetherignore",
                       "".join(p + "\n" for p in IGNORED_IN_SNAPSHOTS), mode=0o644)
    return layout


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def install_extensions(cs: CodeServer, root: Path, extensions: tuple[str, ...],
                       env: dict[str, str], timeout_s: float = 300) -> list[str]:
    """Install ``.vsix`` files and marketplace ids into the IDE's extensions dir."""
    if not extensions:
        return []
    resolved = [classify_extension(e) for e in extensions]
    argv = extension_argv(cs, root, [value for _, value in resolved])
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DeadlineError(f"installing extensions took more than {timeout_s:.0f}s") from exc
    output = (proc.stdout + proc.stderr).strip()
    failed = [line for line in output.splitlines() if "failed" in line.lower()
              or "not found" in line.lower() or line.lower().startswith("error")]
    if proc.returncode != 0 or failed:
        ids = [v for kind, v in resolved if kind == "id"]
        hint = ("marketplace ids need open-vsx.org to be reachable; a .vsix file works offline"
                if ids else "check that the .vsix file is a valid VS Code extension")
        lines = failed[-3:] or output.splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise TetherError(f"installing IDE extensions failed: {'; '.join(lines)}", hint)
    return [value for _, value in resolved]


@dataclass
class IdeServer:
    """A code-server for one workspace: ``start()``, ``url``, ``stop()`` (idempotent)."""

    code_server: CodeServer
    options: IdeOptions
    hashed_password: str
    port: int = 0
    proc: subprocess.Popen | None = None
    started_in_s: float = 0.0
    installed_extensions: list[str] = field(default_factory=list)
    runtime_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = self.options.port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def layout(self) -> IdeLayout:
        return IdeLayout(self.options.root)

    def start(self, timeout_s: float = 60.0, env: dict[str, str] | None = None) -> IdeServer:
        """Install requested extensions, start code-server, wait until it answers."""
        base = dict(env if env is not None else os.environ)
        if not self.options.workspace.is_dir():
            raise UsageError(f"{self.options.workspace} is not a directory")
        prepare(self.options.root, self.hashed_password, base)
        stop_stale(self.layout)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="tether-ide-"))  # 0700
        try:
            run_env = server_env(base, self.options.root, self.runtime_dir)
            self.installed_extensions = install_extensions(
                self.code_server, self.options.root, self.options.extensions, run_env)
            started = time.monotonic()
            with self.layout.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    server_argv(self.code_server, self.options, self.port), env=run_env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=str(self.options.workspace), start_new_session=True)
            paths.atomic_write(self.layout.pid_file, json.dumps(
                {"pid": self.proc.pid, "runtime_dir": str(self.runtime_dir)}))
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        import httpx

        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConnectError(f"code-server exited with code {self.proc.returncode} at "
                                   f"start: {_tail(self.layout.log, 3)}",
                                   f"see {self.layout.log}")
            try:
                if httpx.get(self.url + READY_PATH, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise DeadlineError("code-server did not answer in time", f"see {self.layout.log}")

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every process in code-server's group (for status and for tests)."""
        if self.proc is None:
            return []
        return group_members(self.proc.pid)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop code-server's whole process group (extension hosts, terminals too)."""
        from tether.ssh.sshd import stop_group

        if self.proc is not None:
            stop_group(self.proc.pid, timeout_s)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.layout.pid_file.unlink(missing_ok=True)
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None


def stop_stale(layout: IdeLayout) -> bool:
    """Stop a code-server group left by a crashed `up` (SIGKILL skips our stop).

    Only a process whose command line names this IDE folder is touched: the pid may have
    been reused by something else since. Its runtime dir (sockets) goes too.
    """
    from tether.ssh.sshd import stop_group

    try:
        record = json.loads(layout.pid_file.read_text())
        pid, runtime_dir = int(record["pid"]), Path(record["runtime_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    stopped = False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        cmdline = ""
    if str(layout.user_data) in cmdline:
        stop_group(pid)
        stopped = True
    if runtime_dir.name.startswith("tether-ide-"):
        shutil.rmtree(runtime_dir, ignore_errors=True)
    layout.pid_file.unlink(missing_ok=True)
    return stopped


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def rss_bytes(pids: list[int]) -> int:
    """Sum of resident memory of ``pids`` (VmRSS)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def parse_duration(text: str) -> int:
    """Seconds from "90", "90s", "30m" or "2h" (for --idle-timeout)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", text.lower())
    if not m:
        raise UsageError(f"{text!r} is not a duration", "use e.g. 900, 30m or 2h")
    return int(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
