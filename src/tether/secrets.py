"""Secrets: where they come from and where they are kept.

A secret (a forge token, store credentials, the IDE password) enters tether from a file named
by a ``--...-file`` option, an environment variable, or a hidden prompt, never from argv, where
``ps`` shows it to every user. It is kept in the OS keyring when a real backend works, else in
a 0600 JSON file under the config dir. Nothing here prints a secret.

``TETHER_SECRETS_BACKEND=file|keyring`` forces a backend (tests use ``file``). Unforced, the
keyring is used while it works and the file takes over whenever it fails (no backend, a
locked keyring, one that reads but refuses writes); a forced keyring that fails is a
``SecretStoreError`` with a hint, never a silent switch to the file.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tether import paths
from tether.errors import ConfigError, LocalIOError, SecretStoreError, UsageError

SERVICE = "tether"


class SecretBackend(Protocol):
    name: str

    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str) -> None: ...
    def delete(self, key: str) -> bool: ...


class FileBackend:
    """A JSON object in a 0600 file inside a 0700 directory."""

    name = "file"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.config_dir() / "secrets.json"

    def _load(self) -> dict[str, str]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LocalIOError(f"could not read {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the secrets file {self.path} is not valid JSON",
                              "restore it from a backup, or delete it and log in again") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"the secrets file {self.path} is not a JSON object")
        return data

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def set(self, key: str, value: str) -> None:
        data = self._load()
        data[key] = value
        paths.atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True),
                           mode=paths.PRIVATE_FILE_MODE)

    def delete(self, key: str) -> bool:
        data = self._load()
        if key not in data:
            return False
        del data[key]
        paths.atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True),
                           mode=paths.PRIVATE_FILE_MODE)
        return True


class KeyringBackend:
    """The OS keyring (Secret Service, macOS Keychain, Windows Credential Locker).

    Every failure of the keyring library is a ``SecretStoreError``: backends raise many kinds
    (``keyring.errors.*``, secretstorage's, jeepney's D-Bus errors, OSError), so the seam
    catches them all and says which operation failed.
    """

    name = "keyring"

    def __init__(self, forced: bool = False) -> None:
        self.forced = forced  # TETHER_SECRETS_BACKEND=keyring: the hint says how to undo it

    def get(self, key: str) -> str | None:
        try:
            import keyring

            return keyring.get_password(SERVICE, key)
        except Exception as exc:
            raise self._error("read", exc) from exc

    def set(self, key: str, value: str) -> None:
        try:
            import keyring

            keyring.set_password(SERVICE, key, value)
        except Exception as exc:
            raise self._error("store", exc) from exc

    def delete(self, key: str) -> bool:
        try:
            import keyring
            import keyring.errors

            try:
                keyring.delete_password(SERVICE, key)
            except keyring.errors.PasswordDeleteError:
                return False
        except Exception as exc:
            raise self._error("delete", exc) from exc
        return True

    def _error(self, action: str, exc: Exception) -> SecretStoreError:
        try:
            from keyring.errors import NoKeyringError
        except ImportError:  # keyring itself is broken: exc says so
            NoKeyringError = ()  # noqa: N806
        if isinstance(exc, NoKeyringError):
            what = "no OS keyring backend is available"
        else:  # the exception names the backend's problem, never the secret
            what = f"the OS keyring could not {action} the secret ({type(exc).__name__}: {exc})"
        if self.forced:
            return SecretStoreError(f"TETHER_SECRETS_BACKEND=keyring, but {what}",
                                    "set up and unlock a keyring (`tether doctor` says how), "
                                    "or unset TETHER_SECRETS_BACKEND to keep secrets in a "
                                    "0600 file")
        return SecretStoreError(what, "see `tether doctor` for the keyring check")


class AutoBackend:
    """The keyring while it works, else the 0600 file: what nobody forced.

    A write the keyring refuses goes to the file; reads and deletes look in both, so a secret
    stored while the keyring was away is still found (and a keyring write drops that copy).
    """

    name = "keyring"

    def __init__(self, keyring: SecretBackend | None = None,
                 file: FileBackend | None = None) -> None:
        self.keyring = keyring or KeyringBackend()
        self.file = file or FileBackend()

    def get(self, key: str) -> str | None:
        # A file copy is the newer one: a keyring write drops it, so it exists only when the
        # last write found the keyring away (an older keyring copy may still be there).
        value = self.file.get(key)
        if value is not None:
            return value
        try:
            return self.keyring.get(key)
        except SecretStoreError:
            return None

    def set(self, key: str, value: str) -> None:
        try:
            self.keyring.set(key, value)
        except SecretStoreError:
            self.file.set(key, value)
            return
        if self.file.path.exists():
            self.file.delete(key)  # an older copy would outlive a logout or a new token

    def delete(self, key: str) -> bool:
        try:
            removed = self.keyring.delete(key)
        except SecretStoreError:
            removed = False
        return self.file.delete(key) or removed


def keyring_status() -> tuple[bool, str]:
    """Whether a real keyring backend works here, and its name (or why not)."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception as exc:  # keyring raises many kinds on broken D-Bus setups
        return False, f"keyring unusable: {exc}"
    name = type(backend).__module__ + "." + type(backend).__name__
    if isinstance(backend, fail.Keyring) or "null" in name.lower():
        return False, "no keyring backend available"
    if "chainer" in name.lower() and not getattr(backend, "backends", None):
        return False, "no keyring backend available"
    try:
        backend.get_password(SERVICE, "__probe__")
    except Exception as exc:
        return False, f"{name} does not answer: {exc}"
    return True, name


