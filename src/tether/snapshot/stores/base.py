"""The ``Store`` protocol every snapshot backend implements, and ``open_store`` dispatch.

A store is a flat key -> bytes map. Keys are "/"-separated relative names chosen by the
repository layer ("config", "packs/ab/<id>", "index/<id>", "snapshots/<id>", "locks/<id>"),
each component made of ``[A-Za-z0-9_-]`` plus inner dots (see ``check_key``), so no backend
ever has to escape them and none can name its own temp files by accident.

Per-method contract (the conformance suite in tests/snapshot/test_store_conformance.py checks
it for every backend):

- ``put(key, data)``: idempotent (the same key and data twice is fine) and atomic when
  ``capabilities.atomic_put``: a reader sees the whole object or none of it.
- ``put_file(key, path)``: the same, streamed from a local file.
- ``get(key)``: the whole object; ``NotFoundError`` if absent.
- ``get_range(key, offset, length)``: ``length`` bytes from ``offset`` (fewer only at the end
  of the object); ``NotFoundError`` if absent. A negative ``offset`` counts from the end
  (``get_range(k, -16, 16)`` reads the last 16 bytes), which pack tails rely on.
- ``exists(key)``: whether a completed put of ``key`` is visible.
- ``list(prefix)``: the keys starting with ``prefix``, sorted. Complete immediately after a put
  only when ``capabilities.consistent_list``.
- ``delete(key)``: idempotent: deleting an absent key is fine.
- ``flush()``: make every earlier put durable and visible (batched stores commit here; others
  may fsync). The repository calls it before and after writing a snapshot object.
- ``close()``: release connections; flushes nothing implicitly.

Failures are ``TetherError`` subclasses: ``NotFoundError``, ``AuthError``,
``ConnectError``/``PeerError`` (network, service), ``RateLimitedError``, ``LocalIOError``.
Retries and rate limits are wrappers around a Store, not flags inside one.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from tether.errors import UsageError

SCHEMES: dict[str, str] = {
    "file": "tether.snapshot.stores.local",
    "s3": "tether.snapshot.stores.s3",
    "hf": "tether.snapshot.stores.hf",
    "kaggle": "tether.snapshot.stores.kaggle",
}

_KEY_PART = re.compile(r"[A-Za-z0-9_-]([A-Za-z0-9._-]*[A-Za-z0-9_-])?")


@dataclass(frozen=True)
class StoreCapabilities:
    atomic_put: bool        # a reader never sees a partially written object
    consistent_list: bool   # list() sees every completed put immediately
    batched: bool           # puts are buffered and made durable by flush() (HF, Kaggle)
    max_object_size: int | None  # largest object one put accepts; None = no limit


@runtime_checkable
class Store(Protocol):
    url: str
    capabilities: StoreCapabilities

    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise ``UsageError``.

    Valid: non-empty "/"-separated components, each ``[A-Za-z0-9_-]`` with dots allowed only
    inside (so no "", ".", "..", hidden or temp-looking names, no absolute paths).
    """
    parts = key.split("/")
    if not key or not all(_KEY_PART.fullmatch(p) for p in parts):
        raise UsageError(f"invalid store key {key!r}",
                         "keys are '/'-separated names of letters, digits, '_', '-' and inner dots")
    return key


def check_prefix(prefix: str) -> str:
    """A ``list`` prefix: empty, or a key optionally ending in "/"."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if "://" not in url or not scheme:
        raise UsageError(f"not a store URL: {url!r}",
                         "use file:///path, s3://bucket/prefix, hf://datasets/OWNER/NAME "
                         "or kaggle://OWNER/SLUG")
    return scheme


def open_store(url: str, **options: object) -> Store:
    """Open the store at ``url``, importing only the backend its scheme needs."""
    scheme = scheme_of(url)
    module_name = SCHEMES.get(scheme)
    if module_name is None:
        raise UsageError(f"unknown store scheme {scheme!r} in {url!r}",
                         f"supported: {', '.join(s + '://' for s in SCHEMES)}")
    module = importlib.import_module(module_name)
    return module.open(url, **options)
