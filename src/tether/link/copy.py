"""`tether cp`: files and trees between the laptop and a workspace, over SFTP.

Locations are ``NAME:path`` (remote; an empty path is the remote home) or a local path (a
local path containing ':' can be written ``./a:b``). Like scp, several sources go into an
existing directory, and directories need ``recursive``.

Every file lands atomically on the receiving side: it is written under a hidden temporary
name next to its target (``.NAME.tether-part-XXXXXXXX``) and renamed over the target only when
complete, so a dropped link never leaves a half-written file under the real name. The local
temporary is removed on failure, and so is a remote one while the link still carries the
request. One left behind by a link that was already gone (or a killed `cp`) is removed by the
next upload of the same target: it lists the target's directory and deletes that target's own
temporaries (exactly ``.NAME.tether-part-`` + 8 hex digits) that have not been written to for
``STALE_PART_S``, measured by the host's clock.

Local paths are taken relative to ``local_cwd`` when one is given (the link daemon runs a
`tether cp` for the CLI with cwd ``/`` and gets the CLI's cwd with the request), else to the
process's working directory; messages name them as the caller wrote them.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import secrets as _secrets
import shlex
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tether import errors
from tether._compat import BaseExceptionGroup, TaskGroup

_REMOTE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62}):(.*)$", re.S)
_PART_RE = re.compile(r"^\.(.+)\.tether-part-[0-9a-f]{8}$", re.S)
PARALLEL_FILES = 4  # small files: several in flight hide the per-file round trips
# A temporary not written to for this long belongs to no running upload: a live `cp` writes
# every few seconds even on a slow link. Younger ones may be another `cp` of the same target
# in flight, so they are left alone.
STALE_PART_S = 60


@dataclass(frozen=True)
class Location:
    host: str | None  # None: local
    path: str


@dataclass(frozen=True)
class CopyPlan:
    """What one `cp` does: a direction, the files with sizes, the directories to create."""

    host: str
    upload: bool
    files: tuple[tuple[str, str, int, int], ...]  # (src, dst, size, mode)
    dirs: tuple[str, ...]  # destination directories to create, parents first

    @property
    def total_bytes(self) -> int:
        return sum(f[2] for f in self.files)


@dataclass(frozen=True)
class CopyResult:
    host: str
    direction: str  # "upload" | "download"
    files: int
    bytes: int
    duration_s: float

    @property
    def rate_bytes_per_s(self) -> float:
        return self.bytes / self.duration_s if self.duration_s > 0 else 0.0


# -- pure -----------------------------------------------------------------------------------


def parse_location(text: str) -> Location:
    """``NAME:path`` -> remote; anything else (``/x``, ``./a:b``, ``file``) -> local."""
    if not text:
        raise errors.UsageError("empty path", "use a local path or NAME:path")
    if text.startswith(("/", ".", "~")):
        return Location(None, text)
    m = _REMOTE_RE.match(text)
    if m:
        return Location(m.group(1), m.group(2) or ".")
    return Location(None, text)


def split_direction(sources: Sequence[str], dest: str) -> tuple[str, bool, list[str], str]:
    """(host, upload?, source paths, dest path); UsageError for mixed or remote-to-remote."""
    if not sources:
        raise errors.UsageError("nothing to copy", "tether cp SRC... DST")
    src = [parse_location(s) for s in sources]
    dst = parse_location(dest)
    hosts = {s.host for s in src}
    if len(hosts) > 1:
        raise errors.UsageError("sources mix local paths and hosts (or several hosts)",
                                "copy from one place per command")
    src_host = hosts.pop()
    if src_host is not None and dst.host is not None:
        raise errors.UsageError("both sides are remote",
                                "copy to the laptop first, then on to the other host")
    if src_host is None and dst.host is None:
        raise errors.UsageError("both sides are local", "name a host: NAME:path")
    if src_host is None:
        return dst.host, True, [s.path for s in src], dst.path  # type: ignore[return-value]
    return src_host, False, [s.path for s in src], dst.path


def temp_name(path: str, *, join: Callable[..., str] = posixpath.join,
              split: Callable[[str], tuple[str, str]] = posixpath.split) -> str:
    head, tail = split(path)
    return join(head, f".{tail}.tether-part-{_secrets.token_hex(4)}")


def leftover_target(name: str) -> str | None:
    """The target name whose temporary ``name`` is (``.a.txt.tether-part-0f1e2d3c`` ->
    ``a.txt``), or None when ``name`` is not exactly one of `temp_name`'s (pure)."""
    m = _PART_RE.match(name)
    return m.group(1) if m else None


