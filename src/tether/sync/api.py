"""The sync Python API (re-exported from ``tether``)::

    import tether
    r = tether.sync_once("gpu", "~/proj", "work/proj")          # until both sides are in step
    print(r.uploaded, r.downloaded, [c.path for c in r.conflicts])
    tether.sync_watch("gpu", "~/proj", "work/proj")               # blocks; Ctrl-C stops
    tether.sync_list(); tether.sync_stop("a1b2"); tether.sync_resolve("~/proj/x.py", "local")

``sync_once`` runs on the link thread's loop (the sync facade over ``sync_once_async``);
``sync_watch`` owns the calling thread's loop until stopped (SIGTERM, ``stop_event`` or Ctrl-C).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tether import errors
from tether.sync import state
from tether.sync.engine import (
    CycleReport,
    SyncResult,
    make_options,
    run_session,
    sync_once_async,
    watch_async,
)
from tether.sync.reconcile import Keep, Mode, reconcile

__all__ = ["CycleReport", "Keep", "Mode", "SyncResult", "reconcile", "sync_conflicts",
           "sync_list", "sync_once", "sync_once_async", "sync_resolve", "sync_status",
           "sync_stop", "sync_watch", "watch_async"]


def sync_once(name: str, local: str | os.PathLike, remote: str | None = None, *,
              mode: Mode | str = Mode.TWO_WAY_SAFE, excludes: Sequence[str] = (),
              agent_command: str | None = None,
              on_bytes: Callable[[int], None] | None = None) -> SyncResult:
    """Sync once (sync facade of :func:`sync_once_async`); ``on_bytes(n)`` reports traffic."""
    from tether.link.pool import run_sync

    return run_sync(sync_once_async(name, local, remote, mode=mode, excludes=excludes,
                                    agent_command=agent_command, on_bytes=on_bytes))


def sync_watch(name: str, local: str | os.PathLike, remote: str | None = None, *,
               mode: Mode | str = Mode.TWO_WAY_SAFE, excludes: Sequence[str] = (),
               agent_command: str | None = None,
               on_cycle: Callable[[CycleReport], None] | None = None) -> SyncResult:
    """Watch and sync in the foreground until SIGTERM (`tether sync stop`) or Ctrl-C."""
    opts = make_options(name, local, remote, mode=mode, excludes=excludes,
                        agent_command=agent_command)

    async def main() -> SyncResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # not the main thread: stop with Ctrl-C or by cancelling
        return await run_session(opts, watch=True, on_cycle=on_cycle, stop=stop)

    return asyncio.run(main())


def sync_list() -> list[state.SessionRecord]:
    """Every session this machine knows, running or not."""
    return state.list_records()


def sync_status(ref: str | None = None) -> state.SessionRecord:
    """One session by id prefix or local path (or the only one)."""
    return state.find_record(ref)


def sync_stop(ref: str | None = None, *, all_sessions: bool = False) -> list[str]:
    """Stop running sessions; returns the ids stopped."""
    records = [r for r in state.list_records() if r.running] if all_sessions \
        else [state.find_record(ref)]
    stopped = []
    for rec in records:
        if state.stop_session(rec):
            stopped.append(rec.id)
        elif not all_sessions:
            raise errors.NotFoundError(f"sync session {rec.id} is not running",
                                       "tether sync list")
    return stopped


def sync_conflicts(ref: str | None = None) -> list[dict]:
    """The conflicts of a session as its last cycle saw them."""
    return state.find_record(ref).conflicts


def _locate(path: str | os.PathLike) -> tuple[state.SessionRecord, str]:
    target = Path(path).expanduser().absolute()
    hits = []
    for rec in state.list_records():
        root = Path(rec.local)
        if root == target or root in target.parents:
            hits.append((rec, target.relative_to(root).as_posix()))
    if not hits:
        raise errors.NotFoundError(f"{path} is not inside any sync session's local root",
                                   "tether sync list")
    running = [h for h in hits if h[0].running]
    return (running or hits)[0]


def sync_resolve(path: str | os.PathLike, keep: Keep | str, *, timeout: float = 30.0,
                 agent_command: str | None = None) -> dict:
    """Resolve the conflict at local ``path``: keep the local, the remote or both versions.

    A running session applies it in its next cycle (woken with SIGUSR1); otherwise one sync
    cycle runs here. Returns ``{"path", "keep", "session", "remaining"}``.
    """
    try:
        keep = Keep(keep)
    except ValueError as exc:
        raise errors.UsageError(f"--keep must be local, remote or both, not {keep!r}",
                                "e.g. tether sync resolve PATH --keep both (local at PATH, "
                                "the remote version beside it)") from exc
    rec, rel = _locate(path)
    if not any(c.get("path") == rel for c in rec.conflicts):
        raise errors.NotFoundError(f"no conflict at {rel!r} in sync session {rec.id}",
                                   f"tether sync conflicts {rec.id}")
    state.add_resolution(rec.id, rel, keep)
    if rec.running:
        os.kill(rec.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = state.load_record(rec.id)
            if not any(c.get("path") == rel for c in now.conflicts) and \
                    not state.take_resolutions(rec.id, consume=False):
                return _resolved(rel, keep, now)
        raise errors.DeadlineError(f"the running session {rec.id} did not apply the "
                                   f"resolution within {timeout:.0f} s",
                                   f"tether sync status {rec.id}")
    opts = make_options(rec.name, rec.local, rec.remote, mode=rec.mode, excludes=rec.excludes,
                        agent_command=agent_command)
    from tether.link.pool import run_sync

    run_sync(run_session(opts))
    return _resolved(rel, keep, state.load_record(rec.id))


def _resolved(rel: str, keep: Keep, rec: state.SessionRecord) -> dict[str, Any]:
    return {"path": rel, "keep": keep.value, "session": rec.id,
            "remaining": [c["path"] for c in rec.conflicts]}
