"""The warm pool: sandboxes started ahead of time, so a run costs a pipe write, not a bwrap.

A warm sandbox is a complete bwrap of the requested spec (namespaces, seccomp, Landlock
helper, cgroup, network mode, mounts) whose command is a tiny waiter: python3 blocked reading
a control pipe. A pooled run writes ``{"argv", "cwd"}`` to that pipe; the waiter ``exec``s the
command in place, so the command runs with exactly the protections a cold run would get.

Fresh state, always: a warm sandbox is used for ONE run and then discarded, and it is refilled
in the background. Its /tmp, /run and home are tmpfs of its own, and every writable bind mount
(the workspace under moderate/permissive) is replaced by a private copy of its source made when
the sandbox was warmed, so a pooled run never writes to a host path and nothing one run writes
is visible to the next. (A cold ``tether sandbox run`` writes the real workspace instead.)

Specs are pooled by *shape* (the spec without its command and cwd). A shape is warmed when it
is first asked for (that run starts cold) or explicitly with ``warm()``; at most
``max_shapes`` shapes are kept, least recently used first out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tether import paths
from tether.errors import EnforcementError, TetherError, UsageError
from tether.sandbox.service import spawn_prepared

# Runs inside the sandbox under `python3 -I -S`: stdlib only. argv[1] is the control fd,
# argv[2] the ready fd: one byte on it says the sandbox is set up and waiting.
WAITER = r"""
import json, os, sys
fd = int(sys.argv[1]); ready = int(sys.argv[2]); buf = b""
os.write(ready, b"R"); os.close(ready)
while True:
    chunk = os.read(fd, 65536)
    if not chunk:
        break
    buf += chunk
os.close(fd)
if not buf:
    os._exit(0)
m = json.loads(buf)
try:
    os.chdir(m["cwd"])
    os.execvp(m["argv"][0], m["argv"])
except FileNotFoundError:
    os.write(2, ("tether-sandbox: command not found: %s\n" % m["argv"][0]).encode())
    os._exit(127)
except OSError as e:
    os.write(2, ("tether-sandbox: cannot run %s: %s\n" % (m["argv"][0], e.strerror)).encode())
    os._exit(126)
