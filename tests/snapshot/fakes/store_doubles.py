"""In-memory ``Store`` doubles for testing store wrappers (not a stand-in for a real service).

``MemoryStore`` is a complete, thread-safe key -> bytes map that follows the ``Store``
contract. ``FlakyStore`` wraps one and raises a scripted sequence of errors before letting a
call through, so retry behaviour can be checked call by call.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from tether.errors import NotFoundError
from tether.snapshot.stores.base import StoreCapabilities, check_key, check_prefix


class MemoryStore:
    capabilities = StoreCapabilities(atomic_put=True, consistent_list=True, batched=False,
                                     max_object_size=None)

    def __init__(self, url: str = "memory://test") -> None:
        self.url = url
        self.objects: dict[str, bytes] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        self.calls.append("put")
        with self._lock:
            self.objects[check_key(key)] = bytes(data)

    def put_file(self, key: str, path: Path) -> None:
        self.calls.append("put_file")
        with self._lock:
            self.objects[check_key(key)] = Path(path).read_bytes()

    def get(self, key: str) -> bytes:
        self.calls.append("get")
        try:
            return self.objects[check_key(key)]
        except KeyError:
            raise NotFoundError(f"{key} not found") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = self.get(key)
        start = max(0, len(data) + offset) if offset < 0 else offset
        return data[start:start + length]

    def exists(self, key: str) -> bool:
        self.calls.append("exists")
        return check_key(key) in self.objects

    def list(self, prefix: str = "") -> list[str]:
        self.calls.append("list")
        check_prefix(prefix)
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self.calls.append("delete")
        with self._lock:
            self.objects.pop(check_key(key), None)

    def flush(self) -> None:
        self.calls.append("flush")

    def close(self) -> None:
        self.calls.append("close")


class FlakyStore(MemoryStore):
    """Raises the queued exceptions, one per call, before behaving like ``MemoryStore``."""

    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__("memory://flaky")
        self.failures = deque(failures)
        self.attempts = 0

    def _maybe_fail(self) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.popleft()

    def put(self, key: str, data: bytes) -> None:
        self._maybe_fail()
        super().put(key, data)

    def get(self, key: str) -> bytes:
        self._maybe_fail()
        return super().get(key)

    def list(self, prefix: str = "") -> list[str]:
        self._maybe_fail()
        return super().list(prefix)

    def flush(self) -> None:
        self._maybe_fail()
        super().flush()
