"""Warm SSH connections, and the one event-loop thread behind the sync API.

A fresh connection through the gateway costs 400-650 ms; a command on an open one ~4 ms.
:class:`LinkPool` keeps one connection per host name and hands it out again while it is open
and the profile on disk is unchanged (a reconnect with a new URL or key gets a new one).

The sync facade (``tether.exec`` and friends) runs the async API on one daemon thread's event
loop (:func:`run_sync`), so its pool, and therefore its warm connections, live as long as the
process. There is no second, hand-written sync implementation.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from tether import errors

T = TypeVar("T")


class LinkPool:
    """Open SSH connections by host name, reused while alive and the profile is unchanged."""

    def __init__(self, *, keepalive_s: float | None = 30.0,
                 opener: Callable[..., Awaitable[Any]] | None = None,
                 exec_agent: bool | None = None) -> None:
        """``exec_agent``: run commands through an exec agent on each connection (see
        :mod:`tether.link.agent_link`); pays off from the second command on a connection.
        None: on unless ``TETHER_EXEC_AGENT=0``."""
        import os

        self._conns: dict[str, tuple[Any, Any]] = {}  # name -> (profile, connection)
        self._locks: dict[str, asyncio.Lock] = {}
        self._opens: dict[str, int] = {}  # name -> connections opened so far
        self._keepalive_s = keepalive_s
        self._opener = opener
        if exec_agent is None:
            exec_agent = os.environ.get("TETHER_EXEC_AGENT", "1") != "0"
        self._exec_agent = exec_agent

    async def get(self, name: str) -> Any:
        """The warm connection for ``name``, opening one if needed."""
        from tether.link.profiles import load_profile

        profile = load_profile(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._conns.get(name)
            if cached is not None:
                old_profile, conn = cached
                if old_profile == profile and not conn.is_closed():
                    return conn
                del self._conns[name]
                conn.close()
            conn = await self._open(profile)
            self._opens[name] = self._opens.get(name, 0) + 1
            if self._exec_agent:
                from tether.link.agent_link import enable

                enable(conn)
            self._conns[name] = (profile, conn)
            return conn

    async def _open(self, profile: Any) -> Any:
        if self._opener is not None:
            return await self._opener(profile)
        from tether.link.transport import open_ssh

        return await open_ssh(profile, keepalive_s=self._keepalive_s)

    def discard(self, name: str) -> None:
        """Forget (and close) the connection for ``name``: the next get() opens a new one."""
        cached = self._conns.pop(name, None)
        if cached is not None:
            cached[1].close()

    def names(self) -> list[str]:
        return [n for n, (_, c) in self._conns.items() if not c.is_closed()]

    def open_counts(self) -> dict[str, int]:
        """Host name -> how many connections this pool has opened to it (1 while the first
        one is still being reused)."""
        return dict(self._opens)

    def agent_states(self) -> dict[str, str]:
        """Host name -> its exec agent's state ("ready", "unavailable"...) for open links."""
        from tether.link.agent_link import link_for

        out = {}
        for name, (_, conn) in self._conns.items():
            link = link_for(conn)
            if link is not None and not conn.is_closed():
                out[name] = link.state.value
        return out

    async def aclose(self) -> None:
        conns = [c for _, c in self._conns.values()]
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()


async def with_conn(pool: LinkPool, name: str, use: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``use(conn)`` on the warm connection for ``name``.

    No retry on failure: a command may have run before the link dropped, and running it a
    second time is the caller's decision. Dead connections are replaced by ``get`` instead.
    """
    return await use(await pool.get(name))


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LinkPool] = (
    weakref.WeakKeyDictionary())


def pool_for_loop() -> LinkPool:
    """The pool of the running event loop (connections cannot cross loops)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = LinkPool()
    return pool


class _LoopThread:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="tether-link",
                                          daemon=True)
                thread.start()
                self._loop = loop
            return self._loop


_runner = _LoopThread()
CANCEL_GRACE_S = 3.0


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the link thread's loop and wait for it (the sync facade's engine).

    Ctrl-C while waiting cancels the coroutine, gives its clean-up (a copy removing its
    remote temporary) up to ``CANCEL_GRACE_S`` to run, then re-raises KeyboardInterrupt.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise errors.UsageError("the sync tether API was called from inside an event loop",
                                "use the *_async variant (await tether.exec_async(...))")
    finished = threading.Event()

    async def tracked() -> T:
        try:
            return await coro
        finally:
            finished.set()

    future = asyncio.run_coroutine_threadsafe(tracked(), _runner.loop())
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        # The link thread is a daemon: without this wait the process would exit before the
        # cancelled coroutine's finally blocks ran. A second Ctrl-C ends the wait.
        finished.wait(CANCEL_GRACE_S)
        raise


def sync_loop() -> asyncio.AbstractEventLoop:
    """The event loop behind the sync facade (for handles that keep running, e.g. forwards)."""
    return _runner.loop()
