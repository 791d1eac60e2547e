"""Small helpers for the sync tests."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path


def snapshot(root: Path, *, skip_conflicts: bool = False) -> dict[str, tuple]:
    """Everything under ``root`` a user would notice: content, exec bit, links, empty dirs."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if skip_conflicts and ".conflict-" in rel:
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", Path(full).read_bytes(), bool(st.st_mode & stat.S_IXUSR))
    return out


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}")
