"""Local records of the remote kernels this machine started, so `tether kernel attach ID` knows
where a kernel runs. One JSON file per kernel under ``state_dir()/kernels`` (0600); no session
key is stored here: the key stays in the remote 0600 connection file and comes back over SSH.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tether import paths
from tether.errors import NotFoundError, UsageError

RECORD_VERSION = 1


@dataclass(frozen=True)
class KernelRecord:
    kernel_id: str
    spec: str            # tether kernel name (``tether kernel add NAME``), "" if none
    host: str
    python: str
    ssh_config: str      # "" = OpenSSH's default lookup
    state_dir: str       # remote state dir, "" = the launcher's default
    lifetime: str
    started_at: float


def records_dir() -> Path:
    return paths.state_dir() / "kernels"


PRUNE_AFTER_S = 30 * 86400  # a kernel that old is gone; its record only clutters lookups


def save_record(record: KernelRecord) -> None:
    data = {"v": RECORD_VERSION, **asdict(record)}
    paths.atomic_write(records_dir() / f"{record.kernel_id}.json", json.dumps(data, indent=2))
    for old in list_records():
        if record.started_at - old.started_at > PRUNE_AFTER_S:
            forget_record(old.kernel_id)


def forget_record(kernel_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (records_dir() / f"{kernel_id}.json").unlink()


def list_records() -> list[KernelRecord]:
    found = []
    directory = records_dir()
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("v") != RECORD_VERSION:
            continue
        data.pop("v")
        with contextlib.suppress(TypeError):
            found.append(KernelRecord(**data))
    return sorted(found, key=lambda r: r.started_at)


def find_record(kernel_id_or_prefix: str) -> KernelRecord:
    """The record whose id is ``kernel_id_or_prefix`` or starts with it (unambiguously)."""
    matches = [r for r in list_records() if r.kernel_id.startswith(kernel_id_or_prefix)]
    exact = [r for r in matches if r.kernel_id == kernel_id_or_prefix]
    if exact:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"kernel id prefix {kernel_id_or_prefix!r} is ambiguous",
                         "give more characters: " + ", ".join(r.kernel_id for r in matches))
    raise NotFoundError(f"no kernel {kernel_id_or_prefix!r} was started from this machine",
                        "give the kernel name (tether kernel list) to find it on its host")


def now() -> float:
    return time.time()
