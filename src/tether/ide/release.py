"""Install code-server from its standalone release archive (where GitHub is reachable).

The archive (`code-server-<V>-<os>-<arch>.tar.gz`) carries its own Node, so nothing is
compiled: one download (~100 MB) and an extraction. It lands in the same tools-dir folder as
an npm install (`code-server-<V>/`), with a marker saying ``"kind": "release"``; the top
folder of the archive is dropped, so ``bin/code-server`` is at the folder's root.
``TETHER_CODE_SERVER_RELEASE_URL`` (a template with ``{version}``, ``{os}``, ``{arch}``)
points at a mirror.
"""

from __future__ import annotations

import os
import platform
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tether.errors import ConnectError, IntegrityError, NotFoundError, UsageError

URL_TEMPLATE = ("https://github.com/coder/code-server/releases/download/v{version}/"
                "code-server-{version}-{os}-{arch}.tar.gz")
URL_ENV = "TETHER_CODE_SERVER_RELEASE_URL"
BIN = Path("bin/code-server")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "armv7l"}
_OS = {"linux": "linux", "darwin": "macos"}


def release_url(version: str, system: str | None = None, machine: str | None = None) -> str:
    """The archive URL for this (or the given) OS and CPU; UsageError where none is built."""
    system = (system or platform.system()).lower()
    machine = (machine or platform.machine()).lower()
    if system not in _OS or machine not in _ARCH:
        raise UsageError(f"code-server publishes no release archive for {system}/{machine}",
                         "use `tether ide install` (the npm method)")
    template = os.environ.get(URL_ENV) or URL_TEMPLATE
    return template.format(version=version, os=_OS[system], arch=_ARCH[machine])


def member_target(name: str) -> PurePosixPath | None:
    """Where an archive member goes once the top folder is dropped; None to skip it.

    Absolute names and ``..`` are refused (IntegrityError): an archive must not write
    outside its folder.
    """
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise IntegrityError(f"the code-server archive has an unsafe path: {name!r}")
    if len(parts) < 2:
        return None
    return PurePosixPath(*parts[1:])


def download(url: str, dest: Path, on_bytes: Callable[[int], None] | None = None) -> None:
    import httpx

    try:
        with httpx.stream("GET", url, follow_redirects=True,
                          timeout=httpx.Timeout(60.0, connect=15.0)) as r:
            if r.status_code == 404:
                raise NotFoundError(f"no code-server release archive at {url}",
                                    "check --version (see the code-server releases page)")
            if r.status_code != 200:
                raise ConnectError(f"downloading {url} failed: HTTP {r.status_code}")
            with dest.open("wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
    except httpx.HTTPError as exc:
        raise ConnectError(f"could not download {url}: {exc}",
                           "without internet access use the npm method "
                           "(`tether ide install`)") from exc


def extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` without its top folder (regular files, dirs, links)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                target = member_target(member.name)
                if target is None:
                    continue
                member.name = str(target)
                if member.islnk():  # hard links name another member: same renaming
                    member.linkname = str(member_target(member.linkname))
                # the "data" filter refuses links that leave dest or point to absolute paths
                tar.extract(member, dest, filter="data")
    except tarfile.TarError as exc:  # also the filter's refusals
        raise IntegrityError(f"the code-server archive is damaged or unsafe: {exc}",
                             "run `tether ide install --method release` again") from exc


def install_release(version: str, partial: Path,
                    on_bytes: Callable[[int], None] | None = None) -> None:
    """Download and unpack the release into ``partial`` (the caller renames it)."""
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    archive = partial.with_name(partial.name + ".tar.gz")
    try:
        download(release_url(version), archive, on_bytes)
        extract(archive, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        archive.unlink(missing_ok=True)
    if not os.access(partial / BIN, os.X_OK):
        shutil.rmtree(partial, ignore_errors=True)
        raise IntegrityError("the code-server archive has no bin/code-server")
