"""Resource limits for one run: a cgroup (v2 or v1) per run, RLIMIT_AS as the memory fallback.

The run starts as a tiny `sh` that writes its own pid into the run's `cgroup.procs` files (and
sets RLIMIT_AS for the fallback) and then execs bwrap, so no process of the run ever exists
outside the cgroup. A shell instead of `preexec_fn`: Python must fork() itself for preexec_fn,
which costs several milliseconds for a big process, while without it subprocess uses vfork().
pids and cpu have no honest rlimit equivalent (RLIMIT_NPROC counts every process of the user
on the host and root ignores it; RLIMIT_CPU is CPU time, not a rate), so without a cgroup the
runner refuses those limits instead of pretending.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import EnforcementError
from tether.sandbox.profiles import CgroupFacts, Limits

CPU_PERIOD_US = 100_000
SHELL = "/bin/sh"
# exit 125 (like env/timeout) if joining fails: never run outside the limits
JOIN_SCRIPT = ('while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; '
               'shift; exec "$@"')


@dataclass
class RunCgroup:
    """The cgroup directories of one run and the cgroup.procs files its shell joins."""

    version: str
    dirs: dict[str, Path] = field(default_factory=dict)   # controller (or "unified") -> dir
    procs_files: list[str] = field(default_factory=list)
    rlimit_as: int | None = None
    notes: list[str] = field(default_factory=list)

    def wrap(self, argv: list[str]) -> list[str]:
        """argv prefixed with the shell that joins the cgroup(s) / sets rlimits, then execs."""
        if not self.procs_files and self.rlimit_as is None:
            return argv
        script = JOIN_SCRIPT
        if self.rlimit_as is not None:
            script = f"ulimit -v {self.rlimit_as // 1024} || exit 125; " + script
        return [SHELL, "-c", script, "tether-join", *self.procs_files, "--", *argv]

    def _read(self, controller: str, name: str) -> str | None:
        d = self.dirs.get(controller) or self.dirs.get("unified")
        if d is None:
            return None
        try:
            return (d / name).read_text()
        except OSError:
            return None

    def peak_memory(self) -> int | None:
        text = (self._read("memory", "memory.max_usage_in_bytes") if self.version == "v1"
                else self._read("unified", "memory.peak"))
        return int(text) if text and text.strip().isdigit() else None

    def oom_killed(self) -> bool:
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        text = self._read("memory", name) or ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip() not in ("", "0"):
                return True
        return False

    def kill_all(self) -> None:
        """Kill every process still in the run's cgroup(s)."""
        for d in self.dirs.values():
            if (d / "cgroup.kill").exists():
                try:
                    (d / "cgroup.kill").write_text("1")
                    continue
                except OSError:
                    pass
            for _ in range(50):
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.002)

    def remove(self) -> None:
        for d in self.dirs.values():
            for attempt in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # processes still exiting; the pid namespace teardown is quick
                    if attempt == 20:
                        self.kill_all()
                    time.sleep(0.005)


STALE_AFTER_S = 300


def sweep_stale(base_dirs: dict[str, Path], now: float | None = None) -> int:
    """Remove empty run cgroups left by crashed processes (older than STALE_AFTER_S).

    Age matters: a fresh empty one may belong to a run that is about to join it.
    """
    now = time.time() if now is None else now
    removed = 0
    for base in base_dirs.values():
        try:
            entries = [e for e in os.scandir(base) if e.name.startswith("tether-")]
        except OSError:
            continue
        for e in entries:
            try:
                if now - e.stat().st_mtime > STALE_AFTER_S:
                    os.rmdir(e.path)     # fails (EBUSY) if anything still runs in it
                    removed += 1
            except OSError:
                continue
    return removed


def create(limits: Limits, facts: CgroupFacts, base_dirs: dict[str, Path],
           *, measure: bool = False, every_controller: bool = False) -> RunCgroup:
    """Make the run's cgroup(s) and write the limits; raise EnforcementError if one can't be.

    every_controller: make a cgroup in every writable controller even without a limit for it
    (pre-joined launchers take their limits later, see apply_limits).
    """
    if limits.pids and not facts.pids:
        raise EnforcementError("the pids limit cannot be enforced here (no writable pids cgroup)",
                               hint="run `tether sandbox probe`; or drop --pids / use a "
                                    "profile without it")
    if limits.cpus and not facts.cpu:
        raise EnforcementError("the cpu limit cannot be enforced here (no writable cpu cgroup)",
                               hint="run `tether sandbox probe`; or drop --cpus")
    name = "tether-" + os.urandom(6).hex()
    cg = RunCgroup(version=facts.version)
    try:
        if facts.version == "v2":
            _open_procs(cg, "unified", base_dirs["unified"] / name)
        elif facts.version == "v1":
            wanted = {"memory": facts.memory and (bool(limits.memory_bytes) or measure),
                      "pids": bool(limits.pids), "cpu": bool(limits.cpus)}
            for c, have in (("memory", facts.memory), ("pids", facts.pids), ("cpu", facts.cpu)):
                if have and (wanted[c] or every_controller):
                    _open_procs(cg, c, base_dirs[c] / name)
        apply_limits(cg, limits, facts)
        if limits.memory_bytes and not facts.memory:
            cg.rlimit_as = limits.memory_bytes
            cg.notes.append("memory limit enforced with RLIMIT_AS per process (no memory "
                            "cgroup): a run may use more in total across processes")
    except OSError as exc:
        cg.remove()
        raise EnforcementError(f"cannot set up the run's cgroup: {exc}",
                               hint="run `tether sandbox probe`") from exc
    return cg


def _open_procs(cg: RunCgroup, key: str, d: Path) -> None:
    d.mkdir()
    cg.dirs[key] = d
    cg.procs_files.append(str(d / "cgroup.procs"))


def apply_limits(cg: RunCgroup, limits: Limits, facts: CgroupFacts) -> None:
    """Write `limits` into the run's existing cgroup directories (before anything runs)."""
    if cg.version == "v2":
        d = cg.dirs["unified"]
        if limits.memory_bytes and facts.memory:
            (d / "memory.max").write_text(str(limits.memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
        if limits.pids:
            (d / "pids.max").write_text(str(limits.pids))
        if limits.cpus:
            (d / "cpu.max").write_text(f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        return
    if limits.memory_bytes and "memory" in cg.dirs:
        d = cg.dirs["memory"]
        (d / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        # without this the run could push pages to swap and keep going
        memsw = d / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(limits.memory_bytes))
    if limits.pids and "pids" in cg.dirs:
        (cg.dirs["pids"] / "pids.max").write_text(str(limits.pids))
    if limits.cpus and "cpu" in cg.dirs:
        d = cg.dirs["cpu"]
        (d / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (d / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * CPU_PERIOD_US)))
