"""Cross-cutting store behaviour as wrappers, not flags (restic's ``retry`` and ``limiter``).

``RetryingStore`` retries transient failures (a dropped connection, a 5xx, a 429) with capped
exponential backoff and full jitter, and waits at least as long as a ``RateLimitedError``'s
``retry_after``. It never retries what another attempt cannot fix: ``AuthError``,
``NotFoundError``, ``UsageError``, ``IntegrityError``, ``ProtocolError``.

Retrying every method is safe because of the per-method contract in ``base``: puts and deletes
are idempotent, reads have no effect, and a batched store's ``flush`` keeps its pending
operations until a commit is confirmed, so a second ``flush`` after a lost answer writes the
same content again (no-op or one more identical version, never a torn one).

``RateLimitedStore`` bounds operations per second and bytes per second with token buckets,
so a push stays under a service's documented request rate instead of hitting 429s.

Both take ``sleep``/``clock``/``rand`` so tests drive them without real waiting.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tether.errors import (
    IntegrityError,
    PeerError,
    ProtocolError,
    RateLimitedError,
    UsageError,
)
from tether.snapshot.stores.base import Store, StoreCapabilities

T = TypeVar("T")


# -- retry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6           # total tries, the first included
    base_delay: float = 0.5     # seconds before the first retry (before jitter)
    max_delay: float = 30.0     # cap of one wait
    max_retry_after: float = 300.0  # a server asking for longer than this is an error

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise UsageError("invalid retry policy",
                             "attempts >= 1 and 0 <= base_delay <= max_delay")


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt might succeed: peer and network failures, not verdicts."""
    return isinstance(exc, PeerError) and not isinstance(exc, (ProtocolError, IntegrityError))


def retry_delay(policy: RetryPolicy, attempt: int, rand: float,
                retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry).

    Full jitter (AWS architecture blog "Exponential Backoff And Jitter"): a uniform draw in
    [0, min(cap, base * 2**(attempt-1))], so many clients failing together spread out.
    A server's ``retry_after`` is a floor: waiting less only earns another 429.
    """
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    delay = rand * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class RetryingStore:
    """A ``Store`` that retries transient failures of the store it wraps."""

    def __init__(self, inner: Store, policy: RetryPolicy | None = None, *,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.url = inner.url
        self._sleep = sleep
        self._rand = rand

    @property
    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities

    def _call(self, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc) or attempt >= self.policy.attempts:
                    raise
                retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
                if retry_after is not None and retry_after > self.policy.max_retry_after:
                    raise
                self._sleep(retry_delay(self.policy, attempt, self._rand(), retry_after))

    def put(self, key: str, data: bytes) -> None:
        self._call(lambda: self.inner.put(key, data))

    def put_file(self, key: str, path: Path) -> None:
        self._call(lambda: self.inner.put_file(key, path))

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call(lambda: self.inner.get_range(key, offset, length))

    def exists(self, key: str) -> bool:
        return self._call(lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> list[str]:
        return self._call(lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key))

    def flush(self) -> None:
        self._call(self.inner.flush)

    def close(self) -> None:
        self.inner.close()


# -- rate limiting -------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. Pure given ``clock``.

    ``reserve(n)`` takes ``n`` tokens now (going into debt if needed) and returns how long the
    caller must wait before acting, so concurrent callers queue fairly without a thread each.
    A request larger than ``burst`` is allowed; it just waits for the debt it creates.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst <= 0:
            raise UsageError("rate limits must be positive", "omit a limit to disable it")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, n: float) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimitedStore:
    """A ``Store`` whose calls are paced by an operations and an optional bytes budget.

    ``ops_per_second`` counts every call; ``bytes_per_second`` counts payload bytes moved by
    puts and gets (restic's ``--limit-upload``/``--limit-download`` in one figure).
    """

    def __init__(self, inner: Store, *, ops_per_second: float | None = None,
                 bytes_per_second: float | None = None, burst_ops: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.url = inner.url
        self._sleep = sleep
        self._ops = (TokenBucket(ops_per_second, burst_ops or max(1.0, ops_per_second), clock)
                     if ops_per_second else None)
        # One second of bytes may go at once: big objects wait proportionally to their size.
        self._bytes = (TokenBucket(bytes_per_second, bytes_per_second, clock)
                       if bytes_per_second else None)

    @property
    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities

    def _pace(self, nbytes: int = 0) -> None:
        wait = self._ops.reserve(1) if self._ops else 0.0
        if self._bytes and nbytes:
            wait = max(wait, self._bytes.reserve(nbytes))
        if wait > 0:
            self._sleep(wait)

    def put(self, key: str, data: bytes) -> None:
        self._pace(len(data))
        self.inner.put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._pace(path.stat().st_size)
        self.inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        self._pace()
        data = self.inner.get(key)
        if self._bytes:  # the size is known only afterwards: pay the debt before the next call
            self._sleep_for(self._bytes.reserve(len(data)))
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._pace(length)
        return self.inner.get_range(key, offset, length)

    def exists(self, key: str) -> bool:
        self._pace()
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        self._pace()
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._pace()
        self.inner.delete(key)

    def flush(self) -> None:
        self._pace()
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    def _sleep_for(self, wait: float) -> None:
        if wait > 0:
            self._sleep(wait)