def forced_backend() -> str | None:
    """'file' or 'keyring' when TETHER_SECRETS_BACKEND names one, None when it is unset."""
    forced = os.environ.get("TETHER_SECRETS_BACKEND", "").strip().lower()
    if forced and forced not in ("file", "keyring"):
        raise ConfigError(f"TETHER_SECRETS_BACKEND={forced!r} is not a backend",
                          "use 'file' or 'keyring', or unset it")
    return forced or None


def default_backend() -> SecretBackend:
    forced = forced_backend()
    if forced == "file":
        return FileBackend()
    if forced == "keyring":
        return KeyringBackend(forced=True)
    ok, _ = keyring_status()
    return AutoBackend() if ok else FileBackend()


def get_secret(key: str, backend: SecretBackend | None = None) -> str | None:
    return (backend or default_backend()).get(key)


def set_secret(key: str, value: str, backend: SecretBackend | None = None) -> None:
    if not value:
        raise UsageError("refusing to store an empty secret")
    (backend or default_backend()).set(key, value)


def delete_secret(key: str, backend: SecretBackend | None = None) -> bool:
    return (backend or default_backend()).delete(key)


def _read_secret_file(source: SecretSource) -> str:
    where = "stdin" if str(source.file) == "-" else str(source.file)
    try:
        if str(source.file) == "-":
            # The bytes, decoded strictly: a C-locale stdin would smuggle undecodable bytes in
            # as surrogates that fail later, far from here.
            raw = getattr(sys.stdin, "buffer", None)
            value = raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
        else:
            value = Path(source.file).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"could not read the {source.what} from {where}: {exc.strerror}",
                         "check the path (a readable file holding only the secret), or pass "
                         "'-' to read it from stdin") from exc
    except UnicodeDecodeError as exc:  # the message holds no secret bytes, only the offset
        raise UsageError(f"the {source.what} in {where} is not UTF-8 text (bad byte at "
                         f"offset {exc.start})",
                         "save it as plain UTF-8 text (a binary or UTF-16 file will not do)"
                         ) from exc
    return value.rstrip("\r\n")


@dataclass(frozen=True)
class SecretSource:
    """Where to read one secret from, in order: the file, the environment, a prompt."""

    what: str  # e.g. "GitHub token": used in the prompt and in errors
    file: Path | None = None
    env: str | None = None
    prompt: bool = True


def read_secret(source: SecretSource) -> str:
    """Read a secret from the first place ``source`` names that has one.

    A file is read whole with trailing newlines stripped ("-" reads stdin). A prompt is used
    only when stdin is a terminal; otherwise the error says how to pass the secret.
    """
    if source.file is not None:
        value = _read_secret_file(source)
        if not value:
            raise UsageError(f"{source.file} holds no {source.what}")
        return value
    if source.env and os.environ.get(source.env):
        return os.environ[source.env]
    if source.prompt and sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"{source.what}: ")
        if not value:
            raise UsageError(f"no {source.what} given")
        return value
    ways = []
    if source.env:
        ways.append(f"set {source.env}")
    ways.append("pass a file with the matching --...-file option")
    ways.append("or run in a terminal to be prompted")
    raise UsageError(f"no {source.what} given", ", ".join(ways))
