"""Keeps a tunnel up: notices a dead one, restarts it, and reports the new URL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tether.errors import TetherError
from tether.tunnels.base import Tunnel

log = logging.getLogger("tether.tunnels")


class TunnelSupervisor:
    """Polls ``tunnel.is_alive()`` every ``interval_s``; on death restarts it with backoff.

    ``on_url(url)`` is called with the first URL and with every new one after a restart;
    ``on_error(exc)`` with each failed restart (the supervisor keeps trying).
    """

    def __init__(self, tunnel: Tunnel, on_url: Callable[[str], None],
                 on_error: Callable[[TetherError], None] | None = None,
                 interval_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        self.tunnel = tunnel
        self.on_url = on_url
        self.on_error = on_error or (lambda exc: log.warning("tunnel restart failed: %s", exc))
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.url: str | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Start the tunnel (errors propagate: the first start must work) and watch it."""
        self.url = self.tunnel.start()
        self.on_url(self.url)
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="tether-tunnel-supervisor")
        self._thread.start()
        return self.url

    def _watch(self) -> None:
        backoff = self.interval_s
        while not self._stop.wait(self.interval_s):
            if self.tunnel.is_alive():
                backoff = self.interval_s
                continue
            log.warning("the %s tunnel died; restarting", self.tunnel.kind)
            try:
                url = self.tunnel.start()
            except TetherError as exc:
                self.on_error(exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.restarts += 1
            self.url = url
            if not self._stop.is_set():
                self.on_url(url)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.tunnel.stop()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
