"""One door for every front end (HTTP API, MCP server, CLI) into sandboxed runs.

``build_spec`` turns wire-level ``RunOptions`` into a ``SandboxSpec`` (``runner.build_spec``
does the deciding, as for ``tether sandbox run``); ``run_spec`` runs one, through the warm pool
when there is one, cancellably, and writes the audit record of every run, so no front end can
forget it; ``Service`` is what an app (API, MCP) holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from tether.sandbox import audit
from tether.sandbox.schemas import RunOptions, RunRequest
from tether.sandbox.trust import ProjectConfig

OutputCallback = Callable[[str, bytes], Awaitable[None] | None]


def build_spec(options: RunOptions, command: Sequence[str], *, workdir: Path,
               mounts: Sequence[Any] = (), writable_layer: Path | None = None,
               cwd: str | None = None, project_config: ProjectConfig = ProjectConfig.TRUSTED_ONLY):
    """The ``SandboxSpec`` for ``options`` + ``command`` (raises UsageError on bad options).

    The core's ``runner.build_spec`` decides (profile, a trusted tether.toml, detected
    toolchains), the same as for ``tether sandbox run``; a named sandbox then adds its layer
    and cwd (and ignores project configs: its workspace is its own, written by its runs).
    """
    from dataclasses import replace

    from tether.sandbox import runner
    from tether.sandbox.profiles import NetworkMode

    spec = runner.build_spec(
        list(command), profile=options.profile, workdir=Path(workdir),
        no_network=options.network == "none", allow_domains=tuple(options.allow_domains),
        mounts=tuple(mounts), env=tuple(f"{k}={v}" for k, v in options.env.items()),
        memory=options.memory, cpus=options.cpus, pids=options.pids, timeout=options.timeout,
        project_config=project_config)
    if options.network == "full" and not options.allow_domains:
        spec = replace(spec, network=NetworkMode.FULL)
    if options.network == "allowlist" and spec.network is not NetworkMode.ALLOWLIST:
        from tether.errors import UsageError

        raise UsageError("network mode allowlist needs at least one allowed domain",
                         hint='name them in allow_domains, e.g. ["pypi.org"]')
    changes: dict[str, Any] = {}
    if writable_layer is not None:
        changes["writable_layer"] = writable_layer
    if cwd is not None:
        changes["cwd"] = cwd
    return replace(spec, **changes) if changes else spec


async def call_output(cb: OutputCallback | None, stream: str, data: bytes) -> None:
    if cb is not None:
        res = cb(stream, data)
        if inspect.isawaitable(res):
            await res


def spawn_prepared(prepared, *, stdin, stdout, stderr, extra_fds: Sequence[int] = ()):
    """Start bwrap for a ``runner._Prepared`` with the given stdio, inside its cgroup.

    For the paths that cannot use ``runner.run`` (the warm pool's waiter, attach's pty). The
    prepared fds are closed here once bwrap has its copies.
    """
    import subprocess

    from tether.errors import EnforcementError

    cg = prepared.cgroup
    argv = cg.wrap(prepared.argv) if cg is not None else prepared.argv
    try:
        proc = subprocess.Popen(argv, env=prepared.env, stdin=stdin, stdout=stdout,
                                stderr=stderr, pass_fds=[*prepared.pass_fds, *extra_fds])
    except OSError as exc:
        raise EnforcementError(f"cannot start bwrap: {exc}",
                               "run `tether sandbox probe`") from exc
    finally:
        for fd in prepared.pass_fds:
            os.close(fd)
        prepared.pass_fds.clear()
    return proc


def thread_relay(cb: OutputCallback | None, loop: asyncio.AbstractEventLoop,
                 handle: RunHandle | None = None):
    """A blocking ``on_output`` for a runner thread that hands chunks to ``cb`` on ``loop``.

    The thread waits until ``cb`` has taken the chunk, so a slow consumer (an SSE client)
    slows the reading of the sandbox's pipes instead of growing a buffer. Once the run is
    cancelled (``handle``) or the consumer is gone, it stops waiting and drops later chunks:
    a consumer that will never take another chunk must not wedge the runner thread.
    """
    if cb is None:
        return None
    gone = False

    def relay(stream: str, data: bytes) -> None:
        nonlocal gone
        if gone:
            return
        future = asyncio.run_coroutine_threadsafe(call_output(cb, stream, data), loop)
        while True:
            try:
                future.result(timeout=0.1)
                return
            except concurrent.futures.TimeoutError:
                if handle is not None and handle.cancelled:
                    future.cancel()
                    gone = True
                    return
            except (concurrent.futures.CancelledError, RuntimeError):
                gone = True
                return

    return relay


class RunHandle:
    """What cancelling a run needs: its bwrap and its cgroup, set once it has started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._cgroup = None
        self.cancelled = False

    def started(self, proc, cgroup) -> None:
        with self._lock:
            self._proc, self._cgroup = proc, cgroup
            kill_now = self.cancelled
        if kill_now:
            self.kill()

    def kill(self) -> None:
        """End the run now: bwrap's sandbox dies with it, the cgroup is emptied."""
        with self._lock:
            self.cancelled = True
            proc, cg = self._proc, self._cgroup
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        if cg is not None:
            cg.kill_all()


