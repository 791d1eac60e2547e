"""Trusted project configs: a tether.toml `[sandbox]` section applies only once trusted.

A sandbox whose workspace is writable (moderate, permissive, API runs) can write tether.toml,
and the next run, even a `--profile restrictive` one, would take `network = "full"`,
`landlock = false`, `env = ["AWS_SECRET_ACCESS_KEY"]` or extra mounts from it. So, in the manner
of direnv's `allow`, a section applies only when the user has trusted that exact content
(`tether sandbox trust PATH`); an untrusted or changed file is refused with a hint, never
applied and never silently skipped. Runs can also ignore project configs altogether
(`ProjectConfig.IGNORED`, `--ignore-project-config`).

The record lives in tether's config directory, which no sandbox can reach: the home is never
bound, and a workspace or mount that holds the config directory is refused like the home
(runner.resolve_mounts).

Store (docs/sandbox-profiles.md): ``<config>/sandbox/trusted.json``, mode 0600::

    {"v": 1, "files": {"/abs/dir/tether.toml": {"sha256": "<hex>", "trusted_at": 1700000000.0}}}

Keyed by the path where the file is found: its directory resolved, the name itself not. A link
planted in place of a trusted file is judged by the content it shows there, which must hash
to what the user trusted at that path.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from tether import paths
from tether.errors import ConfigError, LocalIOError, NotFoundError, ProtocolError

FORMAT_VERSION = 1
FILE_NAME = "tether.toml"
_MAX_BYTES = 1 << 20


class ProjectConfig(str, Enum):
    """What a project tether.toml `[sandbox]` section may do to a run."""

    TRUSTED_ONLY = "trusted"  # applies if its exact content was trusted; else the run is refused
    IGNORED = "ignored"       # never read (named sandboxes, --ignore-project-config)


@dataclass(frozen=True)
class TrustedFile:
    path: Path
    sha256: str
    trusted_at: float

    def to_json(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "trusted_at": self.trusted_at}


def store_path() -> Path:
    return paths.config_dir() / "sandbox" / "trusted.json"


def canonical(path: Path) -> Path:
    """The key of a config file: a directory means its tether.toml; the parent is resolved."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    return path.absolute().parent.resolve() / path.name


def read_config(path: Path) -> bytes:
    """The file's bytes, read once (what is hashed is what is parsed).

    O_NONBLOCK: a FIFO planted as tether.toml must not hang the host; only a regular file is
    read, and at most 1 MiB."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist",
                            hint="name a tether.toml, or the directory that holds one") from exc
    except OSError as exc:
        raise LocalIOError(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ConfigError(f"{path} is not a regular file",
                              hint="tether.toml must be a plain file")
        data = fh.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise ConfigError(f"{path} is larger than 1 MiB", hint="is this really a tether.toml?")
    return data


def sandbox_table(path: Path, data: bytes) -> dict:
    """The `[sandbox]` table of a tether.toml's bytes ({} when there is none)."""
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}", hint="fix the TOML syntax") from exc
    table = doc.get("sandbox", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [sandbox] must be a table",
                          hint="write it as a section: a [sandbox] line, then key = value lines")
    return table


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load() -> dict[str, dict]:
    try:
        raw = store_path().read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LocalIOError(f"cannot read {store_path()}: {exc.strerror}") from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise LocalIOError(f"{store_path()} is damaged: {exc}",
                           hint="delete it and trust your project configs again") from exc
    version = doc.get("v") if isinstance(doc, dict) else None
    if version != FORMAT_VERSION:
        raise ProtocolError(f"{store_path()} has format version {version!r}",
                            hint="it was written by another tether version")
    files = doc.get("files")
    return files if isinstance(files, dict) else {}


def _update(change) -> dict[str, dict]:
    """Read-modify-write the store under its lock; ``change(files)`` edits in place."""
    store = store_path()
    paths.ensure_dir(store.parent)
    with paths.locked(store.with_name(".trusted.lock")):
        files = _load()
        result = change(files)
        paths.atomic_write(store, json.dumps({"v": FORMAT_VERSION, "files": files}, indent=1,
                                             sort_keys=True))
    return result


def find(start: Path) -> Path | None:
    """The nearest tether.toml at or above the directory ``start`` (the one a run there reads)."""
    start = Path(start).absolute().resolve()
    for d in (start, *start.parents):
        if (d / FILE_NAME).is_file():
            return d / FILE_NAME
    return None


def trust(path: Path | None = None) -> TrustedFile:
    """Trust the current content of a project tether.toml: its `[sandbox]` section applies to
    runs from now on, until the file changes. ``path``: the file or its directory (default:
    the nearest one at or above the current directory). Checked first: a file tether would
    refuse anyway (bad TOML, unknown keys) is not recorded."""
    from tether.sandbox.profiles import check_config_keys

    if path is None:
        found = find(Path.cwd())
        if found is None:
            raise NotFoundError(f"no {FILE_NAME} here or above {Path.cwd()}",
                                hint="name one: tether sandbox trust PATH")
        path = found
    key = canonical(path)
    data = read_config(key)
    check_config_keys(sandbox_table(key, data), source=str(key))
    record = TrustedFile(key, digest(data), time.time())

    def add(files: dict) -> None:
        files[str(key)] = {"sha256": record.sha256, "trusted_at": record.trusted_at}

    _update(add)
    return record


def revoke(path: Path) -> bool:
    """Forget the trust in ``path`` (the file or its directory); False if it was not trusted.
    The file need not exist any more."""
    key = str(canonical(path))
    return _update(lambda files: files.pop(key, None) is not None)


def list_trusted() -> list[TrustedFile]:
    return [TrustedFile(Path(k), v.get("sha256", ""), float(v.get("trusted_at", 0)))
            for k, v in sorted(_load().items()) if isinstance(v, dict)]


def check(path: Path, data: bytes) -> None:
    """Raise unless ``data`` (read from ``path``) is the content the user trusted there."""
    key = canonical(path)
    record = _load().get(str(key))
    hint = (f"review its [sandbox] section, then `tether sandbox trust {key}`; or run with "
            "--ignore-project-config (Python: project_config=ProjectConfig.IGNORED)")
    if not isinstance(record, dict):
        raise ConfigError(f"{key} has a [sandbox] section you have not trusted: it could widen "
                          "what the sandbox may do", hint=hint)
    if record.get("sha256") != digest(data):
        raise ConfigError(f"{key} changed since you trusted it (a sandbox with a writable "
                          "workspace can write it)", hint=hint)
