"""Bitbucket Cloud REST API 2.0: the user and their SSH keys.

Auth is HTTP basic with the Atlassian account email and an API token (app passwords are
being withdrawn). Endpoints: ``GET /2.0/user`` (gives the account ``uuid``),
``GET /2.0/users/{uuid}/ssh-keys`` (paginated: ``next`` in the body),
``POST /2.0/users/{uuid}/ssh-keys`` {key, label} -> 201,
``DELETE /2.0/users/{uuid}/ssh-keys/{key_id}`` -> 204. Errors are
``{"type": "error", "error": {"message": ..., "detail": ...}}``; a token without a scope gets
403 with ``detail.required`` naming the scopes it needs.
"""

from __future__ import annotations

from urllib.parse import quote

from tether.errors import UsageError
from tether.forges.base import (SPECS, Credentials, ForgeClient, ForgeUser, Provider,
                                RemoteKey, remote_key)


class BitbucketClient(ForgeClient):
    spec = SPECS[Provider.BITBUCKET]

    def __init__(self, base_url: str, credentials: Credentials, **kw):
        if not credentials.email:
            raise UsageError("Bitbucket needs your Atlassian account email with the API token",
                             "pass --email or set BITBUCKET_EMAIL")
        base = base_url.rstrip("/")
        if base.endswith("/2.0"):
            base = base[:-4]
        super().__init__(base, credentials, **kw)
        self._uuid: str | None = None

    def basic_auth(self, credentials: Credentials) -> tuple[str, str] | None:
        return (credentials.email or "", credentials.token)

    def missing_scope(self, response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        err = body.get("error") if isinstance(body, dict) else None
        detail = err.get("detail") if isinstance(err, dict) else None
        if isinstance(detail, dict) and detail.get("required"):
            return ", ".join(map(str, detail["required"]))
        return None

    def whoami(self) -> ForgeUser:
        data = self.json(self.request("GET", "/2.0/user", what="reading your user"))
        self._uuid = str(data.get("uuid", ""))
        return ForgeUser(str(data.get("username") or data.get("nickname") or ""),
                         data.get("display_name"), self._uuid, self.credentials.email)

    def _keys_path(self) -> str:
        if self._uuid is None:
            self.whoami()
        return f"/2.0/users/{quote(self._uuid or '', safe='')}/ssh-keys"

    def list_keys(self) -> list[RemoteKey]:
        keys: list[RemoteKey] = []
        url: str | None = self._keys_path() + "?pagelen=100"
        while url:
            data = self.json(self.request("GET", url, what="listing your SSH keys"))
            keys += [remote_key(k.get("uuid"), k.get("label"), k.get("key", ""),
                                k.get("created_on")) for k in data.get("values", [])]
            url = data.get("next")
        return keys

    def add_key(self, title: str, key_line: str) -> RemoteKey:
        response = self.request("POST", self._keys_path(),
                                json={"key": key_line, "label": title},
                                what="adding an SSH key")
        k = self.json(response)
        return remote_key(k.get("uuid"), k.get("label"), k.get("key", key_line),
                          k.get("created_on"))

    def delete_key(self, key_id: str) -> None:
        self.request("DELETE", f"{self._keys_path()}/{quote(key_id, safe='')}",
                     what=f"deleting SSH key {key_id}")
