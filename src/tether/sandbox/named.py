"""Named sandboxes: a sandbox with a name and a writable layer that outlive the CLI.

Design (docs/sandbox-api.md, "Named sandboxes"): bubblewrap 0.8 has no overlay mounts, so a
sandbox's writable layer is two private host directories bound read-write into every process
of the sandbox: ``home/`` as ``/home/sandbox`` and ``workspace/`` as ``/workspace`` (the working
directory). Everything else is what the profile gives any run: read-only system, fresh
``/tmp``, its network and limits.

Every ``exec`` is a fresh bwrap over that layer (files persist between execs and across CLI
restarts). ``start`` runs the sandbox's main command, if it has one, under a small detached
supervisor (``python -m tether.sandbox.named NAME``) that writes its output to ``main.log`` and
its end to ``exit.json``; ``stop`` ends it. While it runs, an exec joins its user and pid
namespaces and sees its processes (_join.py). State lives in
``paths.state_dir()/sandboxes/NAME/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tether import paths
from tether.errors import (
    AlreadyExistsError,
    InUseError,
    LocalIOError,
    NotFoundError,
    ProtocolError,
    TetherError,
    UsageError,
)
from tether.sandbox import _safefs
from tether.sandbox.schemas import NAME_PATTERN, RunOptions, SandboxInfo

FORMAT_VERSION = 1
WORKSPACE = "/workspace"
HOME = "/home/sandbox"
_NAME = re.compile(NAME_PATTERN)
STOP_GRACE_S = 5.0


def root_dir() -> Path:
    return paths.state_dir() / "sandboxes"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"invalid sandbox name {name!r}",
                         "use lowercase letters, digits, '-', '_' or '.' (max 63), e.g. dev-1")
    return name


@dataclass(frozen=True)
class NamedSandbox:
    name: str
    dir: Path
    created_at: float
    command: tuple[str, ...] | None
    options: RunOptions
    mounts: tuple[str, ...]

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def workspace(self) -> Path:
        return self.dir / "workspace"

    @property
    def log_path(self) -> Path:
        return self.dir / "main.log"

    def status(self) -> tuple[str, int | None, int | None]:
        """(status, supervisor pid, exit code of the main command)."""
        pid = _running_pid(self.dir / "run.json")
        if pid is not None:
            return "running", pid, None
        ended = _read_json(self.dir / "exit.json")
        if ended is not None:
            return "exited", None, ended.get("exit_code")
        return "stopped", None, None

    def to_schema(self) -> SandboxInfo:
        status, pid, code = self.status()
        return SandboxInfo(name=self.name, status=status, created_at=self.created_at,
                           command=list(self.command) if self.command else None,
                           options=self.options, pid=pid, exit_code=code)

    def to_json(self) -> dict:
        return {"v": FORMAT_VERSION, "name": self.name, "created_at": self.created_at,
                "command": list(self.command) if self.command else None,
                "options": self.options.model_dump(), "mounts": list(self.mounts)}


# -- state on disk -------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalIOError(f"could not read {path}: {exc}",
                           "the sandbox state is damaged; 'tether sandbox rm --force' it") from exc


def _proc_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def _running_pid(run_file: Path) -> int | None:
    """The supervisor's pid if it still runs (pid reuse is caught by its start time)."""
    data = _read_json(run_file)
    if not data:
        return None
    pid = int(data["pid"])
    if _proc_start_ticks(pid) != data.get("start_ticks") or _is_zombie(pid):
        return None  # a zombie: it ended, and its parent (an API server) has not reaped it
    return pid


