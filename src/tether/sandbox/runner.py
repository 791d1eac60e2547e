"""Run one command in a bubblewrap sandbox: the thin I/O shell around `profiles.bwrap_argv`.

The run path is kept to a few milliseconds over raw bwrap: host facts are probed once per
process, the seccomp filter is compiled once, and nothing heavy is imported here. The
timeout kills bwrap, whose sandbox init dies with it (`--die-with-parent`), and the kernel
then kills every process in the sandbox's pid namespace; the run's cgroup is emptied too.
"""

from __future__ import annotations

import os
import selectors
import signal as _signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tether.errors import EnforcementError, UsageError
from tether.sandbox import limits as _limits
from tether.sandbox import probe as _probe
from tether.sandbox import trust
from tether.sandbox.profiles import (
    HostFacts,
    NetworkMode,
    SandboxSpec,
    bwrap_argv,
    etc_entries,
    missing_features,
    needs_helper,
    sandbox_environ,
)
from tether.sandbox.trust import ProjectConfig

OnOutput = Callable[[str, bytes], None]
# per stream: a command printing without end must not exhaust the host's memory; the rest is
# still streamed to on_output, and the captured bytes end with TRUNCATED
MAX_CAPTURE = 64 << 20
TRUNCATED = b"\n[tether: output truncated at 64 MiB]\n"
_HINTS = {
    "bwrap": "install bubblewrap (apt-get install bubblewrap)",
    "userns": "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)",
    "seccomp": "a kernel with seccomp filters is needed",
    "landlock": "use a kernel with Landlock, or pass landlock = false (the mount namespace "
                "still confines files)",
    "helper": "install a C compiler (cc) or python3 in /usr/bin: Landlock and the allowlist "
              "run a helper inside the sandbox",
    "pids": "no writable pids cgroup: drop --pids or run where cgroups are delegated",
    "cpu": "no writable cpu cgroup: drop --cpus or run where cgroups are delegated",
}


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float
    peak_memory_bytes: int | None
    timed_out: bool
    signal: int | None
    oom_killed: bool = False
    notes: tuple[str, ...] = ()     # how limits were enforced when it is weaker than asked
    kept: Path | None = None        # the run's home directory when --keep was given

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stdout"] = self.stdout.decode(errors="replace")
        d["stderr"] = self.stderr.decode(errors="replace")
        d["kept"] = str(self.kept) if self.kept else None
        d["notes"] = list(self.notes)
        return d


def probe() -> HostFacts:
    """What this host can enforce (cached for the process)."""
    return _probe.probe()


def check_enforceable(spec: SandboxSpec, host: HostFacts) -> None:
    missing = missing_features(spec, host)
    if missing:
        raise EnforcementError(
            f"profile {spec.profile!r} cannot be enforced here: missing "
            + ", ".join(missing),
            hint="; ".join(_HINTS.get(m, m) for m in missing)
            + " (see `tether sandbox probe`)")


_etc_cache: dict[tuple, str] = {}


