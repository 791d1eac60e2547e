"""Helpers shared by the kernel tests (a plain module: conftest is not importable)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def kernel_pids(marker: Path | str) -> list[int]:
    """Pids of processes whose command line mentions ``marker`` (a state dir or kernel id)."""
    out = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def wait_gone(marker: Path | str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = kernel_pids(marker)
        if not left:
            return []
        time.sleep(0.1)
    return kernel_pids(marker)


def remote_record(state_dir: Path) -> dict:
    [path] = list(state_dir.glob("*/launcher.json"))
    return json.loads(path.read_text())