def _load(name: str) -> NamedSandbox:
    check_name(name)
    sdir = root_dir() / name
    data = _read_json(sdir / "sandbox.json")
    if data is None:
        raise NotFoundError(f"no sandbox named {name!r}", "see 'tether sandbox ls'")
    if data.get("v") != FORMAT_VERSION:
        raise ProtocolError(f"sandbox {name!r} has state version {data.get('v')!r}",
                            "it was made by another tether version")
    return NamedSandbox(name=name, dir=sdir, created_at=float(data["created_at"]),
                        command=tuple(data["command"]) if data.get("command") else None,
                        options=RunOptions(**data["options"]),
                        mounts=tuple(data.get("mounts") or ()))


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialise lifecycle changes of one sandbox across processes."""
    with paths.locked(paths.ensure_dir(root_dir() / ".locks") / f"{name}.lock"):
        yield


# -- lifecycle -----------------------------------------------------------------------------


def create(name: str, options: RunOptions | None = None, *, command: Sequence[str] | None = None,
           mounts: Sequence[str] = (), workdir: Path | None = None) -> NamedSandbox:
    """Make the sandbox's state (nothing runs yet); options are checked by resolving them."""
    check_name(name)
    options = options or RunOptions()
    base = Path(workdir or Path.cwd())
    parsed = _parse_mounts(mounts, base)
    with _locked(name):
        sdir = root_dir() / name
        if (sdir / "sandbox.json").exists():
            raise AlreadyExistsError(f"a sandbox named {name!r} exists already",
                                     f"use it, or 'tether sandbox rm {name}' first")
        box = NamedSandbox(name=name, dir=sdir, created_at=time.time(),
                           command=tuple(command) if command else None, options=options,
                           mounts=tuple(_mount_text(m) for m in parsed))
        paths.ensure_dir(sdir)
        try:
            paths.ensure_dir(box.home, 0o755)
            paths.ensure_dir(box.workspace, 0o755)
            spec_for(box, list(command or ["true"]))  # bad options fail here, not at exec
            paths.atomic_write(sdir / "sandbox.json", json.dumps(box.to_json(), indent=1))
        except BaseException:
            shutil.rmtree(sdir, ignore_errors=True)
            raise
    return box


def _parse_mounts(mounts: Sequence[str], base: Path):
    from tether.sandbox.profiles import parse_mount

    return [parse_mount(m, base) for m in mounts]


def _mount_text(m) -> str:
    return f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"


def get(name: str) -> NamedSandbox:
    return _load(name)


def list_sandboxes() -> list[NamedSandbox]:
    root = root_dir()
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not (entry / "sandbox.json").is_file():
            continue
        with contextlib.suppress(TetherError):  # one damaged sandbox must not hide the rest
            out.append(_load(entry.name))
    return out


def remove(name: str, *, force: bool = False) -> None:
    box = _load(name)
    if box.status()[0] == "running":
        if not force:
            raise InUseError(f"sandbox {name!r} is running",
                             f"'tether sandbox stop {name}' first, or rm --force")
        stop(name)
    with _locked(name):
        try:
            shutil.rmtree(box.dir)
        except OSError as exc:
            raise LocalIOError(f"could not remove {box.dir}: {exc.strerror}") from exc


def spec_for(box: NamedSandbox, command: Sequence[str], *, timeout: float | None = None,
             cwd: str | None = None):
    """The spec of one process of ``box``: its options over its own writable layer."""
    from dataclasses import replace

    from tether.sandbox.profiles import Mount
    from tether.sandbox.service import build_spec
    from tether.sandbox.trust import ProjectConfig

    options = box.options if timeout is None else box.options.model_copy(
        update={"timeout": timeout})
    extra = [*_parse_mounts(box.mounts, box.workspace),
             Mount(box.workspace, Path(WORKSPACE), read_only=False)]
    # a tether.toml in (or above) the layer is the sandbox's own writing, never the user's
    spec = build_spec(options, command, workdir=box.workspace, mounts=extra,
                      writable_layer=box.home, cwd=cwd or WORKSPACE,
                      project_config=ProjectConfig.IGNORED)
    # resolve_spec binds the workdir at its own host path too; the sandbox needs it only at
    # /workspace, and the host path would tell the code inside where tether keeps its state.
    # The workspace's guards (profiles.workspace_guards) move with it, after its bind.
    mounts, guards = [], []
    for m in spec.mounts:
        if m.target == box.workspace:
            continue
        if box.workspace in m.target.parents:
            guards.append(replace(m, target=Path(WORKSPACE) / m.target.relative_to(box.workspace)))
        else:
            mounts.append(m)
    return replace(spec, mounts=(*mounts, *guards))


