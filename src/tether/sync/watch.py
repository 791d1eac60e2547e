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
import threading
import time
from collections.abc import Callable
from typing import Any

from tether.sync.ignore import TEMP_PREFIX

QUIET_S = 0.008
MAX_S = 0.05


def changed_paths(root: str, event: Any) -> list[str]:
    """The root-relative paths an event touched that a rescan must look at again."""
    if event.event_type in ("opened", "closed_no_write"):
        return []
    if event.is_directory and event.event_type == "modified":
        return []  # a child's create/delete/move event says what changed inside
    out = []
    prefix = root.rstrip("/") + "/"
    for path in (event.src_path, getattr(event, "dest_path", "") or ""):
        path = os.fsdecode(path)
        if not path or os.path.basename(path).startswith(TEMP_PREFIX):
            continue
        if path == root.rstrip("/"):
            out.append("")
        elif path.startswith(prefix):
            out.append(path[len(prefix):])
    return out


def start_observer(root: str, on_paths: Callable[[list[str]], None]) -> Any:
    """A running watchdog observer calling ``on_paths(rel_paths)`` from its thread."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            paths = changed_paths(root, event)
            if paths:
                on_paths(paths)

    observer = Observer()
    observer.daemon = True
    observer.schedule(Handler(), root, recursive=True)
    observer.start()
    return observer


class DirtySet:
    """Paths changed since the last take, filled from a watcher thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()

    def add(self, paths: list[str]) -> None:
        with self._lock:
            self._paths.update(paths)

    def take(self) -> set[str]:
        with self._lock:
            out, self._paths = self._paths, set()
        return out


class Debouncer:
    """An asyncio event set from any thread, waited on with a short debounce."""

    def __init__(self, quiet_s: float = QUIET_S, max_s: float = MAX_S) -> None:
        self.quiet_s, self.max_s = quiet_s, max_s
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._last = 0.0
        self.dirty = DirtySet()

    def poke(self, paths: list[str] | None = None) -> None:
        """Thread-safe: something changed (at ``paths``, relative to the root)."""
        if paths:
            self.dirty.add(paths)
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
        except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
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
