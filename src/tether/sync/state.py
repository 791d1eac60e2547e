"""What a sync session remembers between cycles and runs, under ``paths.state_dir()/sync``.

Per session (id = a hash of host name, local root and remote root):

- ``<id>.base``: the base snapshot, ``b"TSB1"`` + a full TREE payload (docs/sync-protocol.md);
  written atomically after every cycle that changed it.
- ``<id>.json``: the registry record (pid, roots, mode, status, last cycle, conflicts) that
  `tether sync list|status|stop` read.
- ``<id>.resolve.json``: conflict resolutions the user asked for, consumed by the next cycle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tether import errors, paths
from tether.sync import protocol as P
from tether.sync.reconcile import Entry, Keep

BASE_MAGIC = b"TSB1"


def sync_dir() -> Path:
    return paths.ensure_dir(paths.state_dir() / "sync")


def session_id(name: str, local: Path, remote: str) -> str:
    key = f"{name}\0{Path(local).resolve()}\0{remote}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(key).hexdigest()[:12]


def load_base(sid: str) -> dict[str, Entry]:
    path = sync_dir() / f"{sid}.base"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise errors.LocalIOError(f"cannot read {path}: {exc.strerror}") from exc
    if not data.startswith(BASE_MAGIC):
        raise errors.IntegrityError(f"{path} is not a tether sync base (unknown version)",
                                    "move it away to start this session from scratch")
    return P.decode_tree(data[len(BASE_MAGIC):]).changed


def save_base(sid: str, base: Mapping[str, Entry]) -> None:
    payload = P.encode_tree(P.TreeDelta(True, dict(base)))
    paths.atomic_write(sync_dir() / f"{sid}.base", BASE_MAGIC + payload)


@dataclass
class SessionRecord:
    id: str
    name: str
    local: str
    remote: str
    mode: str
    watch: bool
    pid: int
    started: float
    status: str = "starting"  # starting | syncing | watching | idle | stopped | halted | error
    last_cycle: float | None = None
    cycles: int = 0
    error: str | None = None
    agent_pid: int | None = None  # the remote agent's pid (on the workspace)
    excludes: list[str] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status in ("starting", "syncing", "watching") and pid_alive(self.pid)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["running"] = self.running
        return d


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_record(rec: SessionRecord) -> None:
    paths.atomic_write(sync_dir() / f"{rec.id}.json", json.dumps(asdict(rec), default=str))


def load_record(sid: str) -> SessionRecord:
    path = sync_dir() / f"{sid}.json"
    try:
        data = json.loads(path.read_text())
        return SessionRecord(**data)
    except FileNotFoundError as exc:
        raise errors.NotFoundError(f"no sync session {sid!r}", "tether sync list") from exc
    except (ValueError, TypeError) as exc:
        raise errors.IntegrityError(f"unreadable sync session record {path}") from exc


def list_records() -> list[SessionRecord]:
    out = []
    for path in sorted(sync_dir().glob("*.json")):
        if path.name.endswith(".resolve.json"):
            continue
        with contextlib.suppress(errors.TetherError):
            out.append(load_record(path.stem))
    return sorted(out, key=lambda r: r.started)


def find_record(ref: str | None) -> SessionRecord:
    """A session by id (or unique id prefix), by a path inside its local root, or the only one."""
    records = list_records()
    if ref is None:
        running = [r for r in records if r.running] or records
        if len(running) == 1:
            return running[0]
        raise errors.UsageError("several sync sessions: say which one (id or local path)"
                                if running else "no sync sessions", "tether sync list")
    hits = [r for r in records if r.id.startswith(ref)]
    if not hits:
        target = Path(ref).resolve()
        hits = [r for r in records if target == Path(r.local) or Path(r.local) in target.parents]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise errors.NotFoundError(f"no sync session matches {ref!r}", "tether sync list")
    raise errors.UsageError(f"{ref!r} matches several sync sessions", "use the session id")


def stop_session(rec: SessionRecord, timeout: float = 10.0) -> bool:
    """SIGTERM the process running ``rec`` and wait for it; False if it was not running."""
    if not rec.running:
        return False
    os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(rec.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(errors.TetherError):
            if not load_record(rec.id).running:
                return True
    if pid_alive(rec.pid):
        raise errors.DeadlineError(f"sync session {rec.id} did not stop within {timeout:.0f} s",
                                   f"kill {rec.pid}")
    return True


def add_resolution(sid: str, rel: str, keep: Keep) -> None:
    current = take_resolutions(sid, consume=False)
    current[rel] = keep
    paths.atomic_write(sync_dir() / f"{sid}.resolve.json",
                       json.dumps({k: v.value for k, v in current.items()}))


def take_resolutions(sid: str, *, consume: bool = True) -> dict[str, Keep]:
    path = sync_dir() / f"{sid}.resolve.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raw = {}
    if consume:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return {k: Keep(v) for k, v in raw.items() if v in {x.value for x in Keep}}