async def exec_async(name: str, command: Sequence[str], *, stdin: bytes | None = None,
                     timeout: float | None = None, via: str = "cli", client: str | None = None,
                     on_output=None, prestart: bool = True):
    """Run ``command`` over the sandbox's layer (joining its main command if it runs); audited.

    prestart: see service.run_blocking (the CLI passes False)."""
    from tether.sandbox.service import run_spec

    box = _load(name)
    spec = spec_for(box, command, timeout=timeout)
    return await run_spec(spec, stdin=stdin, on_output=on_output, via=via, client=client,
                          sandbox=name, prestart=prestart, run_fn=_joined_runner(box))


def _joined_runner(box: NamedSandbox):
    """While the main command runs, new processes join its namespaces (see _join.py)."""
    import functools

    from tether.sandbox import _join

    status, supervisor, _ = box.status()
    init = _join.sandbox_init(supervisor) if status == "running" else None
    return functools.partial(_join.run_joined, init_pid=init) if init is not None else None


def exec_sync(name: str, command: Sequence[str], **kw):
    return asyncio.run(exec_async(name, command, **kw))


def start(name: str) -> NamedSandbox:
    """Start the main command under a detached supervisor; returns once it runs."""
    with _locked(name):
        box = _load(name)
        if box.command is None:
            raise UsageError(f"sandbox {name!r} has no main command to start",
                             f"run commands with 'tether sandbox exec {name} -- CMD', or create "
                             "it with a command: tether sandbox create NAME -- CMD")
        if box.status()[0] == "running":
            return box
        with contextlib.suppress(FileNotFoundError):
            (box.dir / "exit.json").unlink()
        with open(box.dir / "supervisor.log", "ab") as errlog:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tether.sandbox.named", name],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog,
                start_new_session=True, env=os.environ.copy())
        ticks = _proc_start_ticks(proc.pid)
        paths.atomic_write(box.dir / "run.json",
                           json.dumps({"pid": proc.pid, "start_ticks": ticks,
                                       "started_at": time.time()}))
    return box


def stop(name: str, *, grace_s: float = STOP_GRACE_S) -> NamedSandbox:
    """End the main command (SIGTERM to the supervisor, SIGKILL after ``grace_s``)."""
    with _locked(name):
        box = _load(name)
        pid = _running_pid(box.dir / "run.json")
        if pid is not None:
            _terminate(pid, grace_s)
        with contextlib.suppress(FileNotFoundError):
            (box.dir / "run.json").unlink()
    return box


