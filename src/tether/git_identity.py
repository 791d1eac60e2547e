"""Who git says you are: ``user.name`` and ``user.email`` through ``git config``."""

from __future__ import annotations

import re
import subprocess
from enum import Enum
from pathlib import Path

from tether.errors import LocalIOError, SystemDependencyError, UsageError

_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class GitScope(str, Enum):
    GLOBAL = "global"  # ~/.gitconfig: every repository of this user
    LOCAL = "local"  # .git/config of the repository in the working directory


def validate_identity(name: str, email: str) -> tuple[str, str]:
    name, email = name.strip(), email.strip()
    if not name or any(c in name for c in "\n\r\x00<>"):
        raise UsageError(f"{name!r} is not a usable git user name",
                         "give one line without < or >, e.g. --name \"Ada Lovelace\"")
    if not _EMAIL_RE.match(email):
        raise UsageError(f"{email!r} is not an email address", "e.g. --email ada@example.com")
    return name, email


def _git(args: list[str], cwd: Path | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SystemDependencyError("git is not installed",
                                    "see `tether doctor` for the install command") from exc


def _scope_args(scope: GitScope, cwd: Path | None) -> list[str]:
    if scope is GitScope.LOCAL:
        probe = _git(["rev-parse", "--git-dir"], cwd)
        if probe.returncode != 0:
            raise UsageError(f"{cwd or Path.cwd()} is not inside a git repository",
                             "run it inside the repository, or use --scope global")
    return [f"--{scope.value}"]


def set_git_identity(name: str, email: str, *, scope: GitScope = GitScope.GLOBAL,
                 cwd: Path | None = None) -> dict:
    """Set user.name and user.email in ``scope``; returns {scope, name, email}."""
    name, email = validate_identity(name, email)
    args = _scope_args(scope, cwd)
    for key, value in (("user.name", name), ("user.email", email)):
        proc = _git(["config", *args, key, value], cwd)
        if proc.returncode != 0:
            raise LocalIOError(f"git config {key} failed: {proc.stderr.strip()}",
                               "check that your git config file is writable")
    return {"scope": scope.value, "name": name, "email": email}


def get_git_identity(*, scope: GitScope | None = None, cwd: Path | None = None) -> dict:
    """The effective (or one scope's) user.name / user.email; missing values are None."""
    args = _scope_args(scope, cwd) if scope else []
    out: dict = {"scope": scope.value if scope else "effective"}
    for key in ("name", "email"):
        proc = _git(["config", *args, "--get", f"user.{key}"], cwd)
        out[key] = proc.stdout.strip() or None
    return out
