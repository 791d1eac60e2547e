"""`tether up`: sshd + gateway + tunnel as one workspace, in the foreground or detached.

`Workspace` owns the three parts. The gateway runs on its own asyncio loop in a thread, so
the same object serves the CLI (the main thread waits for Ctrl-C / SIGTERM) and a notebook
cell (whose own loop is already running). Only one workspace runs per state dir: an
exclusive ``flock`` on ``up.lock`` held for the workspace's life says so, and ``run.json``
says where it is (for `tether host status`, `tether down`, `tether host pair-code`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pwd
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether import paths
from tether.errors import LockedError, TetherError
from tether.gateway.state import DEFAULT_CODE_TTL_S, HostState, host_dir
from tether.host import platform as plat
from tether.link.connstring import ConnectionString

log = logging.getLogger("tether.host")


@dataclass(frozen=True)
class UpOptions:
    directory: Path = field(default_factory=Path.cwd)
    tunnel: str = "local"
    port: int | None = None  # gateway port (0/None: a free one)
    public_url: str | None = None
    proxy_upstream: str | None = None
    code_ttl_s: int = DEFAULT_CODE_TTL_S
    state_dir: Path | None = None  # default: <state>/host
    supervise_interval_s: float = 1.0
    # a tunnel whose process runs but whose public URL stopped reaching the gateway is
    # restarted after this many failed /.tether/health probes in a row (not the local one)
    tunnel_probe_every_s: float = 30.0
    tunnel_probe_failures: int = 3
    tunnel_probe_timeout_s: float = 10.0
    pair_limit_per_client: int = 10
    pair_limit_overall: int = 60
    ide: bool = False  # code-server behind the gateway at / (tether.ide)
    ide_extensions: tuple[str, ...] = ()  # marketplace ids or .vsix paths, installed at start
    ide_idle_timeout_s: int | None = None
    # snapshots (tether.host.persist): restore happens before start, in `up()`
    venvs: tuple[str, ...] = ()  # virtualenv folders saved as "venv:<name>"
    autosave: str | None = None  # store URL; saved every autosave_every_s and on stop
    autosave_every_s: float = 600.0
    final_save_timeout_s: float = 120.0


def login_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def connect_command(text: str, name: str = "NAME") -> str:
    return f"tether connect {text} --name {name}"


class Workspace:
    """A running (or startable) workspace: sshd, the gateway and the tunnel."""

    def __init__(self, options: UpOptions, announce=None, tunnel=None) -> None:
        self.options = options
        self._tunnel = tunnel  # a ready Tunnel object instead of options.tunnel's kind
        self.dir = options.state_dir or host_dir()
        self.state = HostState(self.dir)
        self.announce = announce or (lambda message: log.info("%s", message))
        self.platform = plat.detect()
        self.sshd = None
        self.supervisor = None
        self.ide = None  # tether.ide.api.IdeSession when options.ide
        self.autosave = None  # tether.host.persist.HostAutosave when options.autosave
        self.url: str | None = None
        self.local_url: str | None = None
        self.gateway_port = 0
        self.started_at = 0
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gateway_thread: threading.Thread | None = None
        self._gateway_stop: asyncio.Event | None = None
        self._gateway_error: BaseException | None = None
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()

    # -- start --------------------------------------------------------------------------

    def _acquire(self) -> None:
        paths.ensure_dir(self.dir)
        fd = os.open(self.dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            run = self.state.read_run() or {}
            raise LockedError(f"a workspace is already running here (pid {run.get('pid')}, "
                              f"{run.get('url')})",
                              "stop it with `tether down`, or see `tether host status`"
                              ) from exc
        self._lock_fd = fd

    def start(self) -> None:
        """Start sshd, the gateway and the tunnel; on any failure stop what started."""
        from tether.ssh import sshd as sshd_mod

        self._acquire()
        try:
            if self.platform.remote_shell_policy:
                self.announce(f"{self.platform.name}: {self.platform.remote_shell_policy}")
            if self.options.ide:
                from tether.ide.api import open_ide

                self.ide = open_ide(self.options.directory.resolve(), self.dir,
                                    extensions=tuple(self.options.ide_extensions),
                                    idle_timeout_s=self.options.ide_idle_timeout_s)
            sshd_path = sshd_mod.ensure_sshd(self.platform, announce=self.announce)
            env = sshd_mod.session_env(dict(os.environ), self.platform.kind,
                                       self.options.directory.resolve())
            self.sshd = sshd_mod.Sshd(self.dir, session_env=env)
            self.sshd.start(sshd_path)
            self._start_gateway()
            self._start_tunnel()
            if self.ide is not None:
                self.ide.start([self.local_url, self.url, self.options.public_url])
            self.started_at = int(time.time())
            self._start_autosave()
            self._write_run()
        except BaseException:
            self.stop()
            raise

    def _start_autosave(self) -> None:
        from tether.host import persist

        if not self.options.autosave:
            persist.clear_status(self.dir)  # a previous session's record would mislead
            return
        comps = persist.components(self.options.directory.resolve(), self.options.venvs,
                                   self.options.ide, self.dir)
        self.autosave = persist.HostAutosave(self.options.autosave, comps, self.dir,
                                             self.options.autosave_every_s, self.announce)

    def _start_gateway(self) -> None:
        from tether.gateway.app import GatewaySettings, create_app
        from tether.gateway.server import bind
        from tether.ssh.sshd import host_public_key

        try:
            sock = bind(self.options.port or 0)
        except OSError as exc:
            from tether.errors import UsageError

            raise UsageError(f"cannot listen on port {self.options.port}: {exc.strerror}",
                             "pick another --port, or leave it out for a free one") from exc
        self.gateway_port = sock.getsockname()[1]
        self.local_url = f"http://127.0.0.1:{self.gateway_port}"
        assert self.sshd is not None
        settings = GatewaySettings(
            state_dir=self.dir, sshd_port=self.sshd.port,
            workspace_id=self.state.workspace_id(),
            host_public_key=host_public_key(self.sshd.host_key), user=login_user(),
            proxy_upstream=self.options.proxy_upstream or (self.ide.upstream if self.ide
                                                           else None),
            pair_limit_per_client=self.options.pair_limit_per_client,
            pair_limit_overall=self.options.pair_limit_overall,
            trust_forwarded_for=self.options.tunnel != "local")
        app = create_app(settings)
        ready = threading.Event()

        async def serve() -> None:
            from tether.gateway.server import serve_gateway

            self._gateway_stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            async with serve_gateway(app, sock):
                ready.set()
                await self._gateway_stop.wait()

        def run() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # surfaced by start() / status
                self._gateway_error = exc
            finally:
                ready.set()
                sock.close()

        self._gateway_thread = threading.Thread(target=run, name="tether-gateway", daemon=True)
        self._gateway_thread.start()
        ready.wait(15)
        if self._gateway_error is not None or not self._gateway_thread.is_alive():
            from tether.errors import ConnectError

            raise ConnectError(f"the gateway failed to start: {self._gateway_error!r}")

    def _start_tunnel(self) -> None:
        from tether.tunnels import TunnelSupervisor, open_tunnel

        tunnel = self._tunnel or open_tunnel(self.options.tunnel, self.gateway_port,
                                             public_url=self.options.public_url)
        if hasattr(tunnel, "local_port"):
            tunnel.local_port = self.gateway_port
        # The local "tunnel" is the gateway's own address, or a URL the user says reaches it
        # (which the host itself may not: no hairpin NAT); restarting it would change nothing.
        probe = None if tunnel.kind == "local" else self._probe_tunnel
        self.supervisor = TunnelSupervisor(tunnel, self._on_url, self._on_tunnel_error,
                                           interval_s=self.options.supervise_interval_s,
                                           probe=probe,
                                           probe_every_s=self.options.tunnel_probe_every_s,
                                           probe_failures=self.options.tunnel_probe_failures)
        self.supervisor.start()

    def _probe_tunnel(self, url: str) -> str | None:
        from tether.tunnels import probe_health

        problem = probe_health(url, self.options.tunnel_probe_timeout_s)
        if problem is not None and self.local_url is not None and \
                probe_health(self.local_url, self.options.tunnel_probe_timeout_s) is not None:
            # The gateway itself does not answer: a new tunnel would not help, and wait()
            # reports a dead gateway. Not the tunnel's failure.
            return None
        return problem

    def _on_url(self, url: str) -> None:
        first = self.url is None
        self.url = url
        if not first:
            if self.ide is not None:
                try:
                    self.ide.retrust([self.local_url, url, self.options.public_url])
                except TetherError as exc:
                    self.announce(f"warning: the IDE did not restart for the new URL: "
                                  f"{exc.message}")
            self._write_run()
            text = self.new_connection_string()
            why = self.supervisor.last_restart_reason if self.supervisor else None
            self.announce(f"the {self.options.tunnel} tunnel was restarted"
                          + (f" ({why})" if why else "") + f"; new URL: {url}\n"
                          f"paired laptops update with: {connect_command(text)}")

    def _on_tunnel_error(self, exc: TetherError) -> None:
        self.announce(f"warning: restarting the tunnel failed: {exc.message}")

    def _write_run(self) -> None:
        from tether.ssh.keys import fingerprint_of_public_key
        from tether.ssh.sshd import host_public_key

        assert self.sshd is not None and self.sshd.proc is not None
        self.state.write_run({
            "pid": os.getpid(), "started_at": self.started_at,
            "directory": str(self.options.directory.resolve()),
            "url": self.url, "local_url": self.local_url, "tunnel": self.options.tunnel,
            "gateway_port": self.gateway_port, "sshd_port": self.sshd.port,
            "sshd_pid": self.sshd.proc.pid, "workspace_id": self.state.workspace_id(),
            "host_key_fingerprint": fingerprint_of_public_key(
                host_public_key(self.sshd.host_key)),
            "tunnel_restarts": self.supervisor.restarts if self.supervisor else 0,
            "platform": self.platform.kind.value, "user": login_user(),
            "ide": self.ide.info(self.url) if self.ide is not None else None,
            "autosave": self.options.autosave,
            # `tether down` waits this much longer for the final save before it kills
            "final_save_timeout_s": self.options.final_save_timeout_s if self.autosave else 0,
        })

    # -- while running ------------------------------------------------------------------

    def new_connection_string(self, ttl_s: int | None = None) -> str:
        return issue_connection_string(self.state, ttl_s or self.options.code_ttl_s)

    def is_healthy(self) -> bool:
        return (self.sshd is not None and self.sshd.is_alive()
                and self._gateway_thread is not None and self._gateway_thread.is_alive())

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until ``stop()`` is called or a part dies (then stop the rest and raise)."""
        from tether.errors import ConnectError

        while not self._stopped.is_set():
            if self._stop_requested.wait(poll_s):
                self.stop()
                return
            if self._stopped.is_set():
                return
            if not self.is_healthy():
                what = "sshd" if not (self.sshd and self.sshd.is_alive()) else "the gateway"
                self.stop()
                raise ConnectError(f"{what} stopped unexpectedly; the workspace is down",
                                   f"see {self.dir / 'sshd.log'} and start it again")

    def request_stop(self) -> None:
        """Ask ``wait()`` to stop everything (safe from a signal handler)."""
        self._stop_requested.set()

    def stop(self) -> None:
        """Stop the tunnel, the gateway and sshd (its whole process group). Idempotent."""
        if self.supervisor is not None:
            self.supervisor.stop()  # first: a tunnel restart may restart the IDE
            self.supervisor = None
        if self.ide is not None:
            self.ide.stop()
        if self._loop is not None and self._gateway_stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._gateway_stop.set)
            except RuntimeError:  # loop already closed
                pass
        if self._gateway_thread is not None:
            self._gateway_thread.join(10)
            self._gateway_thread = None
        if self.sshd is not None:
            self.sshd.stop()
            self.sshd = None
        if self.autosave is not None:  # after the parts stop: nothing changes under the save
            autosave, self.autosave = self.autosave, None
            autosave.finish(self.options.final_save_timeout_s)
        if self._lock_fd is not None:
            self.state.clear_run(os.getpid())
            os.close(self._lock_fd)
            self._lock_fd = None
        self._stopped.set()


def issue_connection_string(state: HostState, ttl_s: int = DEFAULT_CODE_TTL_S) -> str:
    """A fresh one-time code for the running workspace, as a connection string."""
    from tether.errors import NotFoundError

    run = running_info(state)
    if run is None:
        raise NotFoundError("no workspace is running here", "start one with `tether up`")
    code, expires = state.issue_code(ttl_s)
    return ConnectionString(run["url"], run["workspace_id"], code, expires,
                            run["host_key_fingerprint"]).encode()


def running_info(state: HostState | None = None) -> dict | None:
    """run.json of the running workspace, or None (a stale file from a crash is ignored)."""
    state = state or HostState()
    run = state.read_run()
    if not run:
        return None
    if lock_is_free(state.dir):
        return None
    return run


def lock_is_free(directory: Path) -> bool:
    path = directory / "up.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
