"""Pinned host keys in an OpenSSH ``known_hosts`` file.

tether pins a host's key under an alias (``HostKeyAlias``, e.g. ``tether-laptop``), never
under a tunnel hostname that changes every session. A line is ``<hosts> <type> <base64>
[comment]``; ``<hosts>`` is a comma list of names or one hashed ``|1|salt|hmac`` entry; lines
starting with ``@cert-authority`` / ``@revoked`` are kept untouched. tether writes its pins as
``<alias> <type> <base64> tether-pin``: the comment field marks the line as tether's, so a reset
can remove tether's pins and nothing else. The pure functions work on text; the I/O shell
writes atomically (0600) and keeps a backup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from tether import paths
from tether.errors import ConfigError, LocalIOError

# The comment field of every pin tether writes (OpenSSH ignores it): what makes a line tether's.
PIN_MARK = "tether-pin"


def known_hosts_path() -> Path:
    return paths.ssh_dir() / "known_hosts"


def _hashed_match(entry: str, alias: str) -> bool:
    parts = entry.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    got = hmac.new(salt, alias.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(got, expected)


def _host_field_names(hosts: str) -> list[str]:
    return [h for h in hosts.split(",") if h]


def _matches(hosts: str, alias: str) -> bool:
    if hosts.startswith("|1|"):
        return _hashed_match(hosts, alias)
    return alias in _host_field_names(hosts)


def _check_alias(alias: str) -> None:
    if not alias or any(c.isspace() or c in ",#" for c in alias):
        raise ConfigError(f"{alias!r} cannot be a known_hosts host name")


def normalize_key_line(key_line: str) -> str:
    """``<type> <base64>`` of an OpenSSH public key line (comment dropped), validated."""
    from tether.ssh.keys import fingerprint_of_public_key

    fingerprint_of_public_key(key_line)  # raises ConfigError if it is not a key line
    key_type, b64 = key_line.split()[:2]
    return f"{key_type} {b64}"


def remove_text(text: str, alias: str) -> tuple[str, int]:
    """``text`` without ``alias``: whole lines for it alone, the name dropped from lists."""
    out: list[str] = []
    removed = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "@")):
            out.append(line)
            continue
        hosts, _, rest = stripped.partition(" ")
        if not _matches(hosts, alias):
            out.append(line)
            continue
        removed += 1
        names = [] if hosts.startswith("|1|") else [h for h in _host_field_names(hosts)
                                                   if h != alias]
        if names:
            out.append(",".join(names) + " " + rest + "\n")
    return "".join(out), removed


def add_text(text: str, alias: str, key_line: str) -> str:
    """``text`` with ``alias`` pinned to exactly ``key_line`` (older pins for it replaced)."""
    _check_alias(alias)
    entry = f"{alias} {normalize_key_line(key_line)} {PIN_MARK}\n"
    text, _ = remove_text(text, alias)
    if text and not text.endswith("\n"):
        text += "\n"
    return text + entry


def is_pin(line: str) -> bool:
    """Whether ``line`` is a pin tether wrote (``<hosts> <type> <base64> tether-pin``)."""
    fields = line.split()
    return (len(fields) == 4 and fields[3] == PIN_MARK
            and not fields[0].startswith(("#", "@")))


def remove_pins_text(text: str) -> tuple[str, int]:
    """``text`` without tether's pins (every other line kept as it is), and how many went."""
    kept = [line for line in text.splitlines(keepends=True) if not is_pin(line)]
    return "".join(kept), len(text.splitlines()) - len(kept)


def find_text(text: str, alias: str) -> list[str]:
    """``<type> <base64>`` of every key pinned for ``alias``."""
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "@")):
            continue
        fields = stripped.split()
        if len(fields) >= 3 and _matches(fields[0], alias):
            found.append(f"{fields[1]} {fields[2]}")
    return found


# -- I/O shell ------------------------------------------------------------------------------


def _read(path: Path) -> str:
    from tether.ssh.config import check_text

    try:
        return check_text(path.read_bytes(), str(path))
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise LocalIOError(f"could not read {path}: {exc.strerror}") from exc


def add_known_host(path: Path | None, alias: str, key_line: str) -> None:
    """Pin ``alias`` to ``key_line`` in ``path`` (default ~/.ssh/known_hosts); idempotent."""
    path = Path(path) if path is not None else known_hosts_path()
    old = _read(path)
    new = add_text(old, alias, key_line)
    if new != old:
        paths.atomic_write(path, new, mode=paths.PRIVATE_FILE_MODE, backup=path.exists())


def remove_known_host(path: Path | None, alias: str) -> int:
    """Drop every pin for ``alias``; returns how many entries were removed."""
    path = Path(path) if path is not None else known_hosts_path()
    old = _read(path)
    new, removed = remove_text(old, alias)
    if removed:
        paths.atomic_write(path, new, mode=paths.PRIVATE_FILE_MODE, backup=True)
    return removed


def find_known_host(path: Path | None, alias: str) -> list[str]:
    path = Path(path) if path is not None else known_hosts_path()
    return find_text(_read(path), alias)


def reset_known_hosts(path: Path | None = None, *, managed_only: bool = False) -> Path | None:
    """Empty the file (or, ``managed_only``, drop only tether's pins: lines marked
    ``tether-pin``), keeping a timestamped backup (returned; None if there was no file)."""
    from tether.ssh.config import backup_copy

    path = Path(path) if path is not None else known_hosts_path()
    if not path.exists():
        return None
    new = remove_pins_text(_read(path))[0] if managed_only else ""
    backup = backup_copy(path)
    paths.atomic_write(path, new, mode=paths.PRIVATE_FILE_MODE)
    return backup
