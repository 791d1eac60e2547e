"""Helpers shared by the kernel tests (a plain module: conftest is not importable)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

# In the `python -c` bootstrap every remote launcher runs (tether.kernels.target.BOOTSTRAP);
# the local ssh carries it too, as the remote command on its argv.
LAUNCHER_MARK = b'"tether-launcher"'
KINDS = ("kernel", "launcher", "local")


@dataclass(frozen=True)
class KernelProcs:
    """How to recognise every process one test's kernels involve, and nobody else's.

    - kernel: the remote ipykernel names its connection file, under ``state_dir``, on argv.
    - launcher: the remote launcher (``python -c <bootstrap>``) was started by sshd, which
      put the port it accepted on at the end of its ``SSH_CONNECTION``. That survives the
      launcher being orphaned (reparented to init), which its parent chain would not.
    - local: the ssh client (and a ProxyCommand, a `tether proxy`, the argv shim) run with
      the test's isolated ``HOME`` in the environment they were started with.
    Benchmarks and other sessions on the machine run their own sshd and homes: never matched.
    """

    state_dir: Path
    sshd_port: int
    home: Path


def _read(pid: str, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def _environ(pid: str) -> dict[bytes, bytes]:
    pairs = (item.partition(b"=") for item in _read(pid, "environ").split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _local_kind(argv: list[bytes]) -> bool:
    name = os.path.basename(argv[0])
    return name == b"ssh" or b"proxy" in argv[1:4] or b"tether.kernels.shim" in argv


def leftovers(procs: KernelProcs, kinds: tuple[str, ...] = KINDS) -> dict[str, list[int]]:
    """Live processes of ``procs`` by kind (empty kinds left out: ``{}`` means none)."""
    found: dict[str, list[int]] = {}
    state = str(procs.state_dir).encode()
    port = f" {procs.sshd_port}".encode()
    home = str(procs.home).encode()
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        cmdline = _read(pid, "cmdline")
        stat = _read(pid, "stat")
        if not cmdline or not stat or stat.rsplit(b")", 1)[-1].split()[:1] == [b"Z"]:
            continue  # a kernel thread, gone, or a zombie (dead for our purposes)
        if state in cmdline:
            kind = "kernel"
        elif LAUNCHER_MARK in cmdline and _environ(pid).get(b"SSH_CONNECTION", b"").endswith(
                port):
            kind = "launcher"
        elif _local_kind(cmdline.split(b"\0")) and _environ(pid).get(b"HOME") == home:
            kind = "local"
        else:
            continue
        if kind in kinds:
            found.setdefault(kind, []).append(int(pid))
    return found


def wait_gone(procs: KernelProcs, timeout: float = 10.0,
              kinds: tuple[str, ...] = KINDS) -> dict[str, list[int]]:
    """Wait until no kernel, remote launcher or local link process is left; what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(procs, kinds)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def remote_record(state_dir: Path) -> dict:
    [path] = list(state_dir.glob("*/launcher.json"))
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie is dead for our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)