def stale_leftovers(entries: Sequence[tuple[str, int | None]], target: str, now: int,
                    max_idle_s: int = STALE_PART_S) -> list[str]:
    """Names among ``entries`` ((name, mtime) of one directory) that are temporaries of
    ``target`` idle for more than ``max_idle_s`` at ``now`` (both host clock; pure)."""
    return [name for name, mtime in entries
            if leftover_target(name) == target and mtime is not None
            and mtime < now - max_idle_s]


def local_path(path: str, cwd: str | None = None) -> str:
    """The local ``path`` to open: ``~`` expanded, a relative one joined to ``cwd`` when given
    (no normalisation: a trailing slash stays; pure but for ``~``)."""
    path = os.path.expanduser(path)
    return os.path.join(cwd, path) if cwd else path


# -- walking both sides ---------------------------------------------------------------------


class _LocalFS:
    join = staticmethod(os.path.join)
    basename = staticmethod(os.path.basename)
    dirname = staticmethod(os.path.dirname)

    def __init__(self, cwd: str | None = None) -> None:
        self.cwd = cwd

    async def stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(local_path(path, self.cwd))
        except FileNotFoundError:
            return None

    async def walk(self, root: str) -> list[tuple[str, bool, int, int]]:
        """(relative path, is_dir, size, mode) under root, parents before children."""
        out = []
        root = local_path(root, self.cwd)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for d in dirnames:
                out.append((os.path.normpath(os.path.join(rel, d)), True, 0, 0o755))
            for f in sorted(filenames):
                st = os.stat(os.path.join(dirpath, f))
                if stat.S_ISREG(st.st_mode):
                    out.append((os.path.normpath(os.path.join(rel, f)), False, st.st_size,
                                stat.S_IMODE(st.st_mode)))
        return out


class _RemoteFS:
    join = staticmethod(posixpath.join)
    basename = staticmethod(posixpath.basename)
    dirname = staticmethod(posixpath.dirname)

    def __init__(self, sftp: Any) -> None:
        self.sftp = sftp

    async def stat(self, path: str) -> Any:
        from tether.link._asyncssh import asyncssh

        try:
            return await self.sftp.stat(path)
        except asyncssh.SFTPNoSuchFile:
            return None

    async def walk(self, root: str) -> list[tuple[str, bool, int, int]]:
        out: list[tuple[str, bool, int, int]] = []

        async def visit(rel: str) -> None:
            entries = sorted(await self.sftp.readdir(posixpath.join(root, rel)),
                             key=lambda e: e.filename)
            for e in entries:
                name = e.filename if isinstance(e.filename, str) else e.filename.decode()
                if name in (".", ".."):
                    continue
                child = posixpath.normpath(posixpath.join(rel, name))
                kind = e.attrs.type
                from tether.link._asyncssh import asyncssh

                if kind == asyncssh.FILEXFER_TYPE_DIRECTORY:
                    out.append((child, True, 0, 0o755))
                    await visit(child)
                elif kind == asyncssh.FILEXFER_TYPE_REGULAR:
                    out.append((child, False, e.attrs.size or 0,
                                stat.S_IMODE(e.attrs.permissions or 0o644)))

        await visit(".")
        return out


def _is_dir(st: Any) -> bool:
    mode = getattr(st, "st_mode", None)
    if mode is None:
        mode = getattr(st, "permissions", 0) or 0
    return stat.S_ISDIR(mode)


async def _check_parent(host: str, upload: bool, dest: str, dst_fs: Any) -> None:
    """A new target needs an existing directory to land in; say which one is missing."""
    parent = dst_fs.dirname(dest)
    if not parent:
        return  # relative to the home (remote) or the working directory (local)
    st = await dst_fs.stat(parent)
    if st is not None and _is_dir(st):
        return
    where = f"{host}:{parent}" if upload else parent
    what = "does not exist" if st is None else "is not a directory"
    make = (f"tether exec {host} -- mkdir -p {shlex.quote(parent)}" if upload
            else f"mkdir -p {shlex.quote(parent)}")
    raise errors.NotFoundError(f"{where} {what}, so {dest} cannot be created",
                               f"create the directory first: {make}")


