"""`tether connect`: pair this machine with a workspace once, then reach it by name.

Pairing sends our public key, the one-time code and the host key fingerprint of the
connection string (which came to us out of band, from the host's own terminal) to the gateway,
and gets the host key and an access token back. A gateway whose key has another fingerprint
answers 409 before it uses the code or authorizes our key, so a wrong or forged string costs
nothing on the host. The key in the answer is checked against the fingerprint again (an older
gateway ignores the field, and the answer is what gets pinned); on any mismatch nothing is
stored and ``HostKeyMismatchError`` is raised. A later connection string for the same
workspace (a new tunnel URL, the same host key) only updates the URL.

Write order, so an interruption leaves nothing half-usable: known_hosts pin, token, profile,
then the ~/.ssh/config block that makes `ssh tether-NAME` work.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tether import paths
from tether.errors import (AlreadyExistsError, AuthError, ConnectError, HostKeyMismatchError,
                           NotFoundError, ProtocolError, RateLimitedError, UsageError)
from tether.link import profiles
from tether.link.connstring import ConnectionString
from tether.ssh.keys import same_fingerprint

CLIENT_KEY_NAME = "tether_ed25519"
PAIR_PATH = "/.tether/pair"
HEALTH_PATH = "/.tether/health"


@dataclass(frozen=True)
class ConnectResult:
    profile: profiles.HostProfile
    paired: bool  # False when only the URL of a known workspace was updated
    ssh_host: str  # "tether-NAME"
    ssh_config: Path

    def to_dict(self) -> dict:
        return {"name": self.profile.name, "workspace_id": self.profile.workspace_id,
                "url": self.profile.url, "user": self.profile.user, "paired": self.paired,
                "ssh_host": self.ssh_host, "ssh_config": str(self.ssh_config),
                "host_key_fingerprint": _fingerprint(self.profile.host_key)}


def _fingerprint(line: str) -> str:
    from tether.ssh.keys import fingerprint_of_public_key

    return fingerprint_of_public_key(line)


def tether_command() -> str:
    """How ssh should start `tether` (absolute, so ProxyCommand works from any PATH)."""
    beside = Path(sys.executable).parent / "tether"  # the install we are running from
    exe = str(beside) if os.access(beside, os.X_OK) else shutil.which("tether")
    if exe:
        return shlex.quote(str(Path(exe).resolve()))
    return f"{shlex.quote(sys.executable)} -m tether.cli.main"


def proxy_command(name: str) -> str:
    prefix = ""
    # A relocated tether home must reach the proxy too, or it finds no profile.
    if os.environ.get("TETHER_HOME"):
        prefix = f"/usr/bin/env TETHER_HOME={shlex.quote(os.environ['TETHER_HOME'])} "
    return f"{prefix}{tether_command()} proxy {name}"


def ssh_block(p: profiles.HostProfile):
    from tether.ssh.config import ManagedBlock

    alias = p.host_key_alias
    return ManagedBlock(name=alias, host=alias, options=(
        ("HostName", alias),
        ("User", p.user),
        ("ProxyCommand", proxy_command(p.name)),
        ("HostKeyAlias", alias),
        ("IdentityFile", str(p.identity_file)),
        ("IdentitiesOnly", "yes"),
        ("UserKnownHostsFile", str(p.known_hosts_file)),
        ("StrictHostKeyChecking", "yes"),
        ("ServerAliveInterval", "30"),
    ))


def ensure_client_key() -> Path:
    from tether.ssh import keys

    try:
        return keys.get_key(CLIENT_KEY_NAME).path
    except NotFoundError:
        comment = f"tether@{socket.gethostname()}"
        return keys.generate_key(CLIENT_KEY_NAME, comment=comment).path


def _post_pair(url: str, body: dict, timeout: float) -> dict:
    import httpx

    try:
        r = httpx.post(url.rstrip("/") + PAIR_PATH, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach the gateway at {url}: {exc}",
                           "is `tether up` running there, and is the URL in the string "
                           "current? (`tether host status` shows it)") from exc
    retry_hint = "run `tether host pair-code` on the host for a new connection string"
    if r.status_code == 401:
        raise AuthError("the gateway refused the pairing code (wrong code or workspace)",
                        retry_hint)
    if r.status_code == 410:
        raise AuthError("this pairing code was already used or has expired", retry_hint)
    if r.status_code == 409 and body.get("host_key_fingerprint"):
        raise _mismatch(_answered_fingerprint(r), body["host_key_fingerprint"],
                        "the pairing code was not used and nothing was saved")
    if r.status_code == 429:
        retry = float(r.headers.get("retry-after") or 60)
        raise RateLimitedError("too many pairing attempts; the gateway asks us to wait",
                               f"try again in {retry:.0f}s", retry_after=retry)
    if r.status_code != 200:
        raise ProtocolError(f"the gateway answered HTTP {r.status_code} to pairing",
                            "is this URL really a tether gateway of the same version?")
    try:
        data = r.json()
        assert data["v"] == 1
        return {k: str(data[k]) for k in ("workspace_id", "host_key", "user", "access_token")}
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ProtocolError("the gateway's pairing answer is malformed") from exc


def _answered_fingerprint(r) -> str:  # noqa: ANN001 - an httpx.Response
    try:
        fp = r.json()["host_key_fingerprint"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError("the gateway's 409 answer to pairing is malformed") from exc
    return str(fp)[:80]


def _mismatch(presented: str, expected: str, outcome: str) -> HostKeyMismatchError:
    return HostKeyMismatchError(
        f"WARNING: the gateway presented host key {presented}, but the connection string says "
        f"{expected}; {outcome}",
        "someone between you and the host may be intercepting; check the string you "
        "copied and the URL, and do not connect until they match")


def _check_health(url: str, timeout: float) -> None:
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + HEALTH_PATH, timeout=timeout)
        ok = r.status_code == 200 and r.json().get("ok") is True
    except (httpx.HTTPError, ValueError) as exc:
        raise ConnectError(f"cannot reach the gateway at {url}: {exc}",
                           "is `tether up` running there?") from exc
    if not ok:
        raise ProtocolError(f"{url} does not answer like a tether gateway")


def _save(p: profiles.HostProfile, token: str | None) -> Path:
    from tether.ssh import config as ssh_config
    from tether.ssh import known_hosts

    paths.ensure_dir(profiles.hosts_dir())
    known_hosts.remove_known_host(p.known_hosts_file, p.host_key_alias)
    known_hosts.add_known_host(p.known_hosts_file, p.host_key_alias, p.host_key)
    if token is not None:
        profiles.set_access_token(p.name, token)
    profiles.save_profile(p)
    ssh_config.upsert_block(ssh_block(p))
    return ssh_config.config_path()


def connect(text: str, name: str, *, timeout: float = 20.0) -> ConnectResult:
    """Pair with (or update the URL of) the workspace in connection string ``text``."""
    cs = ConnectionString.decode(text)
    profiles.validate_name(name)
    try:
        existing: profiles.HostProfile | None = profiles.load_profile(name)
    except NotFoundError:
        existing = None
    if existing is not None:
        if existing.workspace_id != cs.workspace_id:
            raise AlreadyExistsError(
                f"the name {name!r} is taken by another workspace ({existing.workspace_id})",
                f"pick another --name, or remove it first: `tether hosts rm {name}`")
        if not same_fingerprint(_fingerprint(existing.host_key), cs.host_key_fingerprint):
            raise HostKeyMismatchError(
                f"WARNING: workspace {name!r} now presents host key {cs.host_key_fingerprint}, "
                f"but {_fingerprint(existing.host_key)} is pinned for it",
                "someone may be impersonating it, or the host lost its state; only if you "
                f"know why, run `tether hosts rm {name}` and pair again")
        if (profiles.secrets.get_secret(profiles.token_key(name)) is None
                or not Path(existing.identity_file).is_file()):
            # the token or the key was lost (another keyring, a wiped secrets file or
            # ~/.ssh): the pin still holds, so pair again with this code
            return _pair_new(cs, name, timeout)
        _check_health(cs.url, timeout)
        updated = profiles.HostProfile(**{**existing.__dict__, "url": cs.url})
        return ConnectResult(updated, False, updated.host_key_alias, _save(updated, None))
    return _pair_new(cs, name, timeout)


def _pair_new(cs: ConnectionString, name: str, timeout: float) -> ConnectResult:
    identity = ensure_client_key()
    public_key = identity.with_name(identity.name + ".pub").read_text().strip()
    client_name = f"{name}@{socket.gethostname()}"[:64]
    client_name = "".join(c if c.isalnum() or c in "._@-" else "-" for c in client_name)
    answer = _post_pair(cs.url, {"v": 1, "workspace_id": cs.workspace_id,
                                 "code": cs.pairing_code, "public_key": public_key,
                                 "client_name": client_name,
                                 "host_key_fingerprint": cs.host_key_fingerprint}, timeout)
    if answer["workspace_id"] != cs.workspace_id:
        raise ProtocolError("the gateway answered for another workspace")
    try:
        fp = _fingerprint(answer["host_key"])
    except UsageError as exc:
        raise ProtocolError("the gateway sent a malformed host key") from exc
    if not same_fingerprint(fp, cs.host_key_fingerprint):
        raise _mismatch(fp, cs.host_key_fingerprint, "nothing was saved")
    host_key = " ".join(answer["host_key"].split()[:2])
    profile = profiles.HostProfile(
        name=name, workspace_id=cs.workspace_id, url=cs.url, user=answer["user"],
        host_key=host_key, identity_file=identity,
        known_hosts_file=profiles.known_hosts_path(name),
        host_key_alias=profiles.host_key_alias(name))
    return ConnectResult(profile, True, profile.host_key_alias,
                         _save(profile, answer["access_token"]))


def remove_host(name: str) -> bool:
    """Forget a host: profile, token, pinned key and its ~/.ssh/config block."""
    from tether.ssh import config as ssh_config

    profiles.validate_name(name)
    removed_block = ssh_config.remove_block(profiles.host_key_alias(name))
    removed = profiles.delete_profile(name)
    if not (removed or removed_block):
        raise NotFoundError(f"no host named {name!r}", "list them with `tether hosts`")
    return True