"""
DEFAULT_SIZE = 2
DEFAULT_MAX_SHAPES = 4
DEFAULT_MAX_COPY_BYTES = 64 << 20
RETRY_AFTER_S = 60.0  # a shape that could not be warmed is tried again after this


class _TooBig(Exception):
    """A writable mount is too big to copy for every warm sandbox."""


@dataclass
class _Warm:
    """One started sandbox waiting for its command."""

    proc: subprocess.Popen
    control: int  # write end of the control pipe
    prepared: object  # runner._Prepared: cgroup, proxy; released after the run
    scratch: Path | None
    started: float


def _wait_ready(fd: int, timeout: float) -> bool:
    import select

    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable) and os.read(fd, 1) == b"R"


def shape_of(spec):
    """What must match for a warm sandbox to serve ``spec``: everything but command and cwd."""
    return replace(spec, command=(), cwd="")


def poolable(spec) -> bool:
    """A spec with a persistent writable layer (a named sandbox) is never pooled."""
    return spec.writable_layer is None and spec.rootfs is None


class WarmPool:
    """Keeps ``size`` warm sandboxes per shape. Use as a context manager (sync or async)."""

    def __init__(self, size: int = DEFAULT_SIZE, *, max_shapes: int = DEFAULT_MAX_SHAPES,
                 scratch_root: Path | None = None) -> None:
        if size < 1:
            raise UsageError("a warm pool needs a size of at least 1")
        self.size = size
        self.max_shapes = max_shapes
        self._scratch_root = scratch_root
        self._lock = threading.Lock()
        self._warm: OrderedDict[object, deque[_Warm]] = OrderedDict()
        # work for the spawner thread: a shape to fill, a used _Warm to clean up, None to stop
        self._wanted: queue.Queue[object | None] = queue.Queue()
        self._spawner: threading.Thread | None = None
        self._closed = False
        self.stats = {"pooled": 0, "cold": 0, "spawned": 0, "spawn_errors": 0}
        self.last_error: str | None = None
        self.ready_timeout_s = 10.0
        self._failed: dict[object, float] = {}  # shape -> when warming it last failed
        # each warm sandbox copies the writable mounts (the workspace): past this, stay cold
        self.max_copy_bytes = DEFAULT_MAX_COPY_BYTES

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> WarmPool:
        # One long-lived thread spawns every warm sandbox: bwrap's --die-with-parent follows
        # the *thread* that forked it, so a short-lived worker thread would take them down.
        self._spawner = threading.Thread(target=self._spawn_loop, name="tether-pool",
                                         daemon=True)
        self._spawner.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries = [w for dq in self._warm.values() for w in dq]
            self._warm.clear()
        self._wanted.put(None)
        if self._spawner is not None:
            self._spawner.join(10)
        while not self._wanted.empty():  # used sandboxes the spawner had not cleaned yet
            item = self._wanted.get_nowait()
            if isinstance(item, _Warm):
                entries.append(item)
        for w in entries:
            self._discard(w)

    def __enter__(self) -> WarmPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> WarmPool:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    # -- warming --------------------------------------------------------------------------

    def warm(self, spec, wait: bool = False, timeout: float = 10.0) -> None:
        """Keep ``size`` sandboxes of ``spec``'s shape ready; ``wait`` until they are."""
        key = shape_of(spec)
        with self._lock:
            self._touch(key)
        for _ in range(self.size):
            self._wanted.put(key)
        if wait:
            deadline = time.monotonic() + timeout
            while self.ready(spec) < self.size:
                if time.monotonic() > deadline:
                    raise EnforcementError(f"the warm pool did not fill within {timeout}s: "
                                           f"{self.last_error or 'no error reported'}")
                time.sleep(0.005)

    def ready(self, spec) -> int:
        with self._lock:
            return len(self._warm.get(shape_of(spec), ()))

    def _touch(self, key) -> None:
        """Mark ``key`` recently used (caller holds the lock); evict the oldest shape."""
        if key in self._warm:
            self._warm.move_to_end(key)
            return
        self._warm[key] = deque()
        while len(self._warm) > self.max_shapes:
            _, old = self._warm.popitem(last=False)
            for w in old:
                self._wanted.put(w)

    def _spawn_loop(self) -> None:
        while True:
            key = self._wanted.get()
            if key is None:
                return
            if isinstance(key, _Warm):
                self._discard(key)
                continue
            with self._lock:
                if self._closed or key not in self._warm or len(self._warm[key]) >= self.size:
                    continue
            if time.monotonic() - self._failed.get(key, -RETRY_AFTER_S) < RETRY_AFTER_S:
                continue  # it failed lately: its runs stay cold for a while
            try:
                w = self._spawn(key)
            except TetherError as exc:
                self.stats["spawn_errors"] += 1
                self.last_error = exc.message
                self._failed[key] = time.monotonic()
                continue
            self._failed.pop(key, None)
            with self._lock:
                if not self._closed and key in self._warm:
                    self._warm[key].append(w)
                    self.stats["spawned"] += 1
                    continue
            self._discard(w)

    def _spawn(self, key) -> _Warm:
        from tether.sandbox import runner

        host = runner.probe()
        if host.helper_python is None:
            raise EnforcementError("the warm pool needs python3 inside the sandbox")
        # resolved before copying: copytree follows a top-level link, so a source linking to
        # the home would be copied (and exposed) before _prepare could refuse it
        scratch, mounts = self._private_mounts(runner.resolve_mounts(key))
        spec = replace(key, mounts=mounts, cwd="/",
                       command=(host.helper_python, "-I", "-S", "-c", WAITER))
        try:
            prepared = runner._prepare(spec, host, False)
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        rfd, wfd = os.pipe()
        ready_r, ready_w = os.pipe()
        prepared.argv += [str(rfd), str(ready_w)]  # the waiter's argv[1] and argv[2]
        try:
            proc = spawn_prepared(prepared, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, extra_fds=(rfd, ready_w))
        except BaseException:
            for fd in (wfd, ready_r):
                os.close(fd)
            prepared.close()
            raise
        finally:
            os.close(rfd)
            os.close(ready_w)
        w = _Warm(proc, wfd, prepared, scratch, time.monotonic())
        try:
            ok = _wait_ready(ready_r, self.ready_timeout_s)
        finally:
            os.close(ready_r)
        if not ok:
            err = b""
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                w.proc.kill()
                _, err = w.proc.communicate(timeout=5)
            self._discard(w)
            raise EnforcementError("a warm sandbox did not start: "
                                   + (err.decode(errors="replace").strip()[:300] or "timeout"))
        return w

    def _private_mounts(self, key):
        """Writable binds become private copies, so no run writes a host path (module doc)."""
        if all(m.read_only for m in key.mounts):
            return None, key.mounts
        root = paths.ensure_dir(self._scratch_root or paths.cache_dir() / "sandbox" / "pool")
        scratch = Path(tempfile.mkdtemp(prefix="warm-", dir=root))
        mounts = []
        budget = [self.max_copy_bytes]

        def copy_file(src, dst, *, follow_symlinks=True):
            budget[0] -= os.lstat(src).st_size
            if budget[0] < 0:
                raise _TooBig
            return shutil.copy2(src, dst, follow_symlinks=follow_symlinks)

        copied: list[tuple[Path, Path]] = []  # (host source, its private copy)
        for i, m in enumerate(key.mounts):
            if m.read_only:
                mounts.append(m)
                continue
            # a writable mount inside an earlier one (the workspace's .git, bound onto itself
            # as a guard) is that part of the earlier copy, not a second copy
            outer = next(((src, cp) for src, cp in copied if src in m.source.parents), None)
            if outer is not None:
                mounts.append(replace(m, source=outer[1] / m.source.relative_to(outer[0])))
                continue
            copy = scratch / str(i)
            try:
                if m.source.is_dir():
                    shutil.copytree(m.source, copy, symlinks=True, copy_function=copy_file)
                else:
                    copy_file(m.source, copy)
            except (OSError, shutil.Error, _TooBig) as exc:
                shutil.rmtree(scratch, ignore_errors=True)
                why = (f"its writable mounts hold more than {self.max_copy_bytes >> 20} MiB"
                       if isinstance(exc, _TooBig) else str(exc))
                raise TetherError(f"not pooling {m.source}: {why} (runs stay cold)") from exc
            copied.append((m.source, copy))
            mounts.append(replace(m, source=copy))
        return scratch, tuple(mounts)

    def _discard(self, w: _Warm) -> None:
        if w.control >= 0:
            os.close(w.control)  # an empty message: the waiter exits
            w.control = -1
        if w.proc.returncode is None:  # never ran a command: stop the waiter
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                w.proc.communicate(timeout=5)
        w.prepared.close()
        if w.scratch is not None:
            shutil.rmtree(w.scratch, ignore_errors=True)

    # -- running --------------------------------------------------------------------------

    def _take(self, spec) -> _Warm | None:
        key = shape_of(spec)
        with self._lock:
            if self._closed:
                return None
            self._touch(key)
            dq = self._warm[key]
            while dq:
                w = dq.popleft()
                if w.proc.poll() is None:
                    break
                self._wanted.put(w)
            else:
                w = None
        self._wanted.put(key)  # refill (or first fill) in the background
        return w

    def run(self, spec, *, stdin: bytes | None = None,
            on_output: Callable[[str, bytes], None] | None = None, handle=None):
        """Run ``spec`` in a warm sandbox if one of its shape is ready, else cold.

        ``handle`` (a ``service.RunHandle``) lets another thread cancel the run."""
        from tether.sandbox.service import run_blocking

        if not poolable(spec):
            return run_blocking(spec, stdin=stdin, on_output=on_output, handle=handle)
        w = self._take(spec)
        if w is None:
            self.stats["cold"] += 1
            return run_blocking(spec, stdin=stdin, on_output=on_output, handle=handle)
        self.stats["pooled"] += 1
        try:
            return self._run_warm(w, spec, stdin, on_output, handle)
        finally:
            if self._closed:
                self._discard(w)
            else:
                self._wanted.put(w)  # cleaned up by the spawner thread, off the hot path

    def _run_warm(self, w: _Warm, spec, stdin, on_output, handle=None):
        from tether.sandbox import runner

        message = json.dumps({"argv": list(spec.command), "cwd": spec.cwd}).encode()
        start = time.perf_counter()
        os.write(w.control, message)  # well under PIPE_BUF: one atomic write
        os.close(w.control)
        w.control = -1  # closed once only: the number may be reused by the next pipe
        if not stdin:
            w.proc.stdin.close()
        deadline = start + spec.limits.timeout_s if spec.limits.timeout_s else None
        cg = w.prepared.cgroup
        if handle is not None:
            handle.started(w.proc, cg)
        out, err, timed_out, status, rusage = runner._pump(w.proc, stdin or None, deadline,
                                                           on_output, cg)
        return runner.result_from(status, rusage, out, err, timed_out,
                                  time.perf_counter() - start, cg)

    async def run_async(self, spec, *, stdin: bytes | None = None, on_output=None):
        """``run`` off the event loop; ``on_output`` may be a coroutine function; cancelling
        the caller kills the run."""
        from tether.sandbox.service import RunHandle, run_in_thread, thread_relay

        handle = RunHandle()
        relay = thread_relay(on_output, asyncio.get_running_loop(), handle)
        return await run_in_thread(self.run, spec, stdin=stdin, on_output=relay, handle=handle)
