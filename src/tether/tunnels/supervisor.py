"""Keeps a tunnel up: notices a dead or cut-off one, restarts it, and reports the new URL.

Two ways a tunnel fails: its process exits (``is_alive()`` turns False, noticed within one
``interval_s``), or the process runs on while nothing reaches the gateway through it (a
cloudflared or ngrok agent cut off from its edge). The second is only visible from outside,
so with a ``probe`` the supervisor asks the public URL's ``/.tether/health`` every
``probe_every_s`` and restarts the tunnel after ``probe_failures`` failures in a row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tether.errors import TetherError
from tether.tunnels.base import Tunnel

log = logging.getLogger("tether.tunnels")

HEALTH_PATH = "/.tether/health"

# A probe answers None when the URL carries traffic to the gateway, else why not (one line).
Probe = Callable[[str], "str | None"]


def probe_health(url: str, timeout_s: float = 10.0) -> str | None:
    """GET ``url``/.tether/health: None when a tether gateway answers ok, else the problem."""
    import httpx

    try:
        # ngrok's free tier puts an HTML warning page in front of browser-like requests;
        # this header skips it (other tunnels ignore it).
        r = httpx.get(url.rstrip("/") + HEALTH_PATH, timeout=timeout_s,
                      headers={"ngrok-skip-browser-warning": "1"}, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if r.status_code != 200:
        return f"HTTP {r.status_code}"
    try:
        ok = r.json().get("ok") is True
    except (ValueError, AttributeError):
        ok = False
    return None if ok else "the answer is not a tether gateway's"


class TunnelSupervisor:
    """Polls ``tunnel.is_alive()`` every ``interval_s``; on death restarts it with backoff.

    ``on_url(url)`` is called with the first URL and with every new one after a restart;
    ``on_error(exc)`` with each failed restart (the supervisor keeps trying). With ``probe``,
    ``probe(url)`` runs every ``probe_every_s`` as well, and ``probe_failures`` failures in a
    row restart a tunnel whose process still runs. ``last_restart_reason`` says why the last
    restart happened.
    """

    def __init__(self, tunnel: Tunnel, on_url: Callable[[str], None],
                 on_error: Callable[[TetherError], None] | None = None,
                 interval_s: float = 1.0, max_backoff_s: float = 30.0, *,
                 probe: Probe | None = None, probe_every_s: float = 30.0,
                 probe_failures: int = 3) -> None:
        self.tunnel = tunnel
        self.on_url = on_url
        self.on_error = on_error or (lambda exc: log.warning("tunnel restart failed: %s", exc))
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.probe = probe
        self.probe_every_s = probe_every_s
        self.probe_failures = max(1, probe_failures)
        self.url: str | None = None
        self.restarts = 0
        self.last_restart_reason: str | None = None
        self._failed_probes = 0
        self._next_probe = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Start the tunnel (errors propagate: the first start must work) and watch it."""
        self.url = self.tunnel.start()
        self._next_probe = time.monotonic() + self.probe_every_s
        self.on_url(self.url)
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="tether-tunnel-supervisor")
        self._thread.start()
        return self.url

    def _problem(self) -> str | None:
        """Why the tunnel needs a restart now, or None."""
        if not self.tunnel.is_alive():
            return f"the {self.tunnel.kind} tunnel process exited"
        if self.probe is None or self.url is None or time.monotonic() < self._next_probe:
            return None
        self._next_probe = time.monotonic() + self.probe_every_s
        problem = self.probe(self.url)
        if problem is None:
            self._failed_probes = 0
            return None
        self._failed_probes += 1
        log.warning("health probe %d/%d through the %s tunnel failed: %s",
                    self._failed_probes, self.probe_failures, self.tunnel.kind, problem)
        if self._failed_probes < self.probe_failures:
            return None
        return (f"the {self.tunnel.kind} tunnel runs but {self.url}{HEALTH_PATH} failed "
                f"{self._failed_probes} times in a row ({problem})")

    def _watch(self) -> None:
        backoff = self.interval_s
        while not self._stop.wait(self.interval_s):
            reason = self._problem()
            if reason is None:
                backoff = self.interval_s
                continue
            if self._stop.is_set():
                return
            log.warning("%s; restarting it", reason)
            try:
                # stop first: a cut-off agent still runs (ngrok's would get a second tunnel)
                self.tunnel.stop()
                url = self.tunnel.start()
            except TetherError as exc:
                self.on_error(exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.restarts += 1
            self.last_restart_reason = reason
            self.url = url
            self._failed_probes = 0
            self._next_probe = time.monotonic() + self.probe_every_s
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
