"""`tether status`: is a workspace reachable, how far away, how full, which GPUs.

One small POSIX shell script runs on the host and prints sections separated by marker lines;
:func:`parse_report` (pure) turns them into a :class:`HostStatus`. The round trip is the best
of a few SSH keepalive requests on the open connection (one packet each way).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

MARK = "@@tether@@"
STATUS_SCRIPT = (
    f'echo {MARK}uptime; cat /proc/uptime 2>/dev/null || sysctl -n kern.boottime 2>/dev/null; '
    f'echo {MARK}workspace; W="${{TETHER_WORKSPACE:-$HOME}}"; echo "$W"; '
    f'echo {MARK}disk; df -Pk "$W" 2>/dev/null | tail -n 1; '
    f'echo {MARK}gpus; command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi '
    '--query-gpu=name,memory.used,memory.total,utilization.gpu '
    '--format=csv,noheader,nounits 2>/dev/null; '
    f'echo {MARK}system; uname -srm; hostname; echo {MARK}end'
)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_used_mb: int | None
    memory_total_mb: int | None
    utilization_pct: int | None


@dataclass(frozen=True)
class HostStatus:
    name: str
    reachable: bool
    url: str
    rtt_ms: float | None = None
    uptime_s: float | None = None
    workspace: str | None = None
    disk_total_bytes: int | None = None
    disk_used_bytes: int | None = None
    disk_free_bytes: int | None = None
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    system: str | None = None
    hostname: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> HostStatus:
        """Inverse of :meth:`to_dict` (the link daemon sends a status as that dict)."""
        return cls(**{**data, "gpus": tuple(Gpu(**g) for g in data.get("gpus") or ())})


def _int(text: str) -> int | None:
    try:
        return int(float(text.strip()))
    except ValueError:
        return None


def parse_report(text: str) -> dict[str, Any]:
    """The script's output -> fields of HostStatus (missing sections stay None)."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(MARK):
            current = line[len(MARK):].strip()
            sections[current] = []
        elif current is not None and line.strip():
            sections[current].append(line.strip())
    out: dict[str, Any] = {}
    up = sections.get("uptime") or []
    if up:
        first = up[0]
        if first.startswith("{"):  # macOS: { sec = 1700000000, usec = 0 } ...
            import re

            m = re.search(r"sec = (\d+)", first)
            out["uptime_s"] = time.time() - int(m.group(1)) if m else None
        else:
            out["uptime_s"] = float(first.split()[0]) if first.split() else None
    ws = sections.get("workspace") or []
    out["workspace"] = ws[0] if ws else None
    disk = (sections.get("disk") or [""])[0].split()
    if len(disk) >= 4:
        total, used, free = (_int(disk[1]), _int(disk[2]), _int(disk[3]))
        out["disk_total_bytes"] = total * 1024 if total is not None else None
        out["disk_used_bytes"] = used * 1024 if used is not None else None
        out["disk_free_bytes"] = free * 1024 if free is not None else None
    gpus = []
    for line in sections.get("gpus") or []:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4:
            gpus.append(Gpu(cells[0], _int(cells[1]), _int(cells[2]), _int(cells[3])))
    out["gpus"] = tuple(gpus)
    system = sections.get("system") or []
    out["system"] = system[0] if system else None
    out["hostname"] = system[1] if len(system) > 1 else None
    return out


async def round_trip_ms(conn: Any, samples: int = 3) -> float:
    """Best of ``samples`` keepalive round trips (an SSH global request; sshd answers it)."""
    best = float("inf")
    for _ in range(samples):
        began = time.perf_counter()
        # asyncssh has no public ping; its own keepalive uses this request.
        await conn._make_global_request(b"keepalive@openssh.com")
        best = min(best, time.perf_counter() - began)
    return best * 1000


async def probe(conn: Any, name: str, url: str) -> HostStatus:
    from tether.link.exec import run_captured

    rtt = await round_trip_ms(conn)
    result = await run_captured(conn, STATUS_SCRIPT, timeout=30)
    fields = parse_report(result.stdout.decode(errors="replace"))
    return HostStatus(name=name, reachable=True, url=url, rtt_ms=round(rtt, 3), **fields)