def _etc_signature(entries: tuple[str, ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for e in entries:
        try:
            st = os.stat("/etc/" + e)
        except OSError:
            continue
        h.update(f"{e}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return h.hexdigest()[:16]


def _etc_dir(entries: tuple[str, ...]) -> str:
    """A prepared /etc: copies of the allowed entries plus generated passwd/group/hostname.

    Built once per content signature (mtime+size of each entry) and reused; a process
    computes the signature once, so a long-running service picks up /etc changes on restart.
    """
    uid, gid = os.getuid(), os.getgid()
    key = (uid, gid, entries)
    cached = _etc_cache.get(key)
    if cached is not None:
        return cached
    from tether import paths

    root = paths.ensure_dir(paths.cache_dir() / "sandbox", 0o700)
    d = root / f"etc-{uid}-{gid}-{_etc_signature(entries)}"
    if not d.is_dir():
        _build_etc(d, entries, uid, gid)
        _prune_etc(root, keep=d)
    _etc_cache[key] = str(d)
    return str(d)


def _prune_etc(root: Path, keep: Path) -> None:
    """Older prepared copies (the host's /etc changed since) that no run uses any more."""
    import shutil
    import time as _time

    for old in root.glob(f"etc-{os.getuid()}-*"):
        # an hour of grace: a run that started with the old copy may still have it bound
        if old != keep and _time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)


def _build_etc(d: Path, entries: tuple[str, ...], uid: int, gid: int) -> None:
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=".etc-"))
    for e in entries:
        src, dst = Path("/etc") / e, tmp / e
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink() and os.readlink(src).startswith("/usr/"):
            os.symlink(os.readlink(src), dst)    # resolves inside: /usr is bound
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dst)   # follows links (resolv.conf -> /run/... would dangle)
    files = {
        "passwd": ("root:x:0:0:root:/home/sandbox:/bin/sh\n" if uid == 0 else
                   "root:x:0:0:root:/root:/bin/sh\n"
                   f"sandbox:x:{uid}:{gid}:sandbox:/home/sandbox:/bin/sh\n")
        + "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": ("root:x:0:\n" if gid == 0 else f"root:x:0:\nsandbox:x:{gid}:\n")
        + "nogroup:x:65534:\n",
        "hostname": "sandbox\n",
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
        (tmp / name).chmod(0o644)
    tmp.chmod(0o755)
    try:
        tmp.rename(d)
    except OSError:
        if not d.is_dir():     # another process won the race otherwise
            raise
        shutil.rmtree(tmp)


def _check_paths(spec: SandboxSpec) -> None:
    for m in spec.mounts:
        if not m.source.exists():
            raise UsageError(f"mount source {m.source} does not exist",
                             hint="create it first or fix the --mount path")
    if spec.rootfs is not None and not (spec.rootfs / "usr").is_dir():
        raise UsageError(f"--rootfs {spec.rootfs} does not look like a root filesystem",
                         hint="it needs at least usr/ (e.g. made by debootstrap)")


def resolve_mounts(spec: SandboxSpec) -> SandboxSpec:
    """The spec with every mount source resolved (symlinks followed), checked again.

    bwrap follows symlinks in a bind source, so a check of the text path is not a check of
    what gets bound: `lnk -> $HOME` passes as text. The checks and the bind both use the
    resolved path. RACE: a writable mount's content may change between here and bwrap's
    bind (a concurrent sandbox swapping a directory for a link); sources given here are the
    caller's, not paths inside another run's workspace, except the guards (see build_spec).
    """
    import pwd

    from tether import paths
    from tether.sandbox.profiles import HOME_WHAT, check_mounts

    mounts = tuple(replace(m, source=Path(os.path.realpath(m.source))) for m in spec.mounts)
    # $HOME and the account's home may differ (tests, sudo -E); both hold secrets
    try:
        account_home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid with no passwd entry (e.g. `docker run --user 1234`)
        account_home = None
    homes = [h for h in (os.environ.get("HOME"), account_home) if h]
    private = {h: HOME_WHAT for h in [*homes, *map(os.path.realpath, homes)]}
    # secrets, and the trusted project configs (trust.py): a sandbox must not rewrite those
    config = str(paths.config_dir())
    for p in (config, os.path.realpath(config)):
        private.setdefault(p, f"tether's config directory {config}")
    check_mounts(mounts, private)
    return replace(spec, mounts=mounts)


class _Prepared:
    """Everything one run holds open; close() releases it all."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.pass_fds: list[int] = []
        self.cgroup: _limits.RunCgroup | None = None
        self.proxy = None
        self.kept: Path | None = None
        self.launcher = None            # a pre-joined launcher (see launchers.py), unused yet
        self.seccomp_filter = b""
        self.host: HostFacts | None = None
        self.helper = False             # the in-sandbox helper execs the command (not bwrap)
        # (writable host dir, its git metadata before the run): see _git_created
        self.git_before: list[tuple[Path, frozenset[str]]] = []

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.discard()     # removes its cgroup, which is also self.cgroup
            self.launcher = None
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds.clear()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.proxy is not None:
            self.proxy.close()


def _wants_cgroup(spec: SandboxSpec, host: HostFacts) -> bool:
    lim = spec.limits
    return bool(lim.pids or lim.cpus or (lim.memory_bytes and host.cgroup.memory))


def _prepare(spec: SandboxSpec, host: HostFacts, keep: bool,
             use_launcher: bool = False) -> _Prepared:
    """Check, then set up everything a run needs; use_launcher lets `run` take a pre-joined
    launcher (other callers spawn bwrap themselves from argv/pass_fds/cgroup)."""
    from tether.sandbox import seccomp

    check_enforceable(spec, host)
    _check_paths(spec)
    spec = resolve_mounts(spec)
    p = _Prepared()
    p.host = host
    p.git_before = [(d, _git_metadata(d)) for d in _writable_dirs(spec)]
    try:
        if keep and spec.writable_layer is None:
            import tempfile

            from tether import paths

            runs = paths.ensure_dir(paths.state_dir() / "sandbox" / "kept", 0o700)
            spec = replace(spec, writable_layer=Path(tempfile.mkdtemp(dir=runs)))
            p.kept = spec.writable_layer
        filtered = spec.network is not NetworkMode.FULL
        from tether.sandbox import landlock

        helper: list[str] = []
        proxy_socket = None
        if needs_helper(spec, host):
            if spec.network is NetworkMode.ALLOWLIST:
                from tether.sandbox import netproxy

                p.proxy = netproxy.start_proxy(spec.allow_domains, dict(spec.resolve))
                proxy_socket = p.proxy.socket_path
            helper = landlock.helper_argv(spec, host)
            p.helper = bool(helper)
            # the helper keeps AF_UNIX for the forwarder and stacks the socket rule itself
            filtered = filtered and spec.network is not NetworkMode.ALLOWLIST
        p.seccomp_filter = seccomp.cached_filter(host.arch, filtered)
        # the launcher's trampoline is the sandbox's /bin/sh: the host's, not a rootfs's
        if use_launcher and _wants_cgroup(spec, host) and spec.rootfs is None:
            from tether.sandbox import launchers

            ready = launchers.pool(host, _cgroup_dirs(host))
            p.launcher = ready.take() if ready is not None else None
        if p.launcher is not None:
            p.cgroup = p.launcher.cgroup
            seccomp_fd = p.launcher.filter_fd
        else:
            seccomp_fd, wfd = os.pipe()
            p.pass_fds.append(seccomp_fd)
            os.write(wfd, p.seccomp_filter)
            os.close(wfd)
            p.cgroup = _limits.create(spec.limits, host.cgroup, _cgroup_dirs(host))
        p.argv = bwrap_argv(spec, host, seccomp_fd=seccomp_fd,
                            etc_dir=_etc_dir(etc_entries(spec, host)), helper=helper,
                            proxy_socket=proxy_socket,
                            helper_file=landlock.helper_file(spec, host) if helper else None)
        p.env = sandbox_environ(spec)
    except BaseException:
        p.close()
        raise
    return p


_cg_dirs: dict[str, Path] | None = None


def _cgroup_dirs(host: HostFacts) -> dict[str, Path]:
    global _cg_dirs
    if _cg_dirs is None:
        _cg_dirs = _probe.cgroup_dirs() if host.cgroup.version != "none" else {}
        _limits.sweep_stale(_cg_dirs)
    return _cg_dirs


def run(spec: SandboxSpec, *, stdin: bytes | None = None, on_output: OnOutput | None = None,
        keep: bool = False, prestart: bool = True,
        on_start: Callable[[subprocess.Popen, _limits.RunCgroup | None], None] | None = None,
        ) -> RunResult:
    """Run `spec.command` in a fresh sandbox and wait for it (and everything it started).

    prestart: runs with cgroup limits may use (and keep ready) pre-joined launchers
    (launchers.py); a one-shot caller such as the CLI passes False.
    on_start(proc, cgroup): called once bwrap runs, e.g. to let another thread cancel the run
    (kill proc, then cgroup.kill_all()); used by the sandbox service (API streams, pool).
    """
    host = probe()
    prepared = _prepare(spec, host, keep, use_launcher=prestart)
    try:
        return _execute(prepared, spec, stdin, on_output, on_start)
    finally:
        prepared.close()


async def run_async(spec: SandboxSpec, *, stdin: bytes | None = None,
                    on_output: OnOutput | None = None, keep: bool = False) -> RunResult:
    """`run` without blocking the event loop; on_output is called on the loop's thread.

    Cancelling the awaiting task kills the sandbox (everything in it) before it re-raises.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    relay = None
    if on_output is not None:
        def relay(stream: str, data: bytes) -> None:
            loop.call_soon_threadsafe(on_output, stream, data)
    import contextlib
    import threading

    from tether.errors import TetherError

    lock = threading.Lock()
    state: dict = {"cancelled": False, "proc": None, "cgroup": None}

    def started(proc: subprocess.Popen, cg: _limits.RunCgroup | None) -> None:
        with lock:
            state["proc"], state["cgroup"] = proc, cg
            if state["cancelled"]:
                _kill(proc, cg)

    def cancel() -> None:
        with lock:
            state["cancelled"] = True
            if state["proc"] is not None:
                _kill(state["proc"], state["cgroup"])

    future = asyncio.ensure_future(asyncio.to_thread(
        run, spec, stdin=stdin, on_output=relay, keep=keep, on_start=started))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel()
        # wait until the sandbox (everything in it) is gone; its own failure no longer matters
        with contextlib.suppress(TetherError):
            await future
        raise


def _execute(p: _Prepared, spec: SandboxSpec, stdin: bytes | None,
             on_output: OnOutput | None, on_start=None) -> RunResult:
    cg = p.cgroup
    start = time.perf_counter()
    proc = _start(p, spec, stdin)
    if on_start is not None:
        on_start(proc, cg)
    for fd in p.pass_fds:   # bwrap has its copy; ours would only keep the pipe alive
        os.close(fd)
    p.pass_fds.clear()
    deadline = start + spec.limits.timeout_s if spec.limits.timeout_s else None
    try:
        out, err, timed_out, status, rusage = _pump(proc, stdin, deadline, on_output, cg)
    except BaseException:
        # Ctrl-C, a failing on_output callback...: the sandbox must not outlive the call
        inits = _children(proc.pid)  # bwrap's child is pid 1 of the sandbox
        _kill(proc, cg)
        proc.wait()
        # Killing bwrap does not wait for the sandbox: its pid 1 dies with it, and the
        # kernel kills and reaps the rest of the namespace before that pid 1 is done exiting.
        _wait_exited(inits, 5.0)
        raise
    result = result_from(status, rusage, out, err, timed_out, time.perf_counter() - start, cg,
                         notes=_notes(p), kept=p.kept)
    return result if p.helper else _bwrap_exec_failure(result, spec.command[0])


def _bwrap_exec_failure(result: RunResult, argv0: str) -> RunResult:
    """Without the helper, bwrap execs the command itself and reports a failure as its own
    error (exit 1); the helper and the warm pool's waiter exit 127 (not found) or 126 (not
    runnable) as shells do, so every path gives the same code. Only bwrap's exact message,
    and nothing else, counts: the command never ran."""
    if result.exit_code != 1 or result.stdout:
        return result
    for reason, code in (("No such file or directory", 127), ("Permission denied", 126)):
        if result.stderr == f"bwrap: execvp {argv0}: {reason}\n".encode():
            return replace(result, exit_code=code)
    return result


def result_from(status: int, rusage, out: bytes, err: bytes, timed_out: bool, duration: float,
                cg: _limits.RunCgroup | None, *, notes: tuple[str, ...] | None = None,
                kept: Path | None = None) -> RunResult:
    """A ``RunResult`` from what ``_pump`` returned; ``notes`` default to the cgroup's."""
    exit_code = os.waitstatus_to_exitcode(status)
    sig = None
    if exit_code < 0:
        sig, exit_code = -exit_code, 128 - exit_code
    elif exit_code > 128:
        sig = exit_code - 128   # bwrap reports a signalled command as 128+N
    peak = cg.peak_memory() if cg is not None else None
    if peak is None and rusage is not None:
        peak = rusage.ru_maxrss * 1024
    if notes is None:
        notes = tuple(cg.notes) if cg else ()
    return RunResult(exit_code=exit_code, stdout=out, stderr=err, duration_s=duration,
                     peak_memory_bytes=peak, timed_out=timed_out, signal=sig,
                     oom_killed=bool(cg and cg.oom_killed()), notes=notes, kept=kept)


def _notes(p: _Prepared) -> tuple[str, ...]:
    notes = list(p.cgroup.notes) if p.cgroup is not None else []
    if p.proxy is not None and p.proxy.refused:
        notes.append("proxy refused: " + ", ".join(p.proxy.refused))
    notes += _git_created(p.git_before)
    return tuple(notes)


def _writable_dirs(spec: SandboxSpec) -> list[Path]:
    # the .git self-bind (profiles.workspace_guards) is part of its workspace, not another
    return [m.source for m in spec.mounts
            if not m.read_only and m.source.name != ".git" and m.source.is_dir()]


def _git_metadata(d: Path) -> frozenset[str]:
    from tether.sandbox.profiles import GIT_GUARDED

    return frozenset(rel for rel in (".git", *(f".git/{n}" for n in GIT_GUARDED))
                     if os.path.lexists(d / rel))


# Entries git commands in an existing repository never create (commondir moves the config git
# reads, config.worktree adds one, hooks/ holds programs git runs): one a run created is moved
# out of .git. modules/ and worktrees/ stay notes: `git submodule update --init` and
# `git worktree add` create them.
GIT_QUARANTINED = ("commondir", "config.worktree", "hooks")
QUARANTINE_DIR = ".tether-quarantine"


def _git_created(before: list[tuple[Path, frozenset[str]]]) -> list[str]:
    """Notes for git metadata a run created in a writable host directory.

    A mount cannot guard what does not exist yet: a run in a workspace without .git can make
    one, and a run in a repository can add .git/commondir (which moves the config git reads)
    and the like. Host git would trust them. In a .git that existed before the run, the
    GIT_QUARANTINED entries it created are moved to <dir>/.tether-quarantine/<UTC stamp>/;
    the rest (a new .git, modules/, worktrees/) are reported only.
    """
    notes = []
    for d, old in before:
        created = sorted(_git_metadata(d) - old)
        if ".git" in created:
            created = [".git"]          # an agent's `git init`: reported, not moved
        names = [rel[len(".git/"):] for rel in created
                 if rel.startswith(".git/") and rel[len(".git/"):] in GIT_QUARANTINED]
        moved, failure = _quarantine(d, names) if names else ({}, None)
        for rel in created:
            name = rel[len(".git/"):] if rel.startswith(".git/") else None
            if name in moved:
                notes.append(f"the run created {d / rel}: git on this host would have trusted "
                             f"it (config and hooks there can run programs); moved it to "
                             f"{moved[name]}")
                continue
            note = (f"the run created {d / rel}: git on this host would trust it (config "
                    f"and hooks there can run programs); inspect it before running git "
                    f"in {d}, or delete it")
            if name in names:
                note += f" (it could not be moved to {d / QUARANTINE_DIR}: {failure})"
            notes.append(note)
    return notes


def _quarantine(d: Path, names: list[str]) -> tuple[dict[str, Path], str | None]:
    """Rename d/.git/NAME for each name to d/.tether-quarantine/<UTC stamp>/NAME.

    Never follows a symlink: .git, the quarantine folders and the entries are reached
    through directory descriptors opened O_NOFOLLOW, and rename moves a link, not its
    target. Nothing is deleted. Returns {name: new path} for what moved, and why the
    rest did not.
    """
    import datetime
    import errno

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    moved: dict[str, Path] = {}
    fds: list[int] = []

    def opendir(name: str, at: int, create: bool) -> int:
        if create:
            try:
                os.mkdir(name, 0o700, dir_fd=at)
            except FileExistsError:
                pass
        fd = os.open(name, flags, dir_fd=at)
        fds.append(fd)
        return fd

    try:
        top = os.open(d, flags)
        fds.append(top)
        git = opendir(".git", top, False)
        qdir = opendir(QUARANTINE_DIR, top, True)
        os.fchmod(qdir, 0o700)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1, 100):     # a taken stamp (two runs in one second, a planted one)
            folder = stamp if n == 1 else f"{stamp}-{n}"
            try:
                os.mkdir(folder, 0o700, dir_fd=qdir)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, f"no free folder for {stamp}")
        sub = opendir(folder, qdir, False)
        os.fchmod(sub, 0o700)
        failure = None
        for name in names:
            try:
                os.rename(name, name, src_dir_fd=git, dst_dir_fd=sub)
                moved[name] = d / QUARANTINE_DIR / folder / name
            except OSError as exc:
                failure = exc.strerror or str(exc)
        return moved, failure
    except OSError as exc:
        return moved, exc.strerror or str(exc)
    finally:
        for fd in fds:
            os.close(fd)


