"""The IDE password: generated or given, kept in tether.secrets, handed out only as a hash.

code-server gets ``HASHED_PASSWORD`` (an argon2id hash made here with argon2-cffi), never the
password. The plain password lives in the keyring or the 0600 secrets file under the key
``ide:password`` so `tether ide password` can show it again; it is never logged.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

from tether import secrets
from tether.errors import NotFoundError, UsageError

SECRET_KEY = "ide:password"
ENV = "TETHER_IDE_PASSWORD"
MIN_LENGTH = 12
# 20 symbols from a 54-letter alphabet without look-alikes (0/O, 1/l/I): ~115 bits.
ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
GENERATED_LENGTH = 20


def generate() -> str:
    """A strong random password, grouped in fives so it can be read out and typed."""
    chars = "".join(_random.choice(ALPHABET) for _ in range(GENERATED_LENGTH))
    return "-".join(chars[i:i + 5] for i in range(0, GENERATED_LENGTH, 5))


def validate(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise UsageError(f"the IDE password must have at least {MIN_LENGTH} characters",
                         "leave it out and tether generates a strong one")
    if any(ch in password for ch in "\r\n\0"):
        raise UsageError("the IDE password must be one line")
    return password


def hash_password(password: str) -> str:
    """An argon2id hash in the PHC format code-server's argon2 module verifies."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def verify(hashed: str, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return PasswordHasher().verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def stored() -> str | None:
    return secrets.get_secret(SECRET_KEY)


def show() -> str:
    """The stored password (for `tether ide password`)."""
    value = stored()
    if value is None:
        raise NotFoundError("no IDE password has been set yet",
                            "`tether up --ide` makes one, or set it with "
                            "`tether ide password --set`")
    return value


def set_password(password: str) -> None:
    secrets.set_secret(SECRET_KEY, validate(password))


def read_given(file: Path | None = None, prompt: bool = False) -> str:
    """A password the user gives: from ``file`` ("-" = stdin), ``TETHER_IDE_PASSWORD`` or a
    prompt (in that order)."""
    source = secrets.SecretSource("IDE password", file=file, env=ENV, prompt=prompt)
    return validate(secrets.read_secret(source))


def use_file(file: Path) -> None:
    """`up --ide --ide-password-file F`: the password from ``F`` ("-" = stdin), checked and
    stored, so `ensure` hands it to the IDE (a detached `up` reads the store too).

    Refused together with ``TETHER_IDE_PASSWORD``: `ensure` prefers the environment, and
    silently using one of two passwords that may differ would lock the user out.
    """
    if os.environ.get(ENV):
        raise UsageError(f"--ide-password-file and ${ENV} both give the IDE password",
                         f"use one: unset {ENV}, or leave out --ide-password-file")
    set_password(read_given(file, prompt=False))


def ensure() -> tuple[str, bool]:
    """The password `up --ide` uses: ``TETHER_IDE_PASSWORD`` if set (and stored), else the
    stored one (``--ide-password-file`` stores it first), else a new generated one (stored).
    Returns (password, generated_now)."""
    given = os.environ.get(ENV)
    if given:
        validate(given)
        if stored() != given:
            secrets.set_secret(SECRET_KEY, given)
        return given, False
    current = stored()
    if current:
        return current, False
    new = generate()
    secrets.set_secret(SECRET_KEY, new)
    return new, True


def reset() -> str:
    """Replace the stored password with a new generated one."""
    new = generate()
    secrets.set_secret(SECRET_KEY, new)
    return new
