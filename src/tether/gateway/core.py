"""The gateway's pure core: tokens, pairing codes, rate limits, request validation.

No I/O here: the state files (gateway/state.py) and the ASGI app (gateway/app.py) call these
with data and a clock. Secrets are only ever compared as SHA-256 digests with
``hmac.compare_digest``; the plain token or code is never stored.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections import deque
from dataclasses import dataclass, field, replace

from tether.ssh.keys import SHA256_FINGERPRINT, same_fingerprint

PROTOCOL_VERSION = 1
TOKEN_BYTES = 32
CODE_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o/1/l/i: codes get read aloud
CODE_LENGTH = 12
PUBLIC_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                    "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
                    "sk-ecdsa-sha2-nistp256@openssh.com")
_CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    return "tt_" + secrets.token_urlsafe(TOKEN_BYTES)


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def new_workspace_id() -> str:
    return "ws_" + secrets.token_hex(8)


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 512:
        return None
    return value


def token_matches(token: str | None, digests: list[str]) -> bool:
    """Whether ``token`` is one of the stored digests; always walks every digest."""
    if not token:
        return False
    candidate = digest(token).encode()
    found = False
    for d in digests:
        found |= hmac.compare_digest(candidate, d.encode())
    return found


class Redeem(enum.Enum):
    OK = "ok"
    WRONG = "wrong"  # no such code: HTTP 401
    SPENT = "spent"  # used or expired: HTTP 410
    # the code is valid but the client expects another host key: HTTP 409, the code is kept
    KEY_MISMATCH = "key-mismatch"


@dataclass(frozen=True)
class CodeEntry:
    digest: str
    expires_at: int
    used_at: int | None = None

    def to_dict(self) -> dict:
        return {"digest": self.digest, "expires_at": self.expires_at, "used_at": self.used_at}

    @classmethod
    def from_dict(cls, d: dict) -> CodeEntry:
        return cls(str(d["digest"]), int(d["expires_at"]),
                   None if d.get("used_at") is None else int(d["used_at"]))


# Spent codes are remembered this long after expiry so a late retry still gets "spent" (410).
CODE_MEMORY_S = 24 * 3600


def redeem(entries: list[CodeEntry], code: str, now: int) -> tuple[Redeem, list[CodeEntry]]:
    """Redeem ``code`` once; returns the outcome and the new entry list (pruned)."""
    candidate = digest(code).encode()
    outcome = Redeem.WRONG
    out: list[CodeEntry] = []
    for e in entries:
        if hmac.compare_digest(candidate, e.digest.encode()):
            if e.used_at is not None or now >= e.expires_at:
                outcome = Redeem.SPENT
            else:
                outcome = Redeem.OK
                e = replace(e, used_at=now)
        if now < e.expires_at + CODE_MEMORY_S:
            out.append(e)
    return outcome, out


def peek(entries: list[CodeEntry], code: str, now: int) -> Redeem:
    """What `redeem` would answer for ``code``, without using it up."""
    outcome, _ = redeem(entries, code, now)
    return outcome


def validate_public_key(line: str) -> str:
    """A bare ``type base64 [comment]`` OpenSSH public key line, normalized to ``type base64``.

    Rejects options (``command=...``), newlines and anything whose blob does not name its own
    type, so nothing but one key can reach authorized_keys.
    """
    if not isinstance(line, str) or len(line) > 16384:
        raise ValueError("public_key must be one OpenSSH public key line")
    line = line.strip()
    if "\n" in line or "\r" in line:
        raise ValueError("public_key must be one OpenSSH public key line")
    parts = line.split()
    if len(parts) < 2 or parts[0] not in PUBLIC_KEY_TYPES:
        raise ValueError("public_key is not an OpenSSH public key of a supported type")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        inner = blob[4:4 + n].decode()
    except (binascii.Error, struct.error, UnicodeDecodeError) as exc:
        raise ValueError("public_key has a malformed key blob") from exc
    if inner != parts[0]:
        raise ValueError("public_key's blob does not match its type")
    return f"{parts[0]} {parts[1]}"


@dataclass(frozen=True)
class PairRequest:
    workspace_id: str
    code: str
    public_key: str  # normalized
    client_name: str
    # the host key fingerprint the client's connection string names; None from older clients
    host_key_fingerprint: str | None = None




def parse_pair_request(data: object) -> PairRequest:
    """Validate the JSON body of ``POST /.tether/pair``; ``ValueError`` says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    if data.get("v") != PROTOCOL_VERSION:
        raise ValueError(f"unsupported protocol version {data.get('v')!r}")
    fields = {}
    for name in ("workspace_id", "code", "public_key", "client_name"):
        value = data.get(name)
        if not isinstance(value, str) or not value or len(value) > 16384:
            raise ValueError(f"{name} must be a non-empty string")
        fields[name] = value
    if not _CLIENT_NAME_RE.match(fields["client_name"]):
        raise ValueError("client_name must be letters, digits, '.', '_', '@' or '-'")
    if len(fields["code"]) > 128 or len(fields["workspace_id"]) > 64:
        raise ValueError("code or workspace_id is too long")
    fields["public_key"] = validate_public_key(fields["public_key"])
    expected = data.get("host_key_fingerprint")
    if expected is not None and (not isinstance(expected, str)
                                 or not SHA256_FINGERPRINT.match(expected)):
        raise ValueError("host_key_fingerprint must be SHA256: and 43 base64 characters")
    return PairRequest(**fields, host_key_fingerprint=expected)


def fingerprint_matches(expected: str | None, actual: str) -> bool:
    """Whether the client's expected fingerprint (None: it did not say) is ``actual``."""
    return expected is None or same_fingerprint(expected, actual)


@dataclass
class RateLimiter:
    """Sliding-window limits per client and overall; ``check`` records an attempt."""

    per_client: int
    overall: int
    window_s: float
    _client_hits: dict[str, deque[float]] = field(default_factory=dict)
    _all_hits: deque[float] = field(default_factory=deque)

    def check(self, client: str, now: float) -> float | None:
        """None if allowed (and counted), else the seconds to wait."""
        cutoff = now - self.window_s
        hits = self._client_hits.setdefault(client, deque())
        for q in (hits, self._all_hits):
            while q and q[0] <= cutoff:
                q.popleft()
        if len(hits) >= self.per_client:
            return max(0.0, hits[0] + self.window_s - now)
        if len(self._all_hits) >= self.overall:
            return max(0.0, self._all_hits[0] + self.window_s - now)
        hits.append(now)
        self._all_hits.append(now)
        if len(self._client_hits) > 10_000:  # bound memory under a spray of addresses
            for key in [k for k, q in self._client_hits.items() if not q]:
                del self._client_hits[key]
        return None
