"""The connection string `tether up` prints and `tether connect` reads.

``tether1:`` followed by base64url (no padding) of a compact JSON object. It carries what a
laptop needs to pair once and to trust the host: the gateway URL, the workspace id, a one-time
pairing code with its expiry, and the host key fingerprint. Format spec:
docs/connection-string.md. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from tether.errors import UsageError
from tether.ssh.keys import SHA256_FINGERPRINT

PREFIX = "tether1:"
VERSION = 1
_MAX_LEN = 4096
_WORKSPACE_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_CODE_RE = re.compile(r"^[A-Za-z0-9_-]{6,128}$")
_HINT = "copy the whole line `tether up` printed (it starts with tether1:)"


@dataclass(frozen=True)
class ConnectionString:
    url: str  # gateway base URL, e.g. "https://x.trycloudflare.com" or "http://127.0.0.1:8765"
    workspace_id: str
    pairing_code: str
    expires_at: int  # unix seconds
    host_key_fingerprint: str  # "SHA256:..."

    def __post_init__(self) -> None:
        _validate(self)

    def encode(self) -> str:
        payload = {"v": VERSION, "u": self.url, "w": self.workspace_id, "c": self.pairing_code,
                   "e": self.expires_at, "k": self.host_key_fingerprint}
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> ConnectionString:
        """Parse a connection string; ``UsageError`` on anything malformed."""
        text = (text or "").strip()
        if not text.startswith(PREFIX):
            if re.match(r"^tether\d+:", text):
                raise UsageError("this connection string is from a newer tether",
                                 "upgrade tether on this machine (pip install -U tether)")
            raise UsageError("not a tether connection string", _HINT)
        body = text[len(PREFIX):]
        if len(body) > _MAX_LEN or not re.fullmatch(r"[A-Za-z0-9_-]+", body or "!"):
            raise UsageError("the connection string is malformed", _HINT)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            data = json.loads(raw)
        except (binascii.Error, ValueError) as exc:
            raise UsageError("the connection string is malformed (truncated?)", _HINT) from exc
        if not isinstance(data, dict):
            raise UsageError("the connection string is malformed", _HINT)
        if data.get("v") != VERSION:
            raise UsageError(f"connection string version {data.get('v')!r} is not supported",
                             "use the same tether version on both machines")
        try:
            return cls(url=data["u"], workspace_id=data["w"], pairing_code=data["c"],
                       expires_at=data["e"], host_key_fingerprint=data["k"])
        except KeyError as exc:
            raise UsageError(f"the connection string lacks the field {exc.args[0]!r}",
                             _HINT) from exc


def _validate(cs: ConnectionString) -> None:
    if not isinstance(cs.url, str) or not valid_gateway_url(cs.url):
        raise UsageError(f"the gateway URL {cs.url!r} is not an http(s) URL", _HINT)
    if not isinstance(cs.workspace_id, str) or not _WORKSPACE_RE.match(cs.workspace_id):
        raise UsageError("the workspace id in the connection string is malformed", _HINT)
    if not isinstance(cs.pairing_code, str) or not _CODE_RE.match(cs.pairing_code):
        raise UsageError("the pairing code in the connection string is malformed", _HINT)
    if isinstance(cs.expires_at, bool) or not isinstance(cs.expires_at, int) \
            or cs.expires_at <= 0:
        raise UsageError("the expiry in the connection string is malformed", _HINT)
    if not isinstance(cs.host_key_fingerprint, str) \
            or not SHA256_FINGERPRINT.match(cs.host_key_fingerprint):
        raise UsageError("the host key fingerprint in the connection string is malformed", _HINT)


def valid_gateway_url(url: str) -> bool:
    """An http(s) URL with a host and no query, fragment or credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        return False
    del port
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and not parts.query and not parts.fragment and parts.username is None
            and not any(c.isspace() for c in url))


def ws_url(base_url: str, path: str) -> str:
    """The ws(s):// URL of ``path`` on the gateway at ``base_url``."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"