def _start(p: _Prepared, spec: SandboxSpec, stdin: bytes | None) -> subprocess.Popen:
    if p.launcher is not None:
        launcher, p.launcher = p.launcher, None
        try:
            return launcher.start(p.argv, p.env, p.seccomp_filter, spec.limits, p.host,
                                  stdin=bool(stdin))
        except OSError as exc:      # the launcher died under us: its cgroup goes with p
            launcher.discard()
            raise EnforcementError(f"cannot start bwrap: {exc}",
                                   hint="run `tether sandbox probe`") from exc
    argv = p.cgroup.wrap(p.argv) if p.cgroup is not None else p.argv
    try:
        return subprocess.Popen(
            argv, env=p.env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=p.pass_fds)
    except OSError as exc:
        raise EnforcementError(f"cannot start bwrap: {exc}",
                               hint="run `tether sandbox probe`") from exc


def _pump(proc: subprocess.Popen, stdin: bytes | None, deadline: float | None,
          on_output: OnOutput | None, cg: _limits.RunCgroup | None):
    """Copy stdin in and stdout/stderr out until bwrap exits; kill it at the deadline."""
    sel = selectors.DefaultSelector()
    bufs: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    sizes = {"stdout": 0, "stderr": 0}
    for name in ("stdout", "stderr"):
        f = getattr(proc, name)
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ, name)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    pending = memoryview(stdin) if stdin else None
    if pending is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    timed_out = exited = False
    try:
        open_streams = 2
        while open_streams or not exited:
            timeout = None if deadline is None else max(deadline - time.perf_counter(), 0)
            if timed_out:
                timeout = None
            events = sel.select(timeout)
            if not events and deadline is not None and not timed_out:
                timed_out = True
                _kill(proc, cg)
                continue
            for key, _ in events:
                name = key.data
                if name == "exit":
                    exited = True
                    sel.unregister(pidfd)
                elif name == "stdin":
                    try:
                        n = os.write(key.fd, pending[:65536])
                    except BrokenPipeError:
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(key.fd)
                        proc.stdin.close()
                else:
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fd)
                        open_streams -= 1
                    else:
                        if sizes[name] < MAX_CAPTURE:
                            bufs[name].append(data[:MAX_CAPTURE - sizes[name]])
                            if sizes[name] + len(data) >= MAX_CAPTURE:
                                bufs[name].append(TRUNCATED)
                        sizes[name] += len(data)
                        if on_output is not None:
                            on_output(name, data)
    finally:
        sel.close()
        os.close(pidfd)
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return b"".join(bufs["stdout"]), b"".join(bufs["stderr"]), timed_out, status, rusage


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:  # gone already, or a kernel without CONFIG_PROC_CHILDREN
        return []


