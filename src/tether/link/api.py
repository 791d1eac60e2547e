"""The remote-work Python API: exec, copy, forward, status on a paired workspace.

Each operation is an ``async`` function (``exec_async``...) working on the event loop's warm
connection pool; the sync names (``exec``...) run that same coroutine on the link thread
(:func:`tether.link.pool.run_sync`), whose pool keeps connections warm between calls::

    import tether
    r = tether.exec("gpu", ["nvidia-smi", "-L"])
    print(r.exit_code, r.stdout.decode())
    tether.copy(["data/"], "gpu:work/", recursive=True)
    with tether.forward("gpu", ["8888"]) as fw:
        ...  # localhost:8888 reaches the workspace's port 8888
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tether import errors
from tether.link.copy import CopyPlan, CopyResult, copy_on, split_direction
from tether.link.exec import ExecResult, build_command, run_captured
from tether.link.forward import ActiveForward, ForwardSpec, open_forwards, parse_spec
from tether.link.pool import LinkPool, pool_for_loop, run_sync, with_conn
from tether.link.status import HostStatus, probe

__all__ = ["ActiveForward", "CopyPlan", "CopyResult", "ExecResult", "Forwarding",
           "ForwardSpec", "HostStatus", "copy", "copy_async", "exec", "exec_async",
           "forward", "forward_async", "status", "status_async"]

Env = Mapping[str, str] | Sequence[tuple[str, str]]


async def exec_async(name: str, command: str | Sequence[str], *, cwd: str | None = None,
                     env: Env = (), input: bytes | str | None = None,
                     timeout: float | None = None, check: bool = False,
                     pool: LinkPool | None = None) -> ExecResult:
    """Run ``command`` on host ``name``; stdout and stderr come back separately.

    ``command`` as a string is shell text; as a list it is an argv (each item quoted).
    ``check=True`` raises PeerError on a non-zero exit.
    """
    line = build_command(command, cwd=cwd, env=env)
    data = input.encode() if isinstance(input, str) else input
    result = await with_conn(pool or pool_for_loop(), name,
                             lambda conn: run_captured(conn, line, input=data, timeout=timeout))
    return result.check() if check else result


def exec(name: str, command: str | Sequence[str], **kwargs: Any) -> ExecResult:  # noqa: A001
    """Sync :func:`exec_async` (same arguments)."""
    return run_sync(exec_async(name, command, **kwargs))


async def copy_async(sources: str | Sequence[str], dest: str, *, recursive: bool = False,
                     progress: Callable[[CopyPlan], Callable[[int], None]] | None = None,
                     pool: LinkPool | None = None) -> CopyResult:
    """Copy between the laptop and a host: ``copy_async(["a.txt"], "gpu:dir/")``.

    ``progress(plan)`` is called once the files are known and returns ``advance(nbytes)``.
    """
    srcs = [sources] if isinstance(sources, str) else list(sources)
    host, upload, paths, target = split_direction(srcs, dest)
    return await with_conn(pool or pool_for_loop(), host,
                           lambda conn: copy_on(conn, (host, upload, paths, target),
                                                recursive=recursive, on_plan=progress))


def copy(sources: str | Sequence[str], dest: str, **kwargs: Any) -> CopyResult:
    """Sync :func:`copy_async`."""
    return run_sync(copy_async(sources, dest, **kwargs))


async def status_async(name: str, *, pool: LinkPool | None = None) -> HostStatus:
    """Reachability, round trip, uptime, workspace disk and GPUs of host ``name``.

    An unreachable host is a result (``reachable=False``, ``error``), not an exception;
    a refused key or a host key mismatch still raises.
    """
    from tether.link.profiles import load_profile

    profile = load_profile(name)
    the_pool = pool or pool_for_loop()
    try:
        return await with_conn(the_pool, name, lambda conn: probe(conn, name, profile.url))
    except errors.AuthError:
        raise
    except (errors.ConnectError, errors.DeadlineError, errors.ProtocolError) as exc:
        return HostStatus(name=name, reachable=False, url=profile.url, error=exc.message)


def status(name: str, **kwargs: Any) -> HostStatus:
    """Sync :func:`status_async`."""
    return run_sync(status_async(name, **kwargs))


class Forwarding:
    """Running forwards of one host; close (or leave the ``with`` block) to stop them."""

    def __init__(self, name: str, conn: Any, listeners: list[Any],
                 active: list[ActiveForward], loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.forwards = active
        self._conn = conn
        self._listeners = listeners
        self._loop = loop

    def to_dicts(self) -> list[dict]:
        return [f.to_dict(self.name) for f in self.forwards]

    async def wait_closed(self) -> None:
        """Wait until the link drops (the forwards die with it)."""
        await self._conn.wait_closed()
        if self._listeners:  # still wanted: the link went away under us
            raise errors.ConnectError(f"the link to {self.name!r} dropped; forwards stopped",
                                      "run `tether forward` again once the host is back")

    async def aclose(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        for listener in listeners:
            await listener.wait_closed()

    def close(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise errors.UsageError("close() would block the event loop",
                                    "use `await fw.aclose()` inside it")
        asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result()

    async def __aenter__(self) -> Forwarding:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Forwarding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _specs(specs: Sequence[str | ForwardSpec], reverse: bool) -> list[ForwardSpec]:
    out = [s if isinstance(s, ForwardSpec) else parse_spec(str(s), reverse=reverse)
           for s in specs]
    if not out:
        raise errors.UsageError("no ports to forward", "tether forward NAME PORT[:PORT]...")
    return out


async def forward_async(name: str, specs: Sequence[str | ForwardSpec], *,
                        reverse: bool = False, pool: LinkPool | None = None) -> Forwarding:
    """Start forwarding ``specs`` ("8888", "8080:80", or ForwardSpec) for host ``name``."""
    wanted = _specs(specs, reverse)
    conn = await (pool or pool_for_loop()).get(name)
    listeners, active = await open_forwards(conn, name, wanted)
    return Forwarding(name, conn, listeners, active, asyncio.get_running_loop())


def forward(name: str, specs: Sequence[str | ForwardSpec], *, reverse: bool = False,
            ) -> Forwarding:
    """Sync :func:`forward_async`: forwards keep running on the link thread until closed."""
    return run_sync(forward_async(name, specs, reverse=reverse))

