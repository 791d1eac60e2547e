"""What every forge adapter shares: the provider table, typed values, HTTP error mapping.

Each adapter (github.py, gitlab.py, bitbucket.py) is a thin ``ForgeClient`` subclass that
knows its endpoints and auth header; this module turns HTTP answers into tether errors the
same way for all of them: 401 -> AuthError, 403 -> RateLimitedError when the forge says the
limit is spent, else PermissionDeniedError naming the missing scope, 400/409/422 "already" ->
AlreadyExistsError, 404 -> NotFoundError, 429 -> RateLimitedError with when to retry.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from tether.errors import (AlreadyExistsError, AuthError, ConnectError, DeadlineError,
                           NotFoundError, PeerError, PermissionDeniedError, ProtocolError,
                           RateLimitedError, UsageError)


class Provider(str, Enum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"


@dataclass(frozen=True)
class ProviderSpec:
    provider: Provider
    display: str
    default_base_url: str  # API root (GitHub) or instance URL (GitLab) or API host (Bitbucket)
    base_url_env: str
    token_env: str
    ssh_host: str  # the public SSH host for git
    token_help: str  # where to create a token and which scopes it needs
    keys_page: str  # where a person adds a key by hand


SPECS: dict[Provider, ProviderSpec] = {
    Provider.GITHUB: ProviderSpec(
        Provider.GITHUB, "GitHub", "https://api.github.com", "TETHER_GITHUB_API_URL",
        "GITHUB_TOKEN", "github.com",
        "create a token at https://github.com/settings/tokens (classic: scopes "
        "read:public_key, write:public_key, admin:public_key to delete; fine-grained: account "
        "permission 'Git SSH keys' read and write)",
        "https://github.com/settings/ssh/new"),
    Provider.GITLAB: ProviderSpec(
        Provider.GITLAB, "GitLab", "https://gitlab.com", "TETHER_GITLAB_URL", "GITLAB_TOKEN",
        "gitlab.com",
        "create a personal access token with the 'api' scope at "
        "<your GitLab>/-/user_settings/personal_access_tokens",
        "https://gitlab.com/-/user_settings/ssh_keys"),
    Provider.BITBUCKET: ProviderSpec(
        Provider.BITBUCKET, "Bitbucket", "https://api.bitbucket.org",
        "TETHER_BITBUCKET_API_URL", "BITBUCKET_API_TOKEN", "bitbucket.org",
        "create an Atlassian API token with scopes at "
        "https://id.atlassian.com/manage-profile/security/api-tokens (read:user:bitbucket, "
        "read:ssh-key:bitbucket, write:ssh-key:bitbucket, delete:ssh-key:bitbucket) and log in "
        "with your Atlassian account email",
        "https://bitbucket.org/account/settings/ssh-keys/"),
}


def parse_provider(name: str) -> Provider:
    try:
        return Provider(name.strip().lower())
    except ValueError:
        raise UsageError(f"unknown forge {name!r}",
                         f"use one of: {', '.join(p.value for p in Provider)}") from None


@dataclass(frozen=True)
class Credentials:
    token: str = field(repr=False)
    email: str | None = None  # Bitbucket: the Atlassian account email (basic auth user)


@dataclass(frozen=True)
class ForgeUser:
    login: str
    name: str | None
    id: str
    email: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RemoteKey:
    id: str
    title: str
    key: str  # "<type> <base64>" as the forge returns it
    fingerprint: str  # SHA256:..., computed locally from ``key``
    created_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def remote_key(id: Any, title: str | None, key: str, created_at: str | None) -> RemoteKey:
    from tether.ssh.keys import fingerprint_of_public_key

    try:
        fp = fingerprint_of_public_key(key)
    except Exception:  # a forge may list key types we cannot parse; show the rest
        fp = ""
    return RemoteKey(str(id), title or "", key.strip(), fp, created_at)


def validate_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL", "e.g. https://gitlab.example.com")
    return url.rstrip("/")


# -- HTTP -----------------------------------------------------------------------------------


class ForgeClient:
    """One authenticated session against one forge API. Subclasses set ``spec`` and paths."""

    spec: ProviderSpec

    def __init__(self, base_url: str, credentials: Credentials, *, timeout: float = 20.0):
        import httpx

        self.base_url = validate_base_url(base_url)
        self.credentials = credentials
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers=self.auth_headers(credentials) | {
                                      "User-Agent": "tether"},
                                  auth=self.basic_auth(credentials), follow_redirects=False)

    # hooks -------------------------------------------------------------------------------
    def auth_headers(self, credentials: Credentials) -> dict[str, str]:
        return {}

    def basic_auth(self, credentials: Credentials) -> tuple[str, str] | None:
        return None

    def missing_scope(self, response) -> str | None:
        """What the forge says the token lacks (a scope name), from headers or body."""
        return None

    def rate_limit_reset(self, response) -> float | None:
        """Seconds until the limit resets when ``response`` is a rate-limit refusal, else None."""
        return _retry_after_header(response)

    # the four operations -----------------------------------------------------------------
    def whoami(self) -> ForgeUser:
        raise NotImplementedError

    def list_keys(self) -> list[RemoteKey]:
        raise NotImplementedError

    def add_key(self, title: str, key_line: str) -> RemoteKey:
        raise NotImplementedError

    def delete_key(self, key_id: str) -> None:
        raise NotImplementedError

    # plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ForgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, *, what: str, **kw):
        """Send one request; return the response if 2xx, else raise the mapped TetherError."""
        import httpx

        try:
            response = self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise DeadlineError(f"{self.spec.display} did not answer in time ({what})",
                                "check your network and try again") from exc
        except httpx.HTTPError as exc:
            raise ConnectError(f"could not reach {self.spec.display} at {self.base_url}: {exc}",
                               f"check the URL (--base-url or {self.spec.base_url_env}) "
                               "and your network") from exc
        if response.is_success:
            return response
        raise self.error_for(response, what)

    def json(self, response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(f"{self.spec.display} answered with something that is not "
                                f"JSON (HTTP {response.status_code})") from exc

    def error_for(self, response, what: str) -> Exception:
        display, status = self.spec.display, response.status_code
        detail = _body_message(response)
        if status == 401:
            return AuthError(f"{display} refused the token ({what}): {detail or 'bad credentials'}",
                             f"log in again with a valid token: tether git login "
                             f"{self.spec.provider.value}; {self.spec.token_help}")
        if status in (403, 429):
            wait = self.rate_limit_reset(response)
            if wait is not None or status == 429:
                return _rate_limited(display, wait)
        if status == 403:
            scope = self.missing_scope(response)
            if scope:
                return PermissionDeniedError(
                    f"the {display} token lacks the scope {scope} ({what})", self.spec.token_help)
            return PermissionDeniedError(f"{display} denied {what}: {detail or 'forbidden'}",
                                         self.spec.token_help)
        if status in (400, 409, 422) and "already" in (detail or response.text).lower():
            return AlreadyExistsError(f"{display}: that key is already registered "
                                      f"({detail or 'key is already in use'})",
                                      "a key can be on one account only; it may be yours "
                                      "already (tether git keys list), else use another key")
        if status == 404:
            return NotFoundError(f"{display}: not found ({what})",
                                 "check the id (tether git keys list) and the base URL")
        if status >= 500:
            return PeerError(f"{display} failed ({what}): HTTP {status}",
                             "the forge has a problem; try again later")
        return PeerError(f"{display} refused {what}: HTTP {status} {detail or ''}".rstrip(),
                         "check the token's permissions and the base URL (--base-url)")


def _rate_limited(display: str, wait: float | None) -> RateLimitedError:
    if wait is None:
        return RateLimitedError(f"{display} rate limit reached", "wait a minute and try again")
    wait = max(0.0, wait)
    at = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + wait))
    return RateLimitedError(f"{display} rate limit reached; retry in {int(wait + 0.999)} s",
                            f"try again after {at}", retry_after=wait)


def _retry_after_header(response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None


def _body_message(response) -> str | None:
    """The human message from a forge error body ({"message": ...} or {"error": {...}})."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    msg = body.get("message")
    errors = body.get("errors")
    if isinstance(errors, list):  # GitHub 422: [{"message": "key is already in use"}]
        parts = [e.get("message") for e in errors if isinstance(e, dict) and e.get("message")]
        if parts:
            return "; ".join(parts)
    if isinstance(msg, dict):  # GitLab 400: {"message": {"key": ["has already been taken"]}}
        return "; ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                         for k, v in msg.items())
    if isinstance(msg, str):
        return msg
    err = body.get("error")
    if isinstance(err, dict):  # Bitbucket: {"type": "error", "error": {"message": ...}}
        text = str(err.get("message") or "")
        fields = err.get("fields")
        if isinstance(fields, dict):
            text += " " + "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in fields.items())
        return text.strip() or None
    if isinstance(err, str):
        return body.get("error_description") or err
    return None