def _terminate(pid: int, grace_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if _proc_start_ticks(pid) is None or _is_zombie(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def logs(name: str) -> bytes:
    box = _load(name)
    try:
        return box.log_path.read_bytes()
    except FileNotFoundError:
        return b""


def follow_logs(name: str, *, poll_s: float = 0.1) -> Iterator[bytes]:
    """The main command's output so far, then new output as it comes, until it is not running."""
    box = _load(name)
    offset = 0
    while True:
        running = box.status()[0] == "running"  # read before the file: no tail is lost
        try:
            with box.log_path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            yield chunk
        elif not running:
            return
        else:
            time.sleep(poll_s)


# -- files ---------------------------------------------------------------------------------


def layer_path(box: NamedSandbox, path: str) -> tuple[Path, str]:
    """(layer directory, relative path) for a path as the sandbox sees it.

    Only the writable layer is reachable: /workspace/... (or a relative path) and
    /home/sandbox/... (or ~/...). Anything else is not the sandbox's own state.
    """
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    if not path.startswith("/"):
        return box.workspace, path
    pure = PurePosixPath(path)
    for prefix, root in ((WORKSPACE, box.workspace), (HOME, box.home)):
        if pure == PurePosixPath(prefix) or PurePosixPath(prefix) in pure.parents:
            return root, str(pure.relative_to(prefix))
    raise UsageError(f"{path} is not in the sandbox's writable layer",
                     f"use a path under {WORKSPACE} or {HOME}")


def read_file(name: str, path: str) -> bytes:
    root, rel = layer_path(_load(name), path)
    return _safefs.read_file(root, rel)


def write_file(name: str, path: str, data: bytes) -> None:
    root, rel = layer_path(_load(name), path)
    _safefs.write_file(root, rel, data)


def parse_location(text: str) -> tuple[str | None, str]:
    """'NAME:path' -> (NAME, path); a host path (no colon before the first '/') -> (None, path)."""
    head, sep, tail = text.partition(":")
    if sep and head and "/" not in head and _NAME.fullmatch(head):
        return head, tail or "."
    return None, text


def copy(src: str, dst: str, *, progress: Callable[[int], None] | None = None) -> int:
    """``tether sandbox cp``: exactly one side is ``NAME:path``; returns files copied.

    ``progress(n)`` is called as files are copied (for a progress bar)."""
    progress = progress or (lambda n: None)
    (s_name, s_path), (d_name, d_path) = parse_location(src), parse_location(dst)
    if (s_name is None) == (d_name is None):
        raise UsageError("cp needs exactly one side written as NAME:path",
                         "tether sandbox cp ./file dev:/workspace/  or  dev:/workspace/out .")
    if s_name is not None:
        return _copy_out(_load(s_name), s_path, Path(d_path), progress)
    return _copy_in(Path(s_path), _load(d_name), d_path, progress)


def _copy_out(box: NamedSandbox, inner: str, host: Path, progress) -> int:
    root, rel = layer_path(box, inner)
    kind = _safefs.kind_of(root, rel)
    if kind == "missing":
        raise NotFoundError(f"{inner} does not exist in sandbox {box.name!r}")
    if kind == "file":
        target = host / PurePosixPath(inner).name if host.is_dir() else host
        _write_host(target, _safefs.read_file(root, rel))
        progress(1)
        return 1
    dest = host / PurePosixPath(inner).name if host.is_dir() else host
    count = 0
    for relpath, data in _safefs.walk_files(root, rel):
        _write_host(dest / relpath, data)
        count += 1
        progress(1)
    return count


def _write_host(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise LocalIOError(f"could not write {target}: {exc.strerror}") from exc


def _copy_in(host: Path, box: NamedSandbox, inner: str, progress) -> int:
    if not host.exists():
        raise NotFoundError(f"{host} does not exist")
    root, rel = layer_path(box, inner)
    into_dir = inner.endswith("/") or _safefs.kind_of(root, rel) == "dir"
    base = f"{rel}/{host.name}" if into_dir else rel
    if host.is_file():
        _safefs.write_file(root, base, host.read_bytes(), host.stat().st_mode & 0o777)
        progress(1)
        return 1
    count = 0
    for file in sorted(p for p in host.rglob("*") if p.is_file() and not p.is_symlink()):
        _safefs.write_file(root, f"{base}/{file.relative_to(host).as_posix()}",
                           file.read_bytes(), file.stat().st_mode & 0o777)
        count += 1
        progress(1)
    return count


# -- the supervisor of a started sandbox ---------------------------------------------------


async def _supervise(name: str) -> int:
    """Run the main command, its output to main.log; on SIGTERM end it and exit."""
    from tether.sandbox.service import run_spec

    box = _load(name)
    spec = spec_for(box, box.command or ())
    log = open(box.log_path, "ab", buffering=0)
    stopping = False

    def on_output(_stream: str, data: bytes) -> None:
        log.write(data)

    def on_term() -> None:
        # SIGKILL our bwrap: its sandbox dies with it, the runner returns as for any killed
        # run (cgroup removed, run audited) and we record a stop instead of an exit.
        nonlocal stopping
        stopping = True
        from tether.sandbox._join import _children_of

        for child in _children_of(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    ended: dict = {"exit_code": None}
    try:
        # prestart=False: the bwrap of the main command must be our only child (_join.py)
        result = await run_spec(spec, on_output=on_output, via="start", sandbox=name,
                                prestart=False)
        ended.update(exit_code=result.exit_code, timed_out=result.timed_out)
    except TetherError as exc:
        log.write(f"tether: {exc.message}\n".encode())
        ended["error"] = exc.message
    finally:
        log.close()
    if not stopping:
        ended["ended_at"] = time.time()
        paths.atomic_write(box.dir / "exit.json", json.dumps(ended))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_supervise(sys.argv[1])))