def _wait_exited(pids: list[int], timeout: float) -> None:
    """Until each pid is gone or a zombie (done exiting), ``timeout`` at most."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            time.sleep(0.005)


def _kill(proc: subprocess.Popen, cg: _limits.RunCgroup | None) -> None:
    # once reaped (returncode set right after wait4) the pid may belong to someone else
    if proc.returncode is None:
        try:
            os.kill(proc.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass      # exited, not yet reaped: nothing left to kill
    if cg is not None:
        cg.kill_all()


def find_project_config(start: Path, policy: ProjectConfig = ProjectConfig.TRUSTED_ONLY,
                        ) -> tuple[Path | None, dict]:
    """The nearest tether.toml at or above `start` and its [sandbox] table.

    A non-empty table applies only when the user trusted the file's exact content (trust.py);
    otherwise ConfigError says how to review and trust it. IGNORED reads nothing.
    """
    if policy is ProjectConfig.IGNORED:
        return None, {}
    f = trust.find(start)
    if f is None:
        return None, {}
    data = trust.read_config(f)        # hashed and parsed from the same bytes
    table = trust.sandbox_table(f, data)
    if table:
        trust.check(f, data)
    return f, table


def _kind(path: Path) -> str | None:
    """"dir", "file", "link" or "other" without following a link; None when absent."""
    import stat

    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        from tether.errors import LocalIOError

        raise LocalIOError(f"cannot inspect {path}: {exc.strerror}",
                           hint="tether checks it to keep it read-only in the sandbox; "
                                "fix its permissions") from exc
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def build_spec(command: list[str], *, profile: str | None = None, workdir: Path | None = None,
               no_network: bool = False, allow_domains: tuple[str, ...] = (),
               mounts: tuple[str, ...] = (), env: tuple[str, ...] = (),
               memory: str | None = None, cpus: float | None = None, pids: int | None = None,
               timeout: float | None = None, rootfs: Path | None = None,
               landlock: bool | None = None, bind_toolchains: bool = True,
               project_config: ProjectConfig = ProjectConfig.TRUSTED_ONLY) -> SandboxSpec:
    """Flags + tether.toml + detected runtimes -> SandboxSpec (what `sandbox run` resolves).

    project_config: whether a tether.toml [sandbox] section may apply (see trust.py)."""
    from tether.sandbox import profiles, runtimes

    cwd = Path.cwd()
    workdir = (workdir or cwd).resolve()
    if not workdir.is_dir():
        raise UsageError(f"workspace {workdir} is not a directory",
                         hint="pass an existing directory with --workdir "
                              "(default: the current directory)")
    _, config = find_project_config(workdir, ProjectConfig(project_config))
    tool_mounts: list = []
    path_prefix: list[str] = []
    if bind_toolchains and rootfs is None:
        try:
            names = os.listdir(workdir)
        except OSError:
            names = []
        tool_mounts, path_prefix = runtimes.toolchain_mounts(runtimes.detect(command, names))
    inside_cwd = str(cwd) if cwd == workdir or workdir in cwd.parents else str(workdir)
    protect = {rel: kind for rel in profiles.GUARD_CANDIDATES
               if (kind := _kind(workdir / rel)) is not None}
    return profiles.resolve_spec(
        profile, command, workdir=workdir, cwd=inside_cwd,
        network=NetworkMode.NONE if no_network else None, allow_domains=allow_domains,
        mounts=mounts, env=env, host_env=os.environ, memory=memory, cpus=cpus, pids=pids,
        timeout=timeout, rootfs=rootfs.resolve() if rootfs else None, landlock=landlock,
        config=config, toolchain_mounts=tool_mounts, path_prefix=path_prefix, protect=protect)


def sandbox_run(command: list[str], *, stdin: bytes | None = None,
                on_output: OnOutput | None = None, keep: bool = False, prestart: bool = True,
                via: str = "python", **flags) -> RunResult:
    """The one call behind `tether sandbox run`: build the spec (see build_spec) and run it.

    The run is recorded in the audit log (tether.sandbox.audit), `via` naming the caller.
    """
    from tether.errors import TetherError
    from tether.sandbox import audit

    spec = build_spec(command, **flags)
    started = time.monotonic()
    try:
        result = run(spec, stdin=stdin, on_output=on_output, keep=keep, prestart=prestart)
    except TetherError as exc:
        audit.record_run(via=via, command=spec.command, profile=spec.profile,
                         network=spec.network, exit_code=None,
                         duration_s=time.monotonic() - started, error=exc.message)
        raise
    audit.record_result(spec, result, via=via)
    return result
