"""Forge accounts: log in (verify, then store the token), log out, and an authenticated client.

The token is kept with ``tether.secrets`` under ``forge:<provider>:token``; what is not secret
(the base URL used at login, the login name, the Bitbucket account email) goes to
``<config>/forges.json`` (0600). The environment wins over what is stored: ``GITHUB_TOKEN``,
``GITLAB_TOKEN``, ``BITBUCKET_API_TOKEN`` + ``BITBUCKET_EMAIL``; base URLs come from
``--base-url``, then ``TETHER_<FORGE>_..._URL``, then the login, then the public default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tether import paths, secrets
from tether.errors import AuthError, ConfigError, LocalIOError, UsageError
from tether.forges.base import (SPECS, Credentials, ForgeClient, ForgeUser, Provider,
                                RemoteKey, validate_base_url)

BITBUCKET_EMAIL_ENV = "BITBUCKET_EMAIL"


def secret_key(provider: Provider) -> str:
    return f"forge:{provider.value}:token"


def _meta_path() -> Path:
    return paths.config_dir() / "forges.json"


def _load_meta() -> dict:
    try:
        data = json.loads(_meta_path().read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LocalIOError(f"could not read {_meta_path()}: {exc.strerror}",
                           "check that the tether config dir is readable") from exc
    except ValueError as exc:
        raise ConfigError(f"{_meta_path()} is not valid JSON",
                          "delete it and log in again") from exc
    return data if isinstance(data, dict) else {}


def _save_meta(data: dict) -> None:
    paths.atomic_write(_meta_path(), json.dumps(data, indent=1, sort_keys=True),
                       mode=paths.PRIVATE_FILE_MODE)


def account_info(provider: Provider) -> dict:
    """What login remembered (base_url, login, email); {} when never logged in."""
    entry = _load_meta().get(provider.value)
    return entry if isinstance(entry, dict) else {}


def resolve_base_url(provider: Provider, base_url: str | None = None) -> str:
    spec = SPECS[provider]
    url = (base_url or os.environ.get(spec.base_url_env) or account_info(provider).get("base_url")
           or spec.default_base_url)
    return validate_base_url(url)


def client_class(provider: Provider) -> type[ForgeClient]:
    if provider is Provider.GITHUB:
        from tether.forges.github import GitHubClient
        return GitHubClient
    if provider is Provider.GITLAB:
        from tether.forges.gitlab import GitLabClient
        return GitLabClient
    from tether.forges.bitbucket import BitbucketClient
    return BitbucketClient


def load_credentials(provider: Provider) -> Credentials:
    """The environment's token if set, else the stored one; AuthError when there is none."""
    spec = SPECS[provider]
    email = None
    if provider is Provider.BITBUCKET:
        email = os.environ.get(BITBUCKET_EMAIL_ENV) or account_info(provider).get("email")
    token = os.environ.get(spec.token_env) or secrets.get_secret(secret_key(provider))
    if not token:
        raise AuthError(f"not logged in to {spec.display}",
                        f"run `tether git login {provider.value}` (or set {spec.token_env})")
    return Credentials(token, email)


def client_for(provider: Provider, base_url: str | None = None,
               credentials: Credentials | None = None) -> ForgeClient:
    return client_class(provider)(resolve_base_url(provider, base_url),
                                  credentials or load_credentials(provider))


def login(provider: Provider, token: str, *, email: str | None = None,
          base_url: str | None = None) -> ForgeUser:
    """Check ``token`` against the forge, then store it. Nothing is stored if it is refused."""
    if provider is Provider.BITBUCKET:
        email = email or os.environ.get(BITBUCKET_EMAIL_ENV)
        if not email or "@" not in email:
            raise UsageError("Bitbucket logs in with your Atlassian account email and an API "
                             "token", f"pass --email or set {BITBUCKET_EMAIL_ENV}")
    url = resolve_base_url(provider, base_url)
    with client_class(provider)(url, Credentials(token.strip(), email)) as client:
        user = client.whoami()
    secrets.set_secret(secret_key(provider), token.strip())
    meta = _load_meta()
    meta[provider.value] = {"base_url": url, "login": user.login,
                            **({"email": email} if email else {})}
    _save_meta(meta)
    return user


def logout(provider: Provider) -> bool:
    """Forget the stored token and account info; True if there was something to forget."""
    removed = secrets.delete_secret(secret_key(provider))
    meta = _load_meta()
    if meta.pop(provider.value, None) is not None:
        _save_meta(meta)
        removed = True
    return removed


def whoami(provider: Provider, base_url: str | None = None) -> ForgeUser:
    with client_for(provider, base_url) as client:
        return client.whoami()


def list_remote_keys(provider: Provider, base_url: str | None = None) -> list[RemoteKey]:
    with client_for(provider, base_url) as client:
        return client.list_keys()


def read_public_key(key: str) -> str:
    """A key given by name (in ~/.ssh) or path -> its public key line."""
    from tether.ssh.keys import fingerprint_of_public_key, public_key_line

    if "/" in key or "\\" in key:
        path = Path(key).expanduser()
        pub = path if path.suffix == ".pub" else path.with_name(path.name + ".pub")
        try:
            line = pub.read_text().strip()
        except OSError as exc:
            raise UsageError(f"could not read the public key {pub}: {exc.strerror}",
                             "give a key name from `tether keys list`, or the path of a key "
                             "whose .pub is beside it") from exc
    else:
        line = public_key_line(key)
    try:
        fingerprint_of_public_key(line)
    except ConfigError as exc:
        raise UsageError(f"{key} is not an OpenSSH public key: {exc.message}",
                         "give a key made by ssh-keygen or `tether keys generate`") from exc
    return line


def add_remote_key(provider: Provider, key: str, title: str,
                   base_url: str | None = None) -> RemoteKey:
    if not title.strip():
        raise UsageError("a key needs a title", "pass --title")
    line = read_public_key(key)
    with client_for(provider, base_url) as client:
        return client.add_key(title, line)


def delete_remote_key(provider: Provider, key_id: str, base_url: str | None = None) -> None:
    with client_for(provider, base_url) as client:
        client.delete_key(key_id)