async def make_plan(host: str, upload: bool, sources: list[str], dest: str, src_fs: Any,
                    dst_fs: Any, recursive: bool) -> CopyPlan:
    dst_st = await dst_fs.stat(dest)
    into_dir = dst_st is not None and _is_dir(dst_st)
    if len(sources) > 1 and not into_dir:
        raise errors.UsageError(f"{dest} is not an existing directory",
                                "several sources need an existing target directory")
    if dst_st is None:
        await _check_parent(host, upload, dest, dst_fs)
    files: list[tuple[str, str, int, int]] = []
    dirs: list[str] = []
    for src in sources:
        st = await src_fs.stat(src)
        if st is None:
            where = f"{host}:{src}" if not upload else src
            raise errors.NotFoundError(f"{where} does not exist")
        target = dst_fs.join(dest, src_fs.basename(src.rstrip("/")) or ".") if into_dir \
            else dest
        if _is_dir(st):
            if not recursive:
                raise errors.UsageError(f"{src} is a directory", "add -r to copy directories")
            dirs.append(target)
            for rel, is_dir, size, mode in await src_fs.walk(src):
                to = dst_fs.join(target, *rel.split(os.sep if upload else "/"))
                if is_dir:
                    dirs.append(to)
                else:
                    files.append((src_fs.join(src, rel), to, size, mode))
        else:
            size = getattr(st, "st_size", None)
            if size is None:
                size = getattr(st, "size", 0) or 0
            mode = getattr(st, "st_mode", None) or getattr(st, "permissions", 0o644) or 0o644
            files.append((src, target, size, stat.S_IMODE(mode)))
    return CopyPlan(host, upload, tuple(files), tuple(dirs))


# -- transfer -------------------------------------------------------------------------------


async def _upload_one(sftp: Any, src: str, dst: str, mode: int,
                      progress: Callable[[int], None],
                      leftovers: Sequence[tuple[str, int | None]] = (),
                      local_cwd: str | None = None) -> None:
    tmp = temp_name(dst)
    last = 0

    def on_progress(_s: bytes, _d: bytes, done: int, _total: int) -> None:
        nonlocal last
        progress(done - last)
        last = done

    try:
        if leftovers:
            await _sweep_leftovers(sftp, tmp, dst, leftovers)
        await sftp.put(local_path(src, local_cwd), tmp, progress_handler=on_progress)
        await sftp.chmod(tmp, mode)
        await sftp.posix_rename(tmp, dst)
    except BaseException:
        await _remove_remote_quietly(sftp, tmp)
        raise


async def _sweep_leftovers(sftp: Any, tmp: str, dst: str,
                           leftovers: Sequence[tuple[str, int | None]]) -> None:
    """Remove ``dst``'s stale temporaries before writing ``tmp`` (which is created first: its
    mtime is the host's "now", so the laptop's clock never decides what is stale)."""
    from tether.link._asyncssh import asyncssh

    async with sftp.open(tmp, "wb"):
        pass
    now = (await sftp.stat(tmp)).mtime
    if now is None:
        return
    head, tail = posixpath.split(dst)
    for name in stale_leftovers(leftovers, tail, now):
        try:
            await sftp.remove(posixpath.join(head, name))
        except asyncssh.SFTPNoSuchFile:
            pass  # RACE: another upload of the same target swept it first


async def _find_leftovers(sftp: Any, plan: CopyPlan, fresh_dirs: set[str]
                          ) -> dict[str, list[tuple[str, int | None]]]:
    """dst -> (name, mtime) of its temporaries in its directory, for directories this copy
    did not just create (one listing per directory)."""
    from tether.link._asyncssh import asyncssh

    by_dir: dict[str, set[str]] = {}
    for _src, dst, _size, _mode in plan.files:
        head, tail = posixpath.split(dst)
        if head not in fresh_dirs:
            by_dir.setdefault(head, set()).add(tail)
    found: dict[str, list[tuple[str, int | None]]] = {}
    for head, tails in by_dir.items():
        try:
            entries = await sftp.readdir(head or ".")
        except asyncssh.SFTPError:
            continue  # unlistable: nothing to sweep here; the upload itself reports why
        for e in entries:
            name = e.filename if isinstance(e.filename, str) else e.filename.decode()
            target = leftover_target(name)
            if target in tails:
                found.setdefault(posixpath.join(head, target), []).append((name, e.attrs.mtime))
    return found


async def _remove_remote_quietly(sftp: Any, path: str) -> None:
    from tether.link._asyncssh import asyncssh

    try:
        await asyncio.shield(sftp.remove(path))
    except (asyncssh.Error, OSError, asyncio.CancelledError):
        pass  # the link is gone; the hidden temp name says what the leftover is


async def _download_one(sftp: Any, src: str, dst: str, mode: int,
                        progress: Callable[[int], None], local_cwd: str | None = None) -> None:
    dst = local_path(dst, local_cwd)
    tmp = temp_name(dst, join=os.path.join, split=os.path.split)
    last = 0

    def on_progress(_s: bytes, _d: bytes, done: int, _total: int) -> None:
        nonlocal last
        progress(done - last)
        last = done

    try:
        await sftp.get(src, tmp, progress_handler=on_progress)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


