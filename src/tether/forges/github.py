"""GitHub (github.com and GitHub Enterprise Server) REST API: the user and their SSH keys.

Endpoints (REST API version 2022-11-28): ``GET /user``, ``GET /user/keys`` (paginated by
``Link``), ``POST /user/keys`` {title, key} -> 201, ``DELETE /user/keys/{id}`` -> 204. Auth is
``Authorization: Bearer <token>``. The base URL is the API root: ``https://api.github.com``,
or ``https://HOST/api/v3`` for Enterprise Server. A 403 with ``X-RateLimit-Remaining: 0``
is a spent rate limit (reset at ``X-RateLimit-Reset``, epoch seconds); other 403s name the
scope from ``X-Accepted-OAuth-Scopes`` (classic tokens) or ``X-Accepted-GitHub-Permissions``
(fine-grained tokens).
"""

from __future__ import annotations

import time

from tether.errors import PermissionDeniedError
from tether.forges.base import (SPECS, Credentials, ForgeClient, ForgeUser, Provider,
                                RemoteKey, remote_key)


class GitHubClient(ForgeClient):
    spec = SPECS[Provider.GITHUB]

    def auth_headers(self, credentials: Credentials) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials.token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28"}

    def rate_limit_reset(self, response) -> float | None:
        retry = response.headers.get("Retry-After")  # secondary rate limits
        if retry is not None:
            return super().rate_limit_reset(response)
        if response.headers.get("X-RateLimit-Remaining") == "0":
            reset = response.headers.get("X-RateLimit-Reset")
            try:
                return float(reset) - time.time() if reset else 60.0
            except ValueError:
                return 60.0
        return None

    def missing_scope(self, response) -> str | None:
        accepted = _scopes(response.headers.get("X-Accepted-OAuth-Scopes", ""))
        have = _scopes(response.headers.get("X-OAuth-Scopes", ""))
        if accepted and not accepted & have:
            wanted = " or ".join(sorted(accepted))
            return f"{wanted} (the token has: {', '.join(sorted(have)) or 'none'})"
        permissions = response.headers.get("X-Accepted-GitHub-Permissions", "").strip()
        if permissions and response.status_code == 403:
            return f"permission {permissions}"
        return None

    def error_for(self, response, what: str) -> Exception:
        # A classic token without the scope gets 404, not 403, on /user/keys (GitHub hides
        # what it will not show); the accepted-scopes header tells the two 404s apart.
        if response.status_code == 404:
            scope = self.missing_scope(response)
            if scope:
                return PermissionDeniedError(f"the GitHub token lacks the scope {scope} ({what})",
                                             self.spec.token_help)
        return super().error_for(response, what)

    def whoami(self) -> ForgeUser:
        data = self.json(self.request("GET", "/user", what="reading your user"))
        return ForgeUser(str(data.get("login", "")), data.get("name"), str(data.get("id", "")),
                         data.get("email"))

    def list_keys(self) -> list[RemoteKey]:
        keys: list[RemoteKey] = []
        url: str | None = "/user/keys?per_page=100"
        while url:
            response = self.request("GET", url, what="listing your SSH keys")
            keys += [remote_key(k.get("id"), k.get("title"), k.get("key", ""),
                                k.get("created_at")) for k in self.json(response)]
            url = response.links.get("next", {}).get("url")
        return keys

    def add_key(self, title: str, key_line: str) -> RemoteKey:
        response = self.request("POST", "/user/keys", json={"title": title, "key": key_line},
                                what="adding an SSH key")
        k = self.json(response)
        return remote_key(k.get("id"), k.get("title"), k.get("key", key_line),
                          k.get("created_at"))

    def delete_key(self, key_id: str) -> None:
        self.request("DELETE", f"/user/keys/{key_id}", what=f"deleting SSH key {key_id}")


def _scopes(header: str) -> set[str]:
    return {s.strip() for s in header.split(",") if s.strip()}
