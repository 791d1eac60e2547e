"""The host's Python API: `up`, `down`, `host_status`, `pair_code`.

``tether.up()`` in a notebook cell starts the workspace in this process (threads; the cell
returns at once) and hands back a `HostHandle`; ``detach=True`` starts it as a background
process that outlives the caller, stopped with ``tether.down()``. The CLI's `tether up` is the
same call plus waiting for Ctrl-C.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from tether import errors, paths
from tether.gateway.state import DEFAULT_CODE_TTL_S, HostState
from tether.host import platform as plat
from tether.host.workspace import (UpOptions, Workspace, connect_command,
                                   issue_connection_string, lock_is_free, running_info)

_active: Workspace | None = None
_active_lock = threading.Lock()
CHILD_ENV = "TETHER_UP_CHILD_OPTIONS"


class HostHandle:
    """A started workspace: its connection string, status, new codes, and stop."""

    def __init__(self, info: dict, workspace: Workspace | None) -> None:
        self.info = info
        self._workspace = workspace

    connection_string = property(lambda self: self.info["connection_string"])
    url = property(lambda self: self.info["url"])
    workspace_id = property(lambda self: self.info["workspace_id"])
    detached = property(lambda self: self._workspace is None)

    def pair_code(self, ttl_s: int = DEFAULT_CODE_TTL_S) -> str:
        """A new one-time connection string (for another laptop)."""
        return pair_code(ttl_s, state_dir=self.info.get("state_dir"))["connection_string"]

    def status(self) -> dict:
        return host_status(state_dir=self.info.get("state_dir"))

    def wait(self) -> None:
        if self._workspace is not None:
            self._workspace.wait()

    def stop(self) -> None:
        global _active
        if self._workspace is not None:
            self._workspace.stop()
            with _active_lock:
                if _active is self._workspace:
                    _active = None
        else:
            down(state_dir=self.info.get("state_dir"))

    def __enter__(self) -> HostHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<tether workspace {self.workspace_id} at {self.url}>\n"
                f"on your laptop: {self.info['connect_command']}")

    def _repr_html_(self) -> str:
        import html

        return (f"<p>tether workspace <code>{html.escape(self.workspace_id)}</code> at "
                f"<code>{html.escape(self.url)}</code></p><p>On your laptop:</p>"
                f"<pre>{html.escape(self.info['connect_command'])}</pre>")


def _result(state: HostState, workspace_dir: Path, connect_name: str | None,
            ttl_s: int, connected: dict | None) -> dict:
    run = running_info(state) or {}
    text = issue_connection_string(state, ttl_s)
    from tether.link.connstring import ConnectionString

    cs = ConnectionString.decode(text)
    info = plat.detect()
    return {
        "workspace_id": cs.workspace_id, "url": cs.url, "local_url": run.get("local_url"),
        "tunnel": run.get("tunnel"), "directory": str(workspace_dir),
        "connection_string": text, "connect_command": connect_command(text),
        "pairing_code_expires_at": cs.expires_at,
        "host_key_fingerprint": cs.host_key_fingerprint, "pid": run.get("pid"),
        "sshd_port": run.get("sshd_port"), "gateway_port": run.get("gateway_port"),
        "platform": info.name, "policy": info.remote_shell_policy,
        "connected": connected, "state_dir": str(state.dir), "ide": run.get("ide"),
    }


def _connect_self(state: HostState, name: str) -> dict:
    from tether.link.pairing import connect

    return connect(issue_connection_string(state, 120), name).to_dict()


def up(directory: str | Path | None = None, *, tunnel: str | None = None,
       port: int | None = None,
       public_url: str | None = None, connect: str | None = None, detach: bool = False,
       proxy_upstream: str | None = None, code_ttl_s: int = DEFAULT_CODE_TTL_S,
       state_dir: str | Path | None = None, announce=None, ide: bool = False,
       ide_extensions: tuple[str, ...] = (), ide_idle_timeout_s: int | None = None,
       restore: str | None = None, autosave: str | None = None,
       autosave_every: str | float = "10m", venvs: tuple[str | Path, ...] = (),
       rebuild_venv: bool = False, force_identity: bool = False, progress=None
       ) -> HostHandle:
    """Start the workspace (sshd, gateway, tunnel) and return a handle.

    ``tunnel=None`` picks the platform's default (`default_tunnel`): ``local`` on an ordinary
    machine, a public tunnel on Colab and Kaggle, whose local URL no laptop can reach.
    ``connect=NAME`` also pairs this machine with it under NAME (`ssh tether-NAME`).
    ``ide=True`` serves code-server behind the gateway at ``/`` (see tether.ide).
    ``restore=URL`` first restores the workspace folder, ``venvs``, the IDE's profile and the
    host identity from a snapshot store (``"default"``: ``file://<state>/snapshots``);
    ``autosave=URL`` saves them every ``autosave_every`` and when the workspace stops.
    ``progress(n_bytes)`` is called as the restore advances.
    """
    global _active
    if connect is not None:
        from tether.link.profiles import validate_name

        validate_name(connect)
    from tether.host import persist

    if restore is None and (rebuild_venv or force_identity):
        raise errors.UsageError("--rebuild-venv and --force-identity need --restore")
    restore, autosave = persist.resolve_store(restore), persist.resolve_store(autosave)
    every_s = persist.check_every(autosave_every)
    if tunnel is None:
        tunnel = default_tunnel(public_url, announce)
    workspace_dir = Path(directory or Path.cwd()).expanduser().resolve()
    fresh = restore is not None and not workspace_dir.exists()  # the restore fills it
    if not workspace_dir.is_dir() and not fresh:
        raise errors.UsageError(f"{workspace_dir} is not a directory",
                                "give the workspace folder, or leave it out for this one")
    options = UpOptions(directory=workspace_dir, tunnel=tunnel, port=port,
                        public_url=public_url, proxy_upstream=proxy_upstream,
                        code_ttl_s=code_ttl_s,
                        state_dir=Path(state_dir) if state_dir else None, ide=ide,
                        ide_extensions=_ide_extensions(ide_extensions),
                        ide_idle_timeout_s=ide_idle_timeout_s,
                        venvs=tuple(str(Path(v).expanduser().absolute()) for v in venvs),
                        autosave=autosave, autosave_every_s=every_s)
    from tether.tunnels import open_tunnel

    open_tunnel(tunnel, 1, public_url=public_url)  # validate flags before starting anything
    if autosave:
        persist.protect_local_store(autosave, announce or (lambda message: None))
    if fresh:
        workspace_dir.mkdir(parents=True)
    restored = _restore(options, restore, rebuild_venv, force_identity, announce, progress)
    if detach:
        state = _spawn_detached(options)
        workspace = None
    else:
        workspace = Workspace(options, announce=announce)
        workspace.start()
        # A notebook kernel that exits (or restarts) must not leave sshd running: it lives in
        # its own process group, which nothing else would stop.
        atexit.register(workspace.stop)
        state = workspace.state
        with _active_lock:
            _active = workspace
    try:
        connected = _connect_self(state, connect) if connect else None
        info = _result(state, workspace_dir, connect, code_ttl_s, connected)
        info["restore"] = restored
        info["autosave"] = autosave
    except BaseException:
        if workspace is not None:
            workspace.stop()
        else:
            down(state_dir=state.dir)
        raise
    return HostHandle(info, workspace)


def default_tunnel(public_url: str | None = None, announce=None) -> str:
    """The tunnel `up` uses when none is named: see `tether.host.platform.default_tunnel`.

    ``--public-url`` says the gateway port is reachable already, which only ``local`` takes.
    """
    info = plat.detect()
    if public_url is not None or info.kind not in plat.NOTEBOOK_KINDS:
        return "local"  # the cloudflared and ngrok lookups below are for notebooks only
    from tether.tunnels.ngrok import resolve_token
    from tether.tunnels.process import which

    cloudflared = which("cloudflared") is not None
    has_token = False
    if not cloudflared:  # the token matters only without cloudflared: its store may not work
        try:
            has_token = bool(resolve_token())  # looked up, never kept or shown
        except errors.TetherError:  # no token, or a secrets backend that cannot answer
            has_token = False
    kind = plat.default_tunnel(info, cloudflared=cloudflared, ngrok_token=has_token)
    if announce is not None:
        announce(f"{info.name}: using a {kind} tunnel, since the local URL is not reachable "
                 "from outside (--tunnel local to serve only this machine)")
    return kind


def _restore(options: UpOptions, store: str | None, rebuild_venv: bool, force_identity: bool,
             announce, progress) -> dict | None:
    """Restore before anything starts: an error here leaves nothing running."""
    if store is None:
        return None
    from tether.host import persist

    host = options.state_dir or HostState().dir
    comps = persist.components(options.directory, options.venvs, options.ide, host)
    return persist.restore_before_up(
        store, comps, host, force_identity=force_identity, rebuild_venv=rebuild_venv,
        announce=announce or (lambda message: None), progress=progress).to_dict()


def _ide_extensions(extensions) -> tuple[str, ...]:
    """Checked now, .vsix paths made absolute (a detached child runs in another cwd)."""
    from tether.ide.server import classify_extension

    return tuple(classify_extension(e)[1] for e in extensions)


def _options_to_json(o: UpOptions) -> str:
    data = asdict(o)
    data["directory"] = str(o.directory)
    data["state_dir"] = str(o.state_dir) if o.state_dir else None
    return json.dumps(data)


def _spawn_detached(options: UpOptions, timeout: float = 60.0) -> HostState:
    state = HostState(options.state_dir)
    if not lock_is_free(state.dir):
        run = state.read_run() or {}
        raise errors.LockedError(f"a workspace is already running here (pid {run.get('pid')})",
                                 "stop it with `tether down`, or see `tether host status`")
    paths.ensure_dir(state.dir)
    log_path = state.dir / "up.log"
    error_path = state.dir / "up.error.json"
    error_path.unlink(missing_ok=True)
    env = {**os.environ, CHILD_ENV: _options_to_json(options)}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tether.host.api"], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=str(options.directory))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = running_info(state)
        if run and run.get("pid") == proc.pid and run.get("url"):
            return state
        if proc.poll() is not None:
            raise _child_error(error_path, log_path, proc.returncode)
        time.sleep(0.05)
    proc.terminate()
    raise errors.DeadlineError(f"the workspace did not start within {timeout:.0f}s",
                               f"see {log_path}")


def _child_error(error_path: Path, log_path: Path, code: int) -> errors.TetherError:
    try:
        data = json.loads(error_path.read_text())
        cls = getattr(errors, data["kind"], errors.TetherError)
        if not (isinstance(cls, type) and issubclass(cls, errors.TetherError)):
            cls = errors.TetherError
        return cls(data["message"], data.get("hint"))
    except (OSError, ValueError, KeyError):
        return errors.TetherError(f"the background workspace exited with code {code}",
                                  f"see {log_path}")


def _child_main() -> int:
    """Entry of the detached process: run the workspace until SIGTERM."""
    data = json.loads(os.environ.pop(CHILD_ENV))
    data["directory"] = Path(data["directory"])
    data["state_dir"] = Path(data["state_dir"]) if data.get("state_dir") else None
    data["venvs"] = tuple(data.get("venvs", ()))
    options = UpOptions(**data)

    def announce(message: str) -> None:
        print(time.strftime("%Y-%m-%dT%H:%M:%S"), message, flush=True)

    workspace = Workspace(options, announce=announce)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: workspace.request_stop())
    try:
        workspace.start()
        announce(f"workspace up at {workspace.url} (pid {os.getpid()})")
        workspace.wait()
    except errors.TetherError as exc:
        paths.atomic_write(workspace.dir / "up.error.json", json.dumps(
            {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint}))
        announce(f"error: {exc.message}")
        return 1
    finally:
        workspace.stop()
    announce("workspace stopped")
    return 0


def down(timeout: float = 15.0, state_dir: str | Path | None = None) -> dict:
    """Stop the running workspace (this process's or a detached one). Idempotent."""
    global _active
    state = HostState(Path(state_dir) if state_dir else None)
    with _active_lock:
        mine = _active if _active is not None and _active.dir == state.dir else None
    if mine is not None:
        mine.stop()
        with _active_lock:
            _active = None
        return {"stopped": True, "pid": os.getpid()}
    run = state.read_run()
    if run is None:
        return {"stopped": False, "reason": "no workspace is running"}
    if lock_is_free(state.dir):
        _stop_stale_sshd(state, run)
        _stop_stale_ide(state)
        state.clear_run()
        return {"stopped": False, "reason": "no workspace is running (cleared a stale record)"}
    pid = int(run["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    # the workspace's final autosave is bounded by its own timeout: wait for it too
    deadline = time.monotonic() + timeout + float(run.get("final_save_timeout_s") or 0)
    while time.monotonic() < deadline and not lock_is_free(state.dir):
        time.sleep(0.05)
    if not lock_is_free(state.dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.2)
    _stop_stale_sshd(state, run)
    _stop_stale_ide(state)
    state.clear_run()
    return {"stopped": True, "pid": pid}


def _stop_stale_sshd(state: HostState, run: dict) -> None:
    """Kill an sshd left behind by a crashed host, but only if it is ours (its cmdline)."""
    from tether.ssh.sshd import stop_group

    pid = run.get("sshd_pid")
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if str(state.dir / "sshd_config") in cmdline:
        stop_group(int(pid))


def _stop_stale_ide(state: HostState) -> None:
    """Stop a code-server left by a crashed host (checked by its command line)."""
    from tether.ide.server import IdeLayout, ide_root, stop_stale

    stop_stale(IdeLayout(ide_root(state.dir)))


def pair_code(ttl_s: int = DEFAULT_CODE_TTL_S, state_dir: str | Path | None = None) -> dict:
    """A new one-time connection string for the running workspace."""
    if ttl_s < 30 or ttl_s > 7 * 24 * 3600:
        raise errors.UsageError("the code lifetime must be between 30 s and 7 days")
    state = HostState(Path(state_dir) if state_dir else None)
    text = issue_connection_string(state, ttl_s)
    from tether.link.connstring import ConnectionString

    cs = ConnectionString.decode(text)
    return {"connection_string": text, "connect_command": connect_command(text),
            "expires_at": cs.expires_at, "url": cs.url, "workspace_id": cs.workspace_id,
            "host_key_fingerprint": cs.host_key_fingerprint}


def host_status(state_dir: str | Path | None = None) -> dict:
    """Whether a workspace runs here, where, and since when (nothing secret)."""
    state = HostState(Path(state_dir) if state_dir else None)
    info = plat.detect()
    run = running_info(state)
    out: dict = {"running": run is not None, "platform": info.name,
                 "policy": info.remote_shell_policy, "state_dir": str(state.dir)}
    if run is not None:
        keep = ("pid", "started_at", "directory", "url", "local_url", "tunnel", "gateway_port",
                "sshd_port", "workspace_id", "host_key_fingerprint", "tunnel_restarts", "user",
                "ide")
        out.update({k: run.get(k) for k in keep})
        out["uptime_s"] = int(time.time()) - int(run.get("started_at") or time.time())
        out["clients"] = len(state.clients())
    from tether.host.persist import read_status

    out["autosave"] = read_status(state.dir)  # also after `down`: the last save's result
    return out


if __name__ == "__main__":
    raise SystemExit(_child_main())
