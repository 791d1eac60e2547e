"""`tether forward`: TCP ports between the laptop and a workspace, both ways.

A spec is ``LISTEN[:TARGET]`` (one port means the same number on both sides), read like
``ssh -L`` / ``ssh -R``: the first port is where the listener is. Local forwards listen on the
laptop's 127.0.0.1 and reach the workspace's 127.0.0.1:TARGET; reverse forwards listen on the
workspace's 127.0.0.1 and reach the laptop's 127.0.0.1:TARGET. Listen port 0 picks a free one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tether import errors

_SPEC_RE = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?$")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ForwardSpec:
    listen_port: int
    target_port: int
    reverse: bool = False

    def describe(self, host: str, bound_port: int | None = None) -> str:
        port = bound_port if bound_port is not None else self.listen_port
        if self.reverse:
            return f"{host}:{port} -> localhost:{self.target_port}"
        return f"localhost:{port} -> {host}:{self.target_port}"


@dataclass(frozen=True)
class ActiveForward:
    spec: ForwardSpec
    bound_port: int

    def to_dict(self, host: str) -> dict:
        return {"direction": "reverse" if self.spec.reverse else "local",
                "listen": f"{host if self.spec.reverse else 'localhost'}:{self.bound_port}",
                "target": f"{'localhost' if self.spec.reverse else host}:"
                          f"{self.spec.target_port}",
                "listen_port": self.bound_port, "target_port": self.spec.target_port}


def parse_spec(text: str, *, reverse: bool = False) -> ForwardSpec:
    m = _SPEC_RE.match(text.strip())
    if not m:
        raise errors.UsageError(f"bad forward {text!r}",
                                "use PORT or LISTEN:TARGET, e.g. 8888 or 8080:80")
    listen = int(m.group(1))
    target = int(m.group(2)) if m.group(2) else listen
    if not (0 <= listen <= 65535) or not (1 <= target <= 65535):
        raise errors.UsageError(f"port out of range in {text!r}", "ports are 1-65535")
    if target == 0 or (listen == 0 and m.group(2) is None):
        raise errors.UsageError(f"{text!r} names no target port", "use 0:TARGET for any port")
    return ForwardSpec(listen, target, reverse)


async def open_forwards(conn: Any, host: str, specs: list[ForwardSpec]) -> tuple[list, list]:
    """Start every forward or none: (listeners, ActiveForwards). Closes what it opened on error."""
    from tether.link._asyncssh import asyncssh

    listeners: list[Any] = []
    active: list[ActiveForward] = []
    try:
        for spec in specs:
            if spec.reverse:
                listener = await conn.forward_remote_port(LOOPBACK, spec.listen_port, LOOPBACK,
                                                          spec.target_port)
            else:
                listener = await conn.forward_local_port(LOOPBACK, spec.listen_port, LOOPBACK,
                                                         spec.target_port)
            listeners.append(listener)
            active.append(ActiveForward(spec, listener.get_port()))
    except asyncssh.ChannelListenError as exc:
        _close_all(listeners)
        raise errors.InUseError(
            f"{host} refused to listen on port {spec.listen_port}: {exc.reason or exc}",
            "the port may be taken there; pick another (0 picks a free one)") from exc
    except OSError as exc:
        _close_all(listeners)
        raise errors.InUseError(
            f"cannot listen on localhost:{spec.listen_port}: {exc.strerror or exc}",
            "the port may be taken here; pick another (0 picks a free one)") from exc
    except BaseException:
        _close_all(listeners)
        raise
    return listeners, active


def _close_all(listeners: list[Any]) -> None:
    for listener in listeners:
        listener.close()
