"""Pre-joined launchers: bwrap processes already inside a fresh cgroup, waiting for their args.

Moving a process into a cgroup v1 hierarchy waits for an RCU grace period (1-20 ms depending
on load): too much for a run path that should cost a few milliseconds over bwrap itself. A
launcher pays it in the background: `sh` joins a fresh cgroup (every writable controller, no
limits yet) and execs `bwrap --args FD -- /bin/sh /run/tether/cmd.sh`, which blocks reading its
options. A run takes a launcher, writes its limits into the cgroup, its seccomp filter into one
pipe, `exec <the quoted command>` into another (bound as cmd.sh: bwrap takes options, not the
command, from --args) and its option list (with `--clearenv --setenv K V...`, so env values never
appear on a command line) into the last; only then does bwrap start creating the sandbox.
Nothing of the run can exist before its limits are in place.

Each launcher serves exactly one run; the pool refills in a background thread. If none is
ready, the runner takes the ordinary path (create cgroup, join, exec).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from tether.sandbox import limits as _limits
from tether.sandbox.profiles import HostFacts, Limits

POOL_SIZE = 2
CMD_SCRIPT = "/run/tether/cmd.sh"


def sh_quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """bwrap argv (as made by bwrap_argv) -> (options, command)."""
    sep = argv.index("--chdir") + 2
    if argv[sep] != "--":
        raise ValueError("not a bwrap_argv command line")
    return argv[1:sep], argv[sep + 1:]


@dataclass
class Launcher:
    proc: subprocess.Popen
    cgroup: _limits.RunCgroup
    args_fd: int       # the fd number bwrap reads its args from (same number in both)
    filter_fd: int     # the fd number bwrap reads the seccomp filter from
    cmd_fd: int        # the fd number bwrap copies cmd.sh from
    _args_w: int
    _filter_w: int
    _cmd_w: int

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, argv: list[str], env: dict[str, str], seccomp_filter: bytes,
              limits: Limits, host: HostFacts, stdin: bool) -> subprocess.Popen:
        """Apply limits, hand over filter and args: bwrap starts the sandbox after this."""
        options, command = split_argv(argv)
        _limits.apply_limits(self.cgroup, limits, host.cgroup)
        _write_all(self._filter_w, seccomp_filter)
        _write_all(self._cmd_w, ("exec " + " ".join(map(sh_quote, command)) + "\n").encode())
        envs = [x for k, v in sorted(env.items()) for x in ("--setenv", k, v)]
        args = ["--clearenv", *envs, *options, "--ro-bind-data", str(self.cmd_fd), CMD_SCRIPT]
        for fd in (self._filter_w, self._cmd_w):
            os.close(fd)
        _write_all(self._args_w, b"".join(a.encode() + b"\0" for a in args))
        os.close(self._args_w)
        self._args_w = self._filter_w = self._cmd_w = -1
        if not stdin:
            self.proc.stdin.close()
        return self.proc

    def discard(self) -> None:
        for fd in (self._args_w, self._filter_w, self._cmd_w):
            if fd >= 0:
                os.close(fd)     # bwrap reads EOF without options and fails to mount: exits
        self._args_w = self._filter_w = self._cmd_w = -1
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                f.close()
        self.cgroup.remove()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def spawn(host: HostFacts, base_dirs: dict[str, Path]) -> Launcher:
    cg = _limits.create(Limits(), host.cgroup, base_dirs, every_controller=True)
    (args_r, args_w), (filter_r, filter_w), (cmd_r, cmd_w) = os.pipe(), os.pipe(), os.pipe()
    try:
        argv = cg.wrap([host.bwrap or "bwrap", "--args", str(args_r), "--",
                        "/bin/sh", CMD_SCRIPT])
        if argv[0] != _limits.SHELL:       # no cgroup to join: nothing to pre-pay
            raise OSError("no cgroup for a launcher")
        proc = subprocess.Popen(argv, env={}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(args_r, filter_r, cmd_r))
    except BaseException:
        for fd in (args_w, filter_w, cmd_w):
            os.close(fd)
        cg.remove()
        raise
    finally:
        for fd in (args_r, filter_r, cmd_r):
            os.close(fd)
    return Launcher(proc, cg, args_r, filter_r, cmd_r, args_w, filter_w, cmd_w)


class LauncherPool:
    """A few ready launchers for runs with limits; thread-safe; refilled in the background."""

    def __init__(self, host: HostFacts, base_dirs: dict[str, Path], size: int = POOL_SIZE):
        self.host, self.base_dirs, self.size = host, base_dirs, size
        self._ready: list[Launcher] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._failed = False
        self._thread = threading.Thread(target=self._fill, daemon=True,
                                        name="tether-launchers")
        self._thread.start()

    def take(self) -> Launcher | None:
        with self._lock:
            while self._ready:
                launcher = self._ready.pop(0)
                if launcher.alive():
                    self._wake.set()
                    return launcher
                launcher.discard()
        self._wake.set()
        return None

    def _fill(self) -> None:
        while not self._closed and not self._failed:
            with self._lock:
                missing = self.size - len(self._ready)
            if missing <= 0:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                launcher = spawn(self.host, self.base_dirs)
            except (OSError, _limits.EnforcementError):
                self._failed = True       # the ordinary path still works; stop trying
                return
            with self._lock:
                if self._closed:
                    launcher.discard()
                    return
                self._ready.append(launcher)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            ready, self._ready = self._ready, []
        for launcher in ready:
            launcher.discard()


_pool: LauncherPool | None = None
_pool_lock = threading.Lock()


def _forget_in_child() -> None:
    # a forked child must not touch its parent's launchers (they are not its children, and
    # removing their cgroups would kill them): it starts its own pool when it needs one
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def pool(host: HostFacts, base_dirs: dict[str, Path]) -> LauncherPool | None:
    """The process-wide pool (made on first use), or None where cgroups are not writable.

    TETHER_SANDBOX_LAUNCHERS=0 turns it off (every run then joins its cgroup itself).
    """
    global _pool
    if os.environ.get("TETHER_SANDBOX_LAUNCHERS") == "0" or host.cgroup.version == "none":
        return None
    with _pool_lock:
        if _pool is None:
            _pool = LauncherPool(host, base_dirs)
            atexit.register(_pool.close)
        return _pool
