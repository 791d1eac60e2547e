"""The sandbox audit log: one JSON line per sandboxed run, appended, never rewritten.

Every run through tether (``tether sandbox run``, a named sandbox's ``exec``/``attach``, the HTTP
API, the MCP server, the warm pool) appends one record saying who ran what, under which
profile, how it ended and when. ``tether sandbox audit`` reads it back. The format is specified
in docs/sandbox-api.md ("Audit log").

Appends are single ``write(2)`` calls on an ``O_APPEND`` descriptor under an exclusive
``flock``, so concurrent writers (a server and a CLI) never interleave half lines. A reader
skips a torn or foreign line instead of failing: the log is evidence, not a database.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tether import paths
from tether.errors import LocalIOError, ProtocolError, UsageError

FORMAT_VERSION = 1
# One argument longer than this is cut in the log: a run's argv may carry a whole script.
MAX_ARG_CHARS = 512
MAX_ARGS = 64


@dataclass(frozen=True)
class AuditRecord:
    """One run. ``via`` is the door it came through: cli, api, mcp, pool."""

    time: float  # unix seconds when the run ended
    who: str  # "user@host", plus the API client's address for api runs
    via: str
    command: tuple[str, ...]
    profile: str
    network: str
    exit_code: int | None  # None when the run could not start
    duration_s: float
    timed_out: bool = False
    sandbox: str | None = None  # the named sandbox, if any
    error: str | None = None  # why the run could not start
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command)
        return {"v": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditRecord:
        if data.get("v") != FORMAT_VERSION:
            raise ProtocolError(f"audit record version {data.get('v')!r} is not supported")
        return cls(time=float(data["time"]), who=str(data["who"]), via=str(data["via"]),
                   command=tuple(str(a) for a in data["command"]),
                   profile=str(data["profile"]), network=str(data["network"]),
                   exit_code=data.get("exit_code"), duration_s=float(data["duration_s"]),
                   timed_out=bool(data.get("timed_out", False)), sandbox=data.get("sandbox"),
                   error=data.get("error"), extra=dict(data.get("extra") or {}))


def log_path() -> Path:
    return paths.state_dir() / "sandbox" / "audit.jsonl"


def default_who(client: str | None = None) -> str:
    """``user@host`` of this process, plus the remote client (``via 127.0.0.1:5123``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    who = f"{user}@{socket.gethostname()}"
    return f"{who} via {client}" if client else who


def clip_command(command: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    args = [a if len(a) <= MAX_ARG_CHARS else a[:MAX_ARG_CHARS] + "...(cut)"
            for a in list(command)[:MAX_ARGS]]
    if len(command) > MAX_ARGS:
        args.append(f"...({len(command) - MAX_ARGS} more)")
    return tuple(args)


def append(record: AuditRecord, path: Path | None = None) -> None:
    """Append ``record`` as one line; the file is created 0600."""
    path = path or log_path()
    paths.ensure_dir(path.parent)
    line = (json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     paths.PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LocalIOError(f"could not append to the audit log {path}: {exc.strerror}") from exc


def record_run(*, via: str, command, profile: str, network: str, exit_code: int | None,
               duration_s: float, timed_out: bool = False, sandbox: str | None = None,
               client: str | None = None, error: str | None = None,
               path: Path | None = None) -> AuditRecord:
    """Build and append the record of one run; returns it."""
    record = AuditRecord(time=time.time(), who=default_who(client), via=via,
                         command=clip_command(tuple(command)), profile=profile,
                         network=str(getattr(network, "value", network)), exit_code=exit_code,
                         duration_s=round(duration_s, 6), timed_out=timed_out, sandbox=sandbox,
                         error=error)
    append(record, path)
    return record


def record_result(spec: Any, result: Any, *, via: str, sandbox: str | None = None,
                  client: str | None = None, path: Path | None = None) -> AuditRecord:
    """Record a finished run from a ``SandboxSpec`` and a ``RunResult`` (tether.sandbox)."""
    return record_run(via=via, command=spec.command, profile=spec.profile,
                      network=spec.network, exit_code=result.exit_code,
                      duration_s=result.duration_s, timed_out=result.timed_out,
                      sandbox=sandbox, client=client, path=path)


def read(path: Path | None = None, *, limit: int | None = None,
         sandbox: str | None = None) -> list[AuditRecord]:
    """The records, oldest first (the last ``limit`` of them); unreadable lines are skipped."""
    path = path or log_path()
    if limit is not None and limit < 0:
        raise UsageError("--limit must be zero or more",
                         hint="--limit N shows the last N runs; --limit 0 shows all")
    try:
        with path.open("rb") as fh:
            raw_lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LocalIOError(f"could not read the audit log {path}: {exc.strerror}") from exc
    records: list[AuditRecord] = []
    for raw in raw_lines:
        with contextlib.suppress(ValueError, KeyError, TypeError, ProtocolError):
            record = AuditRecord.from_json(json.loads(raw))
            if sandbox is None or record.sandbox == sandbox:
                records.append(record)
    return records[-limit:] if limit else records
