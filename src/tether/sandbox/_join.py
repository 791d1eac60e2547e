"""``exec``/``attach`` into a running named sandbox: join its user and pid namespaces.

While a named sandbox's main command runs, a new process of that sandbox should see it (``ps``,
``kill``, ``/proc``), as ``docker exec`` does. bwrap 0.8 can start a sandbox inside existing
user and pid namespaces (``--userns FD --pidns FD``), so the new process is a complete sandbox
of the profile (its own mount namespace over the same writable layer, seccomp, Landlock, cgroup,
dropped capabilities) whose pid namespace is the main command's. What is not shared: IPC, UTS,
and, unless the profile has the host network, the network namespace (bwrap cannot join one), so
a server on the main command's loopback is not reachable from an exec under ``none``.

``join_argv`` is the pure part: the runner's argv with ``--unshare-all`` replaced by the
namespaces that are still new, plus the two fds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

NAMESPACES = ("user", "pid")


def join_argv(argv: Sequence[str], *, share_net: bool, userns_fd: int,
              pidns_fd: int) -> list[str] | None:
    """``argv`` made to join the given user and pid namespaces; None if it is not a runner
    argv this understands (then the caller starts a separate sandbox instead)."""
    if "--" in argv:
        head, tail = list(argv[:argv.index("--")]), list(argv[argv.index("--"):])
    else:
        head, tail = list(argv), []
    if head.count("--unshare-all") != 1 or "--userns" in head or "--pidns" in head:
        return None
    fresh = ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not share_net:
        fresh.append("--unshare-net")
    i = head.index("--unshare-all")
    head[i:i + 1] = [*fresh, "--userns", str(userns_fd), "--pidns", str(pidns_fd)]
    head = [a for a in head if a != "--share-net"]
    return head + tail


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def sandbox_init(supervisor_pid: int) -> int | None:
    """The pid (host view) of the main sandbox's init: supervisor -> bwrap -> bwrap init."""
    monitors = [p for p in _children_of(supervisor_pid) if _comm(p) == "bwrap"]
    if len(monitors) != 1:
        return None
    inits = [p for p in _children_of(monitors[0]) if _comm(p) == "bwrap"]
    return inits[0] if len(inits) == 1 else None


def open_namespaces(init_pid: int) -> list[int] | None:
    """fds of the init's user and pid namespaces, or None if it is gone."""
    fds: list[int] = []
    try:
        for ns in NAMESPACES:
            fds.append(os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        for fd in fds:
            os.close(fd)
        return None
    return fds


def run_joined(spec, init_pid: int, *, stdin: bytes | None = None, on_output=None,
               handle=None):
    """Run ``spec`` as a sandbox inside the main command's namespaces (module doc).

    Falls back to a separate sandbox when the main command has just ended."""
    import subprocess

    from tether.sandbox import runner
    from tether.sandbox.profiles import NetworkMode
    from tether.sandbox.service import run_blocking, spawn_prepared

    fds = open_namespaces(init_pid)
    if fds is None:
        return run_blocking(spec, stdin=stdin, on_output=on_output, handle=handle,
                            prestart=False)
    prepared = runner._prepare(spec, runner.probe(), False)
    argv = join_argv(prepared.argv, share_net=spec.network is NetworkMode.FULL,
                     userns_fd=fds[0], pidns_fd=fds[1])
    if argv is None:
        for fd in fds:
            os.close(fd)
        prepared.close()
        return run_blocking(spec, stdin=stdin, on_output=on_output, handle=handle,
                            prestart=False)
    try:
        prepared.argv = argv
        proc = spawn_prepared(prepared, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, extra_fds=fds)
        start = time.perf_counter()
        cg = prepared.cgroup
        if handle is not None:
            handle.started(proc, cg)
        deadline = start + spec.limits.timeout_s if spec.limits.timeout_s else None
        out, err, timed_out, status, rusage = runner._pump(proc, stdin, deadline, on_output, cg)
        return runner.result_from(status, rusage, out, err, timed_out,
                                  time.perf_counter() - start, cg)
    finally:
        for fd in fds:
            os.close(fd)
        prepared.close()
