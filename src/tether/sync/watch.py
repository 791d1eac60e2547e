"""Noticing changes: a watchdog observer (inotify on Linux, FSEvents on macOS) on a sync root.

Both sides use :func:`start_observer`; events only say "something changed", the next scan
(cheap thanks to the stat cache) finds out what. Sync's own temporary files are ignored
except when renamed into place. :class:`Debouncer` turns a burst of events into one cycle:
it fires after ``quiet_s`` without events, or ``max_s`` after the first one at the latest,
so an editor's write-rename-chmod burst costs one round trip, not three.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from tether.sync.ignore import TEMP_PREFIX

QUIET_S = 0.008
MAX_S = 0.05


def _interesting(event: Any) -> bool:
    if event.event_type in ("opened", "closed_no_write"):
        return False
    dest = getattr(event, "dest_path", "") or ""
    for path in (dest, event.src_path):
        if path and not os.path.basename(os.fsdecode(path)).startswith(TEMP_PREFIX):
            return True
    return False


def start_observer(root: str, on_change: Callable[[], None]) -> Any:
    """A running watchdog observer calling ``on_change()`` (from its thread) on changes."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if _interesting(event):
                on_change()

    observer = Observer()
    observer.daemon = True
    observer.schedule(Handler(), root, recursive=True)
    observer.start()
    return observer


class Debouncer:
    """An asyncio event set from any thread, waited on with a short debounce."""

    def __init__(self, quiet_s: float = QUIET_S, max_s: float = MAX_S) -> None:
        self.quiet_s, self.max_s = quiet_s, max_s
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._last = 0.0

    def poke(self) -> None:
        """Thread-safe: something changed."""
        self._last = time.monotonic()
        self._loop.call_soon_threadsafe(self._event.set)

    def poke_now(self) -> None:
        """From the loop itself."""
        self._last = time.monotonic()
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for a change and its burst to settle; False on timeout with no change."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        first = time.monotonic()
        while True:
            now = time.monotonic()
            idle = now - self._last
            if idle >= self.quiet_s or now - first >= self.max_s:
                break
            await asyncio.sleep(min(self.quiet_s - idle, self.max_s - (now - first)))
        self._event.clear()
        return True
