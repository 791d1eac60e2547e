"""Host profiles on the laptop: what `tether connect` learned about a workspace.

One JSON file per host under ``config_dir()/hosts/<name>.json`` (mode 0600, format version
``"v": 1``). The access token is a secret and lives in ``tether.secrets`` under
``link:<name>:token``, never in the profile file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tether import paths, secrets
from tether.errors import AuthError, ConfigError, LocalIOError, NotFoundError, UsageError

PROFILE_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class HostProfile:
    name: str
    workspace_id: str
    url: str
    user: str
    host_key: str  # pinned OpenSSH public key line of the host
    identity_file: Path  # client private key
    known_hosts_file: Path  # tether-owned, holds "<alias> <host_key>"
    host_key_alias: str  # "tether-<name>"

    def to_dict(self) -> dict:
        return {"v": PROFILE_VERSION, "name": self.name, "workspace_id": self.workspace_id,
                "url": self.url, "user": self.user, "host_key": self.host_key,
                "identity_file": str(self.identity_file),
                "known_hosts_file": str(self.known_hosts_file),
                "host_key_alias": self.host_key_alias}

    @classmethod
    def from_dict(cls, data: dict, where: str = "profile") -> HostProfile:
        if not isinstance(data, dict) or data.get("v") != PROFILE_VERSION:
            raise ConfigError(f"{where} has an unknown format version",
                              "reconnect with `tether connect` to rewrite it")
        try:
            return cls(name=data["name"], workspace_id=data["workspace_id"], url=data["url"],
                       user=data["user"], host_key=data["host_key"],
                       identity_file=Path(data["identity_file"]),
                       known_hosts_file=Path(data["known_hosts_file"]),
                       host_key_alias=data["host_key_alias"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where} is missing a field ({exc})",
                              "reconnect with `tether connect` to rewrite it") from exc


def validate_name(name: str) -> str:
    """A host name usable in a file name and an ssh Host pattern."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"{name!r} is not a valid host name",
                         "use letters, digits, '.', '_' or '-' (up to 63, starting with a "
                         "letter or digit)")
    return name


def hosts_dir() -> Path:
    return paths.config_dir() / "hosts"


def profile_path(name: str) -> Path:
    return hosts_dir() / f"{validate_name(name)}.json"


def host_key_alias(name: str) -> str:
    return f"tether-{validate_name(name)}"


def known_hosts_path(name: str) -> Path:
    """The tether-owned known_hosts file for one host (``UserKnownHostsFile``)."""
    return hosts_dir() / f"{validate_name(name)}.known_hosts"


def save_profile(p: HostProfile) -> None:
    paths.ensure_dir(hosts_dir())
    paths.atomic_write(profile_path(p.name), json.dumps(p.to_dict(), indent=1, sort_keys=True)
                       + "\n", mode=paths.PRIVATE_FILE_MODE)


def load_profile(name: str) -> HostProfile:
    path = profile_path(name)
    try:
        raw = path.read_text()
    except FileNotFoundError as exc:
        raise NotFoundError(f"no host named {name!r}",
                            "list them with `tether hosts`, or pair with `tether connect`"
                            ) from exc
    except OSError as exc:
        raise LocalIOError(f"could not read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the host profile {path} is not valid JSON",
                          "reconnect with `tether connect` to rewrite it") from exc
    return HostProfile.from_dict(data, where=f"the host profile {path}")


def list_profiles() -> list[HostProfile]:
    d = hosts_dir()
    if not d.is_dir():
        return []
    out = []
    for path in sorted(d.glob("*.json")):
        try:
            out.append(load_profile(path.stem))
        except (ConfigError, UsageError):
            continue  # a broken file shows up when that host is used, with its own error
    return out


def delete_profile(name: str) -> bool:
    """Delete the profile, its token and its known_hosts file; False if there was none."""
    path = profile_path(name)
    existed = path.exists()
    for p in (path, known_hosts_path(name)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalIOError(f"could not delete {p}: {exc.strerror}") from exc
    secrets.delete_secret(token_key(name))
    return existed


def token_key(name: str) -> str:
    return f"link:{name}:token"


def access_token(name: str) -> str:
    token = secrets.get_secret(token_key(name))
    if not token:
        raise AuthError(f"no access token stored for host {name!r}",
                        f"pair again: run `tether host pair-code` on the host, then "
                        f"`tether connect <string> --name {name}` here")
    return token


def set_access_token(name: str, token: str) -> None:
    secrets.set_secret(token_key(name), token)
