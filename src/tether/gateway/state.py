"""The host's persistent workspace state: identity, pairing codes, clients and their tokens.

Layout under ``<state>/host`` (docs/gateway-protocol.md, "Host state"):
``workspace.json`` (workspace id), ``pairing.json`` (digests of one-time codes),
``clients.json`` (one entry per paired client with the digest of its access token),
``authorized_keys`` (sshd's), the host key, and ``run.json`` while a workspace runs.
Several processes touch these (the running gateway, `tether host pair-code`), so every
read-modify-write holds an exclusive ``flock`` on ``state.lock``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from tether import paths
from tether.errors import ConfigError
from tether.gateway import core

STATE_VERSION = 1
DEFAULT_CODE_TTL_S = 15 * 60


def host_dir() -> Path:
    return paths.state_dir() / "host"


class HostState:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or host_dir()
        self.authorized_keys = self.dir / "authorized_keys"
        self._digest_cache: tuple[float, list[str]] | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with paths.locked(paths.ensure_dir(self.dir) / "state.lock"):
            yield

    def _read(self, name: str, default: dict) -> dict:
        path = self.dir / name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return default
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"the host state file {path} is unreadable: {exc}",
                              "move it away; `tether up` recreates it (clients re-pair)"
                              ) from exc
        if not isinstance(data, dict) or data.get("v") != STATE_VERSION:
            raise ConfigError(f"the host state file {path} has an unknown format version")
        return data

    def _write(self, name: str, data: dict) -> None:
        paths.atomic_write(self.dir / name, json.dumps({**data, "v": STATE_VERSION}, indent=1)
                           + "\n", mode=0o600)

    def workspace_id(self) -> str:
        """The workspace id, made once and kept: it names this workspace to its clients."""
        with self.locked():
            data = self._read("workspace.json", {})
            if "workspace_id" not in data:
                data = {"workspace_id": core.new_workspace_id(), "created_at": int(time.time())}
                self._write("workspace.json", data)
            return str(data["workspace_id"])

    def issue_code(self, ttl_s: int = DEFAULT_CODE_TTL_S, now: int | None = None
                   ) -> tuple[str, int]:
        """A new one-time pairing code and its expiry; only its digest is stored."""
        now = int(time.time()) if now is None else now
        code = core.new_code()
        expires = now + ttl_s
        with self.locked():
            entries = self._codes()
            entries.append(core.CodeEntry(core.digest(code), expires))
            self._write("pairing.json", {"codes": [e.to_dict() for e in entries]})
        return code, expires

    def _codes(self) -> list[core.CodeEntry]:
        data = self._read("pairing.json", {"codes": []})
        return [core.CodeEntry.from_dict(d) for d in data.get("codes", [])]

    def pair(self, request: core.PairRequest, now: int | None = None, *,
             host_key_fingerprint: str | None = None) -> tuple[core.Redeem, str | None]:
        """Redeem the code; on success authorize the key and return a new access token.

        With ``host_key_fingerprint`` (this host's), a request expecting another one gets
        ``KEY_MISMATCH`` when its code is valid, and the code stays unused: a connection
        string with a wrong fingerprint must not cost the code or authorize a key.
        """
        now = int(time.time()) if now is None else now
        with self.locked():
            if host_key_fingerprint is not None and not core.fingerprint_matches(
                    request.host_key_fingerprint, host_key_fingerprint):
                outcome = core.peek(self._codes(), request.code, now)
                return (core.Redeem.KEY_MISMATCH if outcome is core.Redeem.OK else outcome,
                        None)
            outcome, entries = core.redeem(self._codes(), request.code, now)
            self._write("pairing.json", {"codes": [e.to_dict() for e in entries]})
            if outcome is not core.Redeem.OK:
                return outcome, None
            token = core.new_token()
            clients = self._read("clients.json", {"clients": []})
            clients["clients"].append({"name": request.client_name, "paired_at": now,
                                       "public_key": request.public_key,
                                       "token_digest": core.digest(token)})
            # authorized_keys first: a token without a key is useless, a key without a token
            # is unreachable through the gateway.
            self._append_key(f"{request.public_key} tether:{request.client_name}")
            self._write("clients.json", clients)
            self._digest_cache = None
            return outcome, token

    def _append_key(self, line: str) -> None:
        try:
            existing = self.authorized_keys.read_text()
        except FileNotFoundError:
            existing = ""
        key = " ".join(line.split()[:2])
        if any(" ".join(l.split()[:2]) == key for l in existing.splitlines()):
            return
        if existing and not existing.endswith("\n"):
            existing += "\n"
        paths.atomic_write(self.authorized_keys, existing + line + "\n", mode=0o600)

    def clients(self) -> list[dict]:
        data = self._read("clients.json", {"clients": []})
        return [{k: v for k, v in c.items() if k != "token_digest"} for c in data["clients"]]

    def token_digests(self) -> list[str]:
        """Digests of every valid access token (cached by the file's mtime)."""
        path = self.dir / "clients.json"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if self._digest_cache is None or self._digest_cache[0] != mtime:
            data = self._read("clients.json", {"clients": []})
            self._digest_cache = (mtime, [c["token_digest"] for c in data["clients"]])
        return self._digest_cache[1]

    # -- the running instance -------------------------------------------------------------

    @property
    def run_file(self) -> Path:
        return self.dir / "run.json"

    def write_run(self, info: dict) -> None:
        self._write("run.json", info)

    def read_run(self) -> dict | None:
        data = self._read("run.json", {})
        return data or None

    def clear_run(self, pid: int | None = None) -> None:
        """Remove run.json (only if it belongs to ``pid`` when given)."""
        with self.locked():
            data = self._read("run.json", {})
            if pid is None or data.get("pid") == pid:
                self.run_file.unlink(missing_ok=True)