async def run_plan(sftp: Any, plan: CopyPlan, progress: Callable[[int], None], *,
                   local_cwd: str | None = None) -> None:
    """Create the directories, then move the files, a few at a time.

    Cancelling it (Ctrl-C, or the link daemon's client going away) removes the temporaries
    of the files in flight on the way out, like any other failure."""
    from tether.link._asyncssh import asyncssh

    fresh: set[str] = set()
    for d in plan.dirs:
        if plan.upload:
            try:
                await sftp.mkdir(d)
                fresh.add(d)
            except asyncssh.SFTPFailure:
                if not await sftp.isdir(d):
                    raise
        else:
            os.makedirs(local_path(d, local_cwd), exist_ok=True)
    leftovers = await _find_leftovers(sftp, plan, fresh) if plan.upload else {}
    sem = asyncio.Semaphore(PARALLEL_FILES)

    async def move(src: str, dst: str, mode: int) -> None:
        async with sem:
            try:
                if plan.upload:
                    await _upload_one(sftp, src, dst, mode, progress, leftovers.get(dst, ()),
                                      local_cwd)
                else:
                    await _download_one(sftp, src, dst, mode, progress, local_cwd)
            except asyncssh.SFTPNoSuchFile as exc:
                # asyncssh's reason names no path; say which one (the remote side's)
                remote = dst if plan.upload else src
                raise errors.NotFoundError(
                    f"{plan.host}:{remote}: {exc.reason}",
                    "does its directory exist on the host? (`tether exec "
                    f"{plan.host} -- ls -d {shlex.quote(posixpath.dirname(remote) or '.')}`)"
                ) from exc

    async with TaskGroup() as tg:
        for src, dst, _size, mode in plan.files:
            tg.create_task(move(src, dst, mode))


def translate(exc: BaseException, plan_host: str) -> errors.TetherError | None:
    """asyncssh/OS errors of a copy -> TetherError (None: not ours to translate)."""
    from tether.link._asyncssh import asyncssh

    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = translate(sub, plan_host)
            if found is not None:
                return found
        return None
    if isinstance(exc, errors.TetherError):
        return exc
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return errors.NotFoundError(f"{plan_host}: {exc.reason}",
                                    f"check the remote path with `tether exec {plan_host} -- ls`")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return errors.PermissionDeniedError(f"{plan_host}: permission denied: {exc.reason}")
    # An OSError naming no file came from the socket (ENOTCONN, ECONNRESET...), not the disk.
    socket_error = isinstance(exc, OSError) and not exc.filename
    if socket_error or isinstance(exc, (asyncssh.SFTPConnectionLost, asyncssh.ConnectionLost,
                                        asyncssh.SFTPNoConnection, asyncssh.DisconnectError,
                                        ConnectionError)):
        return errors.ConnectError(
            f"the link to {plan_host!r} dropped during the copy",
            "nothing half-written was left under the target names; run the copy again")
    if isinstance(exc, asyncssh.SFTPError):
        return errors.PeerError(f"{plan_host}: {exc.reason}")
    if isinstance(exc, OSError):
        return errors.LocalIOError(f"{exc.filename}: {exc.strerror or exc}")
    return None


async def copy_on(conn: Any, plan_args: tuple[str, bool, list[str], str], *, recursive: bool,
                  on_plan: Callable[[CopyPlan], Callable[[int], None]] | None = None,
                  local_cwd: str | None = None) -> CopyResult:
    """Plan and run one copy over ``conn``; ``on_plan(plan)`` returns a progress callback.

    ``local_cwd``: the directory relative local paths are taken from (default: this
    process's working directory)."""
    import time

    host, upload, sources, dest = plan_args
    began = time.monotonic()
    try:
        async with conn.start_sftp_client() as sftp:
            local, remote = _LocalFS(local_cwd), _RemoteFS(sftp)
            src_fs, dst_fs = (local, remote) if upload else (remote, local)
            plan = await make_plan(host, upload, sources, dest, src_fs, dst_fs, recursive)
            progress = on_plan(plan) if on_plan else (lambda n: None)
            await run_plan(sftp, plan, progress, local_cwd=local_cwd)
    except BaseException as exc:  # noqa: BLE001 - translated or re-raised unchanged
        err = translate(exc, host)
        if err is None or err is exc:
            raise
        raise err from exc
    return CopyResult(host, "upload" if upload else "download", len(plan.files),
                      plan.total_bytes, time.monotonic() - began)
