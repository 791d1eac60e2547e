"""RetryingStore and RateLimitedStore: what is retried, how long it waits, how calls are paced."""

from __future__ import annotations

import pytest

from tests.snapshot.fakes.store_doubles import FlakyStore, MemoryStore
from tether.errors import (
    AuthError,
    ConnectError,
    DeadlineError,
    IntegrityError,
    NotFoundError,
    PeerError,
    ProtocolError,
    RateLimitedError,
    UsageError,
)
from tether.snapshot.stores.base import Store
from tether.snapshot.stores.wrappers import (
    RateLimitedStore,
    RetryingStore,
    RetryPolicy,
    TokenBucket,
    is_transient,
    retry_delay,
)

POLICY = RetryPolicy(attempts=4, base_delay=1.0, max_delay=5.0, max_retry_after=60.0)


@pytest.mark.parametrize(("failures", "outcome", "attempts", "sleeps"), [
    pytest.param([], "ok", 1, [], id="no-failure"),
    pytest.param([ConnectError("reset")], "ok", 2, [1.0], id="connect-once"),
    pytest.param([PeerError("503")] * 2, "ok", 3, [1.0, 2.0], id="5xx-twice"),
    pytest.param([DeadlineError("slow")], "ok", 2, [1.0], id="deadline"),
    pytest.param([ConnectError("x")] * 3, "ok", 4, [1.0, 2.0, 4.0], id="last-attempt-wins"),
    pytest.param([ConnectError("x")] * 4, ConnectError, 4, [1.0, 2.0, 4.0], id="gives-up"),
    pytest.param([ConnectError("x")] * 5, ConnectError, 4, [1.0, 2.0, 4.0], id="capped-attempts"),
    pytest.param([RateLimitedError("429", retry_after=7.0)], "ok", 2, [7.0],
                 id="honours-retry-after"),
    pytest.param([RateLimitedError("429", retry_after=0.1)], "ok", 2, [1.0],
                 id="retry-after-is-a-floor"),
    pytest.param([RateLimitedError("429", retry_after=3600.0)], RateLimitedError, 1, [],
                 id="retry-after-too-long"),
    pytest.param([AuthError("bad token")], AuthError, 1, [], id="auth-never"),
    pytest.param([NotFoundError("gone")], NotFoundError, 1, [], id="not-found-never"),
    pytest.param([UsageError("bad key")], UsageError, 1, [], id="usage-never"),
    pytest.param([IntegrityError("checksum")], IntegrityError, 1, [], id="integrity-never"),
    pytest.param([ProtocolError("v9")], ProtocolError, 1, [], id="protocol-never"),
    pytest.param([ConnectError("x"), AuthError("no")], AuthError, 2, [1.0],
                 id="stops-at-first-permanent"),
])
def test_retry_table(failures, outcome, attempts, sleeps):
    inner = FlakyStore(list(failures))
    inner.objects["k"] = b"v"
    slept: list[float] = []
    store = RetryingStore(inner, POLICY, sleep=slept.append, rand=lambda: 1.0)
    if outcome == "ok":
        assert store.get("k") == b"v"
    else:
        with pytest.raises(outcome):
            store.get("k")
    assert inner.attempts == attempts
    assert slept == sleeps


@pytest.mark.parametrize(("attempt", "rand", "retry_after", "expected"), [
    pytest.param(1, 1.0, None, 1.0, id="first-full"),
    pytest.param(1, 0.0, None, 0.0, id="first-no-jitter-draw"),
    pytest.param(3, 0.5, None, 2.0, id="third-half"),
    pytest.param(10, 1.0, None, 5.0, id="capped"),
    pytest.param(10, 0.25, None, 1.25, id="capped-jittered"),
    pytest.param(1, 0.5, 9.0, 9.0, id="retry-after-floor"),
    pytest.param(4, 1.0, 2.0, 5.0, id="backoff-above-retry-after"),
])
def test_retry_delay_table(attempt, rand, retry_after, expected):
    assert retry_delay(POLICY, attempt, rand, retry_after) == pytest.approx(expected)


