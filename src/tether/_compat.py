"""Names that are stdlib from Python 3.11 on, taken from their backports on 3.10.

pyproject.toml promises 3.10 (Ubuntu 22.04's python3). Import this only where one of the
names is used: on 3.11+ it adds nothing to what asyncio and builtins already loaded.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import builtins
    from asyncio import TaskGroup, timeout

    BaseExceptionGroup = builtins.BaseExceptionGroup
    ExceptionGroup = builtins.ExceptionGroup
else:  # pragma: no cover - exercised by the 3.10 run
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup
    from taskgroup import TaskGroup, timeout

__all__ = ["BaseExceptionGroup", "ExceptionGroup", "TaskGroup", "timeout"]
