"""Two-way file sync between the laptop and a workspace (docs/sync-protocol.md).

Pure core: :mod:`tether.sync.reconcile` (three-way merge) and :mod:`tether.sync.protocol`
(frame codec). I/O shell: :mod:`scan`, :mod:`fs` (receiver), :mod:`agent` (remote side),
:mod:`engine` (local side), :mod:`watch`, :mod:`state`. The public API is :mod:`tether.sync.api`,
re-exported here lazily so the agent and the pure modules import nothing they do not use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Keep", "Mode", "SyncResult", "reconcile", "sync_conflicts", "sync_list",
           "sync_once", "sync_once_async", "sync_resolve", "sync_status", "sync_stop",
           "sync_watch", "watch_async"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tether.sync.api"), name)
    raise AttributeError(f"module 'tether.sync' has no attribute {name!r}")
