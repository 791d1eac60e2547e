"""Virtualenvs inside a snapshot: record the interpreter and packages, check and rebuild.

A venv is tied to the absolute path it was made at (scripts' shebangs, ``pyvenv.cfg``) and to
its base interpreter (``home``). Push records both plus a ``pip freeze``-style package list,
read from ``*.dist-info`` names (no subprocess, so it costs nothing on the no-change path).
After a restore, ``check`` says what no longer matches; ``rebuild`` recreates the venv from
the recorded list with an interpreter of the recorded version.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tether.errors import IntegrityError, SystemDependencyError
from tether.snapshot.format import Venv

_FREEZE_SKIP = {"pip", "setuptools", "wheel", "distribute"}  # what `pip freeze` leaves out
_DIST_INFO = re.compile(r"(?P<name>.+?)-(?P<version>[^-]+)\.dist-info")


def parse_cfg(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def freeze_from_names(names: list[str]) -> tuple[str, ...]:
    lines = []
    for n in names:
        m = _DIST_INFO.fullmatch(n)
        if m and m["name"].lower() not in _FREEZE_SKIP:
            lines.append(f"{m['name']}=={m['version']}")
    return tuple(sorted(lines, key=str.lower))


def describe(dfd: int, rel: str) -> Venv | None:
    """The venv whose directory is open at ``dfd``, or None if pyvenv.cfg is unreadable."""
    try:
        fd = os.open("pyvenv.cfg", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            cfg = parse_cfg(os.read(fd, 1 << 16).decode(errors="replace"))
        finally:
            os.close(fd)
    except OSError:
        return None
    names: list[str] = []
    with contextlib.suppress(OSError):
        lib = os.open("lib", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        try:
            for py in os.listdir(lib):
                if py.startswith("python"):
                    with contextlib.suppress(OSError):
                        sp = os.open(f"{py}/site-packages", os.O_RDONLY | os.O_DIRECTORY,
                                     dir_fd=lib)
                        try:
                            names += os.listdir(sp)
                        finally:
                            os.close(sp)
        finally:
            os.close(lib)
    version = cfg.get("version") or cfg.get("version_info", "")
    return Venv(path=rel, home=cfg.get("home", ""), version=version,
                freeze=freeze_from_names(names))


@dataclass(frozen=True)
class VenvProblem:
    path: Path
    message: str


def _interpreter_version(python: Path) -> str | None:
    try:
        out = subprocess.run([str(python), "-c",
                              "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def base_python(venv: Venv) -> Path | None:
    for name in ("python3", "python"):
        cand = Path(venv.home) / name
        if cand.exists():
            return cand
    return None


def check(venv: Venv, restored_at: Path, original_at: Path) -> VenvProblem | None:
    """What stops the restored venv from working as it did, or None."""
    if restored_at != original_at:
        return VenvProblem(restored_at, f"virtualenv made at {original_at} restored to "
                           f"{restored_at}: its scripts still point at the old path")
    python = base_python(venv)
    if python is None:
        return VenvProblem(restored_at, f"virtualenv needs Python {venv.version} from "
                           f"{venv.home}, which is not on this machine")
    found = _interpreter_version(python)
    if venv.version and found and found != venv.version:
        return VenvProblem(restored_at, f"virtualenv was made with Python {venv.version}; "
                           f"{python} is {found}")
    return None


def find_python(version: str) -> Path:
    """An interpreter of ``version`` (major.minor must match), else this one."""
    mm = ".".join(version.split(".")[:2])
    for name in (f"python{mm}", "python3"):
        found = shutil.which(name)
        if found and (_interpreter_version(Path(found)) or "").startswith(mm + "."):
            return Path(found)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == mm or not mm:
        return Path(sys.executable)
    raise SystemDependencyError(f"no Python {mm} on this machine to rebuild the virtualenv",
                                f"install python{mm}, then pull again with --rebuild-venv")


_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")


def check_freeze(lines: tuple[str, ...]) -> None:
    """Only ``name==version`` lines: a recorded list must not smuggle pip options
    (``--index-url``, ``-r file``, ``-e git+...``) or URLs into the rebuild."""
    for line in lines:
        if not _REQUIREMENT.fullmatch(line):
            raise IntegrityError(f"recorded package list has an unexpected line {line!r}",
                                 "the snapshot was tampered with; recreate the virtualenv "
                                 "by hand")


def rebuild(venv: Venv, at: Path) -> None:
    """Recreate the venv at ``at`` from the recorded package list."""
    check_freeze(venv.freeze)
    python = find_python(venv.version)
    shutil.rmtree(at, ignore_errors=True)
    _run([str(python), "-m", "venv", str(at)], f"create a virtualenv at {at}")
    if venv.freeze:
        req = at / "tether-requirements.txt"
        req.write_text("\n".join(venv.freeze) + "\n")
        try:
            _run([str(at / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(req)],
                 "reinstall the recorded packages")
        finally:
            req.unlink(missing_ok=True)


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemDependencyError(f"could not {what}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise SystemDependencyError(f"could not {what}: {tail[0]}",
                                    "check the network and the recorded versions")