def test_jitter_spreads_delays():
    store = RetryingStore(FlakyStore([ConnectError("x")] * 3), POLICY,
                          sleep=(slept := []).append, rand=iter([0.1, 0.9, 0.5]).__next__)
    store.list()
    assert slept == pytest.approx([0.1, 1.8, 2.0])


@pytest.mark.parametrize(("exc", "transient"), [
    pytest.param(ConnectError("x"), True, id="connect"),
    pytest.param(RateLimitedError("x"), True, id="rate-limited"),
    pytest.param(PeerError("x"), True, id="peer"),
    pytest.param(DeadlineError("x"), True, id="deadline"),
    pytest.param(ProtocolError("x"), False, id="protocol"),
    pytest.param(IntegrityError("x"), False, id="integrity"),
    pytest.param(AuthError("x"), False, id="auth"),
    pytest.param(NotFoundError("x"), False, id="not-found"),
    pytest.param(UsageError("x"), False, id="usage"),
    pytest.param(OSError("x"), False, id="untranslated"),
])
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_wrappers_are_stores_and_pass_everything_through(tmp_path):
    inner = MemoryStore()
    store = RateLimitedStore(RetryingStore(inner), ops_per_second=1000)
    assert isinstance(store, Store)
    assert store.capabilities == inner.capabilities and store.url == inner.url
    f = tmp_path / "f"
    f.write_bytes(b"file")
    store.put("a/1", b"one")
    store.put_file("a/2", f)
    assert store.get("a/2") == b"file"
    assert store.get_range("a/1", -2, 2) == b"ne"
    assert store.exists("a/1") and not store.exists("b")
    assert store.list("a/") == ["a/1", "a/2"]
    store.delete("a/1")
    store.flush()
    store.close()
    assert inner.calls[-2:] == ["flush", "close"] and inner.list() == ["a/2"]


def test_retry_of_flush_after_transient_failure():
    inner = FlakyStore([PeerError("commit failed: 502")])
    store = RetryingStore(inner, POLICY, sleep=lambda s: None)
    store.flush()
    assert inner.calls == ["flush"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(("rate", "burst", "requests", "waits"), [
    pytest.param(10, 2, [1, 1, 1, 1], [0, 0, 0.1, 0.2], id="burst-then-paced"),
    pytest.param(1, 1, [1, 1], [0, 1.0], id="one-per-second"),
    pytest.param(100, 100, [250], [1.5], id="oversized-request-waits-for-debt"),
    pytest.param(5, 5, [5, 0], [0, 0], id="exact-burst"),
])
def test_token_bucket_table(rate, burst, requests, waits):
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock)
    assert [pytest.approx(bucket.reserve(n)) for n in requests] == waits


def test_token_bucket_refills_over_time():
    clock = Clock()
    bucket = TokenBucket(2, 2, clock)
    assert bucket.reserve(2) == 0
    clock.now += 0.5
    assert bucket.reserve(1) == 0
    assert bucket.reserve(1) == pytest.approx(0.5)


def test_rate_limited_store_paces_ops_and_bytes():
    clock = Clock()
    store = RateLimitedStore(MemoryStore(), ops_per_second=2, burst_ops=1,
                             bytes_per_second=1000, clock=clock, sleep=clock.sleep)
    store.put("a", b"x" * 1000)     # one op and one second of bytes: no wait
    assert clock.now == 0
    store.put("b", b"x" * 500)      # both buckets empty: waits for the larger debt
    assert clock.now == pytest.approx(0.5)
    store.exists("a")               # ops only
    assert clock.now == pytest.approx(1.0)
    assert store.get("a") == b"x" * 1000   # bytes refilled meanwhile: only the op waits
    assert clock.now == pytest.approx(1.5)
    store.get("a")                  # op waits to 2.0, then pays 500 bytes of debt
    assert clock.now == pytest.approx(2.5)


def test_invalid_limits_are_usage_errors():
    with pytest.raises(UsageError):
        RateLimitedStore(MemoryStore(), ops_per_second=-1)
    with pytest.raises(UsageError):
        RetryPolicy(attempts=0)