def run_blocking(spec, *, stdin: bytes | None = None, on_output=None,
                 handle: RunHandle | None = None, prestart: bool = True):
    """``runner.run`` that ``handle`` can cancel from another thread (a client went away).

    prestart: False for one-shot processes (the CLI), which gain nothing from the runner
    keeping pre-joined launchers ready."""
    from tether.sandbox import runner

    return runner.run(spec, stdin=stdin, on_output=on_output, prestart=prestart,
                      on_start=handle.started if handle is not None else None)


async def run_in_thread(fn, *args, handle: RunHandle, **kw):
    """Run a blocking sandbox run in a thread; if the caller is cancelled, kill the run and
    wait for its cleanup before passing the cancellation on."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, handle=handle, **kw))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        handle.kill()
        await asyncio.wait([task])
        raise


async def run_spec(spec, *, stdin: bytes | None = None, on_output: OutputCallback | None = None,
                   via: str, client: str | None = None, sandbox: str | None = None,
                   pool=None, prestart: bool = True, run_fn=None):
    """Run ``spec`` (pooled if ``pool`` has a warm sandbox for it) and audit the run.

    Cancelling the caller (an SSE client that went away) kills the run.
    """
    from tether.errors import TetherError

    started = time.monotonic()
    handle = RunHandle()
    relay = thread_relay(on_output, asyncio.get_running_loop(), handle)
    # run_fn(spec, stdin=, on_output=, handle=): another way to start it (a joined exec)
    run = run_fn or (pool.run if pool is not None
                     else functools.partial(run_blocking, prestart=prestart))
    try:
        result = await run_in_thread(run, spec, stdin=stdin, on_output=relay, handle=handle)
    except TetherError as exc:
        audit.record_run(via=via, command=spec.command, profile=spec.profile,
                         network=spec.network, exit_code=None,
                         duration_s=time.monotonic() - started, sandbox=sandbox, client=client,
                         error=exc.message)
        raise
    except asyncio.CancelledError:
        audit.record_run(via=via, command=spec.command, profile=spec.profile,
                         network=spec.network, exit_code=None,
                         duration_s=time.monotonic() - started, sandbox=sandbox, client=client,
                         error="cancelled: the client went away")
        raise
    audit.record_result(spec, result, via=via, sandbox=sandbox, client=client)
    return result


class Admission:
    """At most ``limit`` runs at once; one more is refused (429), not queued without bound.

    Used from one event loop only, so a plain counter is enough.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            from tether.errors import UsageError

            raise UsageError("the run limit must be at least 1")
        self.limit = limit
        self.active = 0

    def acquire(self) -> None:
        from tether.errors import RateLimitedError

        if self.active >= self.limit:
            raise RateLimitedError(f"{self.active} runs are in progress (the limit is "
                                   f"{self.limit})", "retry shortly", retry_after=1.0)
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    @contextlib.contextmanager
    def slot(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


def default_run_limit() -> int:
    return 4 * (os.cpu_count() or 1)


class Service:
    """What the API and the MCP server run commands through (one per app, no globals)."""

    def __init__(self, *, workdir: Path, pool_size: int = 0,
                 max_runs: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.pool_size = pool_size
        self.pool = None
        self.admission = Admission(max_runs or default_run_limit())

    @contextlib.asynccontextmanager
    async def lifespan(self, _app=None) -> AsyncIterator[None]:
        if self.pool_size <= 0:
            yield
            return
        from tether.sandbox.pool import WarmPool

        async with WarmPool(size=self.pool_size) as pool:
            # warm the default shape now, so the first plain request is pooled too
            pool.warm(self.prepare(RunRequest(command=["true"])))
            self.pool = pool
            try:
                yield
            finally:
                self.pool = None

    def prepare(self, req: RunRequest):
        options = RunOptions(**req.model_dump(include=set(RunOptions.model_fields)))
        return build_spec(options, req.command, workdir=self.workdir)

    async def run_prepared(self, spec, stdin: bytes | None, *, via: str,
                           client: str | None = None, on_output: OutputCallback | None = None):
        return await run_spec(spec, stdin=stdin, on_output=on_output, via=via, client=client,
                              pool=self.pool)

    async def run(self, req: RunRequest, *, via: str, client: str | None = None,
                  on_output: OutputCallback | None = None):
        return await self.run_prepared(self.prepare(req), req.stdin_bytes(), via=via,
                                       client=client, on_output=on_output)
