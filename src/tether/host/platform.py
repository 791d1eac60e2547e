"""Which platform this machine is, what it allows, and how to install things on it.

Pure detection from the environment and a few files; no network.
"""

from __future__ import annotations

import enum
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tether.errors import SystemDependencyError


class PlatformKind(str, enum.Enum):
    COLAB = "colab"
    KAGGLE = "kaggle"
    LINUX = "linux"
    MACOS = "macos"
    OTHER = "other"


@dataclass(frozen=True)
class PlatformInfo:
    kind: PlatformKind
    distro: str | None  # e.g. "debian", "ubuntu" (from /etc/os-release)
    package_manager: str | None  # "apt", "dnf", "brew", ...
    is_root: bool
    remote_shell_policy: str | None  # the platform's stated policy on SSH / remote shells

    @property
    def name(self) -> str:
        return {
            PlatformKind.COLAB: "Google Colab",
            PlatformKind.KAGGLE: "Kaggle notebook",
            PlatformKind.LINUX: f"Linux ({self.distro or 'unknown distribution'})",
            PlatformKind.MACOS: "macOS",
            PlatformKind.OTHER: sys.platform,
        }[self.kind]


COLAB_POLICY = (
    "Free Colab's terms forbid SSH and remote shells; paid Colab plans allow them. "
    "tether runs an SSH server here only because you asked it to."
)


# Notebook VMs: nothing outside reaches their ports, so a workspace there needs a public
# tunnel to be of any use from a laptop.
NOTEBOOK_KINDS = frozenset({PlatformKind.COLAB, PlatformKind.KAGGLE})


def default_tunnel(info: PlatformInfo, *, cloudflared: bool, ngrok_token: bool) -> str:
    """The tunnel `tether up` uses when none is named (pure).

    On Colab and Kaggle the local URL (http://127.0.0.1:PORT) reaches only the notebook VM
    itself, so the default there is a public tunnel: cloudflared when its binary is found
    (no account needed), else ngrok when an authtoken is available. Elsewhere the machine may
    well be reachable (a VM with a public address, a LAN box): ``local``.
    """
    if info.kind not in NOTEBOOK_KINDS:
        return "local"
    if cloudflared:
        return "cloudflared"
    if ngrok_token:
        return "ngrok"
    raise SystemDependencyError(
        f"on {info.name} a workspace needs a public tunnel (its local URL is not reachable "
        "from your laptop), and neither cloudflared nor an ngrok authtoken was found",
        "put the cloudflared binary on PATH (https://github.com/cloudflare/cloudflared/"
        "releases) for --tunnel cloudflared, or store an ngrok authtoken (`tether host "
        "ngrok-token`, or NGROK_AUTHTOKEN) for --tunnel ngrok; "
        "--tunnel local serves only this machine")


def _os_release(root: Path) -> dict[str, str]:
    try:
        text = (root / "etc/os-release").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def detect(environ: dict[str, str] | None = None, root: Path = Path("/"),
           platform: str | None = None) -> PlatformInfo:
    """Detect the platform from environment variables and files under ``root``."""
    env = os.environ if environ is None else environ
    platform = platform or sys.platform
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if platform == "darwin":
        return PlatformInfo(PlatformKind.MACOS, None,
                            "brew" if shutil.which("brew") else None, is_root, None)
    if not platform.startswith("linux"):
        return PlatformInfo(PlatformKind.OTHER, None, None, is_root, None)
    release = _os_release(root)
    distro = release.get("ID")
    like = (release.get("ID_LIKE", "") + " " + (distro or "")).split()
    if "debian" in like or "ubuntu" in like:
        pm = "apt"
    elif any(d in like for d in ("fedora", "rhel", "centos")):
        pm = "dnf"
    elif "arch" in like:
        pm = "pacman"
    elif "alpine" in like:
        pm = "apk"
    else:
        pm = None
    if env.get("COLAB_RELEASE_TAG") or env.get("COLAB_GPU") is not None \
            or env.get("COLAB_BACKEND_VERSION"):
        return PlatformInfo(PlatformKind.COLAB, distro, pm, is_root, COLAB_POLICY)
    if env.get("KAGGLE_KERNEL_RUN_TYPE") or env.get("KAGGLE_URL_BASE") \
            or (root / "kaggle/input").is_dir():
        return PlatformInfo(PlatformKind.KAGGLE, distro, pm, is_root, None)
    return PlatformInfo(PlatformKind.LINUX, distro, pm, is_root, None)


# Package names per package manager for each system part tether uses.
_PACKAGES: dict[str, dict[str, str | None]] = {
    "apt": {"ssh": "openssh-client", "scp": "openssh-client", "sshd": "openssh-server",
            "rsync": "rsync", "git": "git", "bwrap": "bubblewrap", "ssh-keygen": "openssh-client"},
    "dnf": {"ssh": "openssh-clients", "scp": "openssh-clients", "sshd": "openssh-server",
            "rsync": "rsync", "git": "git", "bwrap": "bubblewrap",
            "ssh-keygen": "openssh-clients"},
    "pacman": {"ssh": "openssh", "scp": "openssh", "sshd": "openssh", "rsync": "rsync",
               "git": "git", "bwrap": "bubblewrap", "ssh-keygen": "openssh"},
    "apk": {"ssh": "openssh-client", "scp": "openssh-client", "sshd": "openssh-server",
            "rsync": "rsync", "git": "git", "bwrap": "bubblewrap",
            "ssh-keygen": "openssh-keygen"},
    "brew": {"ssh": None, "scp": None, "sshd": None, "rsync": "rsync", "git": "git",
             "bwrap": None, "ssh-keygen": None},
}


def install_command(info: PlatformInfo, tool: str) -> str | None:
    """The exact command that installs ``tool`` here, or None when there is none."""
    pm = info.package_manager
    if pm is None or tool not in _PACKAGES.get(pm, {}):
        return None
    package = _PACKAGES[pm][tool]
    if package is None:
        return None
    sudo = "" if info.is_root or pm == "brew" else "sudo "
    return {
        "apt": f"{sudo}apt-get install -y {package}",
        "dnf": f"{sudo}dnf install -y {package}",
        "pacman": f"{sudo}pacman -S --noconfirm {package}",
        "apk": f"{sudo}apk add {package}",
        "brew": f"brew install {package}",
    }[pm]


def find_program(name: str) -> str | None:
    """Find a program on PATH or in the sbin dirs a non-root PATH often lacks (sshd)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(d) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None
