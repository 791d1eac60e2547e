"""The one exception tree of tether.

Every error tether raises on purpose is a ``TetherError``: it carries a one-line ``message``
for the user and, where there is one, a ``hint`` saying what to do next. The tree is split by
who failed (the caller, the peer or network, a busy resource, the local system) so the CLI can
map a class to an exit code in one table (``tether.cli.main.EXIT_CODES``) and the HTTP API to a
status code in one handler.

Third-party exceptions are translated where they enter tether (``raise X(...) from exc``);
they never reach the user as a traceback.
"""

from __future__ import annotations


class TetherError(Exception):
    """Root of every error tether raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


# -- the caller got something wrong -------------------------------------------------------


class UsageError(TetherError):
    """The caller passed something invalid: a bad flag value, name, path or combination."""


class ConfigError(UsageError):
    """A configuration file (ssh config, tether.toml, a profile) is malformed."""


class AlreadyExistsError(UsageError):
    """Creating something that exists already (a key, a profile) without asking to overwrite."""


class InUseError(UsageError):
    """Removing something another part still uses (a key the ssh config names)."""


class NotFoundError(TetherError):
    """A named thing (key, host profile, snapshot, sandbox, remote resource) does not exist."""


# -- trust and authentication -------------------------------------------------------------


class AuthError(TetherError):
    """Credentials were refused: a bad token, a rejected key, a wrong or spent pairing code."""


class PermissionDeniedError(AuthError):
    """Credentials were accepted but lack the right (e.g. a forge token without a scope)."""


class HostKeyMismatchError(AuthError):
    """A host presented a key other than the one pinned for it. Never bypassed silently."""


# -- the peer, the network or a remote service failed -------------------------------------


class PeerError(TetherError):
    """The other side (a gateway, sshd, a store, a forge API) failed or answered nonsense."""


class ConnectError(PeerError):
    """The other side could not be reached, or the connection dropped."""


class ProtocolError(PeerError):
    """The other side spoke a wire format or version tether does not understand."""


class RateLimitedError(PeerError):
    """The other side asked us to slow down; ``retry_after`` says when to try again."""

    def __init__(self, message: str, hint: str | None = None, retry_after: float | None = None):
        super().__init__(message, hint)
        self.retry_after = retry_after


class IntegrityError(PeerError):
    """Stored data does not match its checksum or its structure (corruption, tampering)."""


# -- a resource is busy -------------------------------------------------------------------


class LockedError(TetherError):
    """A resource is held by another process (a repository lock, a running workspace)."""


# -- this machine lacks something ---------------------------------------------------------


class SystemDependencyError(TetherError):
    """A system part (sshd, bwrap, rsync, a kernel feature) is missing; the hint installs it."""


class EnforcementError(SystemDependencyError):
    """A requested protection cannot be enforced here; tether refuses instead of weakening it."""


class LocalIOError(TetherError):
    """A local file operation failed: a read-only home, a full disk, a permission bit."""


class SecretStoreError(TetherError):
    """The OS keyring is missing, locked or refuses an operation, where the user forced it
    (``TETHER_SECRETS_BACKEND=keyring``); an automatically chosen keyring falls back to the
    0600 file instead of raising this."""


# -- partial results and interruption -----------------------------------------------------


class PartialFailureError(TetherError):
    """Some items of a batch failed; ``problems`` lists them, the rest succeeded."""

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message, hint)
        self.problems = list(problems or [])


class DeadlineError(PeerError):
    """An operation did not finish within its time limit."""


class SyncHaltedError(TetherError):
    """A sync session stopped on purpose to protect data: a sync root vanished or was emptied,
    which would otherwise be mirrored to the other side as "delete everything"."""
