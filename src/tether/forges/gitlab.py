"""GitLab (gitlab.com and self-managed) REST API v4: the user and their SSH keys.

Endpoints: ``GET /api/v4/user``, ``GET /api/v4/user/keys`` (paginated: ``X-Next-Page``),
``POST /api/v4/user/keys`` {title, key} -> 201, ``DELETE /api/v4/user/keys/{id}`` -> 204.
Auth is the ``PRIVATE-TOKEN`` header. The base URL is the instance (``https://gitlab.com`` or
``https://gitlab.example.com``). A token without the ``api`` scope gets 403
``{"error": "insufficient_scope", "scope": "api"}``; a duplicate key gets 400 with
``{"message": {"key": ["has already been taken"]}}``; rate limits are 429 with ``Retry-After``.
"""

from __future__ import annotations

from tether.forges.base import (SPECS, Credentials, ForgeClient, ForgeUser, Provider,
                                RemoteKey, remote_key)

API = "/api/v4"


class GitLabClient(ForgeClient):
    spec = SPECS[Provider.GITLAB]

    def __init__(self, base_url: str, credentials: Credentials, **kw):
        base = base_url.rstrip("/")
        if base.endswith(API):
            base = base[: -len(API)]
        super().__init__(base, credentials, **kw)

    def auth_headers(self, credentials: Credentials) -> dict[str, str]:
        return {"PRIVATE-TOKEN": credentials.token}

    def missing_scope(self, response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        if isinstance(body, dict) and body.get("error") == "insufficient_scope":
            return str(body.get("scope") or "api")
        return None

    def whoami(self) -> ForgeUser:
        data = self.json(self.request("GET", f"{API}/user", what="reading your user"))
        return ForgeUser(str(data.get("username", "")), data.get("name"),
                         str(data.get("id", "")), data.get("email"))

    def list_keys(self) -> list[RemoteKey]:
        keys: list[RemoteKey] = []
        page: str | None = "1"
        while page:
            response = self.request("GET", f"{API}/user/keys",
                                    params={"per_page": 100, "page": page},
                                    what="listing your SSH keys")
            keys += [remote_key(k.get("id"), k.get("title"), k.get("key", ""),
                                k.get("created_at")) for k in self.json(response)]
            page = response.headers.get("X-Next-Page") or None
        return keys

    def add_key(self, title: str, key_line: str) -> RemoteKey:
        response = self.request("POST", f"{API}/user/keys",
                                json={"title": title, "key": key_line},
                                what="adding an SSH key")
        k = self.json(response)
        return remote_key(k.get("id"), k.get("title"), k.get("key", key_line),
                          k.get("created_at"))

    def delete_key(self, key_id: str) -> None:
        self.request("DELETE", f"{API}/user/keys/{key_id}", what=f"deleting SSH key {key_id}")
