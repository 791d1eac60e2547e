"""What the CLI and `tether.host` call: install, open an IDE for a workspace, the password."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tether.ide import install as _install
from tether.ide import password as _password
from tether.ide.server import IdeOptions, IdeServer, ide_root, origin_host


def install_code_server(version: str | None = None, *, tools: Path | None = None,
                        force: bool = False, method: str = "npm",
                        on_step: Callable[[str, int, int], None] | None = None,
                        on_bytes: Callable[[int], None] | None = None) -> dict:
    """`tether ide install`: code-server (and Node) into the tools dir; instant when there.

    ``method``: "npm" (the npm registry; builds native modules) or "release" (the standalone
    archive from GitHub, which brings its own Node).
    """
    return _install.install(version, tools=tools, force=force, on_step=on_step,
                            method=method, on_bytes=on_bytes).to_dict()


@dataclass
class IdeSession:
    """An IDE for one workspace, prepared (port chosen) before the gateway starts.

    ``start(urls)`` launches code-server trusting the origins of the gateway's URLs (the
    local one and the tunnel's), so its WebSockets accept browsers that came through them.
    """

    server: IdeServer
    password_generated: bool

    @property
    def upstream(self) -> str:
        return self.server.url

    def start(self, urls: list[str | None]) -> IdeSession:
        hosts = tuple(dict.fromkeys(origin_host(u) for u in urls if u))
        self.server.options = dataclasses.replace(self.server.options, trusted_origins=hosts)
        self.server.start()
        return self

    def retrust(self, urls: list[str | None]) -> IdeSession:
        """Restart code-server trusting new gateway URLs (a restarted tunnel got a new host).

        Browsers on the old URL are cut off anyway; extensions are installed already.
        """
        self.server.stop()
        self.server.options = dataclasses.replace(self.server.options, extensions=())
        return self.start(urls)

    def stop(self) -> None:
        self.server.stop()

    def info(self, public_url: str | None) -> dict:
        return {"url": (public_url.rstrip("/") + "/") if public_url else None,
                "upstream": self.server.url, "pid": self.server.proc.pid
                if self.server.proc else None,
                "code_server": self.server.code_server.to_dict(),
                "extensions": self.server.installed_extensions,
                "password_generated": self.password_generated,
                "started_in_s": round(self.server.started_in_s, 2)}


def open_ide(workspace: Path, host_state_dir: Path, *, extensions: tuple[str, ...] = (),
             idle_timeout_s: int | None = None, version: str | None = None) -> IdeSession:
    """Find code-server and the password; nothing is started yet (see `IdeSession.start`)."""
    from tether.ide.server import classify_extension

    for e in extensions:  # bad flags fail before anything starts
        classify_extension(e)
    if idle_timeout_s is not None and idle_timeout_s < 60:
        from tether.errors import UsageError

        raise UsageError("--idle-timeout must be at least 60 seconds")
    cs = _install.require(version)
    password, generated = _password.ensure()
    options = IdeOptions(workspace=workspace, root=ide_root(host_state_dir),
                         extensions=tuple(extensions), idle_timeout_s=idle_timeout_s)
    server = IdeServer(cs, options, _password.hash_password(password))
    return IdeSession(server, generated)


def password_info(*, reveal: bool = True) -> dict:
    """The stored IDE password (for `tether ide password`)."""
    value = _password.show()
    return {"password": value if reveal else None, "key": _password.SECRET_KEY}
