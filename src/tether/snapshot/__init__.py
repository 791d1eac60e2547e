"""Snapshots: content-addressed, incremental, verified copies of folders in a store.

``push(store, path)`` uploads only new content; ``pull(store, path)`` restores safely (checks
first, stages next to the destination, swaps in atomically). Format: docs/snapshot-format.md.
Stores (file://, s3://, hf://, kaggle://): ``tether.snapshot.stores``.

The same functions are on the top-level package as ``tether.snapshot_push`` etc.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "push": "tether.snapshot.api", "pull": "tether.snapshot.api",
    "list_snapshots": "tether.snapshot.api", "diff": "tether.snapshot.api",
    "verify": "tether.snapshot.api", "prune": "tether.snapshot.api",
    "forget": "tether.snapshot.api", "split_ref": "tether.snapshot.api",
    "repair": "tether.snapshot.api", "RepairResult": "tether.snapshot.api",
    "PushResult": "tether.snapshot.backup", "PullResult": "tether.snapshot.restore",
    "SnapshotInfo": "tether.snapshot.api", "Change": "tether.snapshot.api",
    "VerifyResult": "tether.snapshot.api", "PruneResult": "tether.snapshot.api",
    "restore_components": "tether.snapshot.components",
    "save_components": "tether.snapshot.components",
    "Component": "tether.snapshot.components",
    "autosave": "tether.snapshot.components",
}
# tether.snapshot_<name> in the top-level API
_ALIASES = {"snapshot_push": "push", "snapshot_pull": "pull", "snapshot_list": "list_snapshots",
            "snapshot_diff": "diff", "snapshot_verify": "verify", "snapshot_prune": "prune",
            "snapshot_forget": "forget", "snapshot_repair": "repair"}

__all__ = sorted(_API) + sorted(_ALIASES)


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    module = _API.get(target)
    if module is None:
        raise AttributeError(f"module 'tether.snapshot' has no attribute {name!r}")
    return getattr(importlib.import_module(module), target)
