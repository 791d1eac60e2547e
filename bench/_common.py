"""Timing helpers the bench scripts share (`from _common import p50_ms`: each script runs as
`python bench/NAME.py`, so this folder is first on sys.path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def p50_ms(fn: Callable[[], object], n: int) -> float:
    """Median wall time of ``n`` calls of ``fn``, in milliseconds."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
