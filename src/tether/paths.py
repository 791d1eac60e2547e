"""Where tether keeps things, and how it writes files safely.

Config, state and cache directories follow the platform (platformdirs). ``TETHER_HOME``
relocates all three under one folder, which is how tests and portable installs isolate tether.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tether.errors import LocalIOError

APP_NAME = "tether"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def _root(kind: str) -> Path:
    override = os.environ.get("TETHER_HOME")
    if override:
        return Path(override).expanduser() / kind
    import platformdirs  # deferred: keeps `import tether` cheap for the CLI fast path

    finder = {
        "config": platformdirs.user_config_dir,
        "state": platformdirs.user_state_dir,
        "cache": platformdirs.user_cache_dir,
    }[kind]
    return Path(finder(APP_NAME))


def config_dir() -> Path:
    """Settings and credentials the user chose (profiles, secrets file)."""
    return _root("config")


def state_dir() -> Path:
    """What tether keeps between runs (host identity, running workspaces, sandboxes)."""
    return _root("state")


def cache_dir() -> Path:
    """What can be rebuilt (stat caches, downloaded tools)."""
    return _root("cache")


def tools_dir() -> Path:
    """Programs tether installs for itself (code-server, node)."""
    return cache_dir() / "tools"


def ssh_dir() -> Path:
    """The user's OpenSSH directory (``~/.ssh``; follows ``HOME``)."""
    return Path.home() / ".ssh"


def ensure_dir(path: Path, mode: int = PRIVATE_DIR_MODE) -> Path:
    """Create ``path`` (and parents) if missing; a new leaf gets ``mode``."""
    try:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True, mode=mode)
            os.chmod(path, mode)
    except OSError as exc:
        raise _io_error("create the directory", path, exc) from exc
    return path


def atomic_write(path: Path, data: bytes | str, mode: int = PRIVATE_FILE_MODE,
                 backup: bool = False) -> Path | None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    Writes a temp file in the same directory, fsyncs it, sets ``mode`` before it becomes
    visible, then renames it over ``path``. With ``backup``, the previous file is first copied
    to ``path.bak`` (mode kept) and that path is returned. On any error ``path`` is untouched.
    """
    import shutil  # deferred, with tempfile: the CLI's exec fast path imports this module
    import tempfile

    if isinstance(data, str):
        data = data.encode()
    parent = path.parent
    ensure_dir(parent, mode=PRIVATE_DIR_MODE)
    backup_path: Path | None = None
    tmp_name: str | None = None
    try:
        if backup and path.exists():
            backup_path = path.with_name(path.name + ".bak")
            shutil.copy2(path, backup_path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(parent)
    except OSError as exc:
        raise _io_error("write", path, exc) from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    return backup_path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (made 0600 if missing; its folder
    must exist) for the block, waiting for it: serialises read-modify-write across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(action: str, path: Path, exc: OSError) -> LocalIOError:
    hint = None
    if isinstance(exc, PermissionError) or exc.errno in (13, 30):  # EACCES, EROFS
        hint = f"check that {path.parent} is writable by you (read-only home or wrong owner?)"
    elif exc.errno == 28:  # ENOSPC
        hint = "free some disk space and try again"
    return LocalIOError(f"could not {action} {path}: {exc.strerror or exc}", hint)
