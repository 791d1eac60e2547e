"""`tether doctor`: which system parts the capabilities need, which are here, how to get the rest."""

from __future__ import annotations

import enum
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from tether.errors import ConfigError
from tether.host import platform as plat
from tether.secrets import forced_backend, keyring_status


class CheckStatus(str, enum.Enum):
    OK = "ok"
    MISSING = "missing"  # needed by a capability and absent: the fix installs it
    WARN = "warn"  # works, but not the best way (e.g. secrets in a file, no keyring)


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    needed_for: tuple[str, ...]
    fix: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    platform: str
    platform_kind: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status is not CheckStatus.MISSING for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "platform": self.platform,
            "platform_kind": self.platform_kind,
            "checks": [dict(asdict(c), status=c.status.value, needed_for=list(c.needed_for))
                       for c in self.checks],
            "notes": self.notes,
        }


# (tool, what it is, capabilities that need it, a command that prints its version)
_PROGRAMS: list[tuple[str, str, tuple[str, ...], list[str]]] = [
    ("ssh", "OpenSSH client", ("link", "keys", "kernels", "sync"), ["-V"]),
    ("ssh-keygen", "OpenSSH key tool", ("keys", "link"), []),
    ("sshd", "OpenSSH server", ("host",), ["-V"]),
    ("scp", "OpenSSH copy", ("link",), []),
    ("rsync", "rsync", ("link", "sync"), ["--version"]),
    ("git", "git", ("keys", "forges"), ["--version"]),
    ("bwrap", "bubblewrap", ("sandbox",), ["--version"]),
]


def _version(path: str, args: list[str]) -> str:
    if not args:
        return path
    try:
        proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return path
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return f"{path} ({text[0]})" if text else path


def _bwrap_works(path: str) -> str | None:
    """Why bubblewrap cannot make a namespace here, or None when it can."""
    try:
        proc = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "true"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def run_checks(info: plat.PlatformInfo | None = None) -> DoctorReport:
    """Check every system part; pure reporting, installs nothing."""
    info = info or plat.detect()
    checks: list[Check] = []
    py_ok = sys.version_info >= (3, 10)
    checks.append(Check("python", CheckStatus.OK if py_ok else CheckStatus.MISSING,
                        sys.version.split()[0], ("all",),
                        None if py_ok else "install Python 3.10 or newer"))
    for tool, label, needed_for, version_args in _PROGRAMS:
        path = plat.find_program(tool)
        if path is None:
            fix = plat.install_command(info, tool)
            detail = f"{label} not found"
            if fix is None:
                detail += " (no package for this platform)"
            checks.append(Check(tool, CheckStatus.MISSING, detail, needed_for, fix))
            continue
        detail = _version(path, version_args)
        if tool == "bwrap":
            problem = _bwrap_works(path)
            if problem:
                checks.append(Check(tool, CheckStatus.MISSING,
                                    f"{path} cannot create namespaces: {problem}", needed_for,
                                    "enable unprivileged user namespaces "
                                    "(sysctl -w kernel.unprivileged_userns_clone=1) or run as root"))
                continue
        checks.append(Check(tool, CheckStatus.OK, detail, needed_for))
    checks.append(_keyring_check(info))
    notes = []
    if info.remote_shell_policy:
        notes.append(info.remote_shell_policy)
    return DoctorReport(info.name, info.kind.value, checks, notes)


# Packages that give the keyring library a Secret Service on D-Bus (a desktop login starts and
# unlocks it; dbus-user-session gives non-desktop logins the session bus it lives on).
_KEYRING_PACKAGES = {"apt": "gnome-keyring dbus-user-session", "dnf": "gnome-keyring",
                     "pacman": "gnome-keyring", "apk": "gnome-keyring"}
_FILE_FALLBACK = "export TETHER_SECRETS_BACKEND=file"


def keyring_fix(info: plat.PlatformInfo) -> str:
    """The exact commands that give this machine a keyring, or the 0600 file instead."""
    pm = info.package_manager
    if pm == "brew":
        return ("unlock the login keychain (Keychain Access), or keep secrets in the 0600 "
                f"file: {_FILE_FALLBACK}")
    packages = _KEYRING_PACKAGES.get(pm or "")
    if packages is None:
        return ("install gnome-keyring (or KWallet) with your package manager, or keep "
                f"secrets in the 0600 file: {_FILE_FALLBACK}")
    sudo = "" if info.is_root else "sudo "
    install = {"apt": f"{sudo}apt-get install -y {packages}",
               "dnf": f"{sudo}dnf install -y {packages}",
               "pacman": f"{sudo}pacman -S --noconfirm {packages}",
               "apk": f"{sudo}apk add {packages}"}[pm]
    return (f"{install}, then log in again to start and unlock it (headless: keep secrets in "
            f"the 0600 file: {_FILE_FALLBACK})")


def _keyring_check(info: plat.PlatformInfo) -> Check:
    needed_for = ("secrets",)
    try:
        forced = forced_backend()
    except ConfigError as exc:
        return Check("keyring", CheckStatus.MISSING, exc.message, needed_for,
                     "unset TETHER_SECRETS_BACKEND, or set it to file or keyring")
    if forced == "file":
        return Check("keyring", CheckStatus.OK,
                     "not used: TETHER_SECRETS_BACKEND=file keeps secrets in a 0600 file",
                     needed_for)
    ok, name = keyring_status()
    if ok:
        return Check("keyring", CheckStatus.OK, name, needed_for)
    if forced == "keyring":  # forced: storing a secret fails instead of using the file
        return Check("keyring", CheckStatus.MISSING,
                     f"{name}; TETHER_SECRETS_BACKEND=keyring makes storing a secret fail",
                     needed_for, keyring_fix(info))
    return Check("keyring", CheckStatus.WARN, f"{name}; secrets go to a 0600 file instead",
                 needed_for, keyring_fix(info))
