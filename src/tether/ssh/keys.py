"""SSH key pairs in ``~/.ssh``: generate, list, inspect, delete.

Keys are written in the OpenSSH formats ``ssh-keygen`` reads: the private key as
``-----BEGIN OPENSSH PRIVATE KEY-----`` (bcrypt-KDF + AES-256-CTR when a passphrase is given),
mode 0600; the public key as one ``<type> <base64> <comment>`` line in ``<name>.pub``, mode 0644.

The rules for a valid request (name, type, bits) are pure functions, checked before anything
is written, so bad input never leaves a half-written key behind.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from tether import paths
from tether.errors import (AlreadyExistsError, ConfigError, InUseError, LocalIOError,
                           NotFoundError, SystemDependencyError, UsageError)

DEFAULT_TYPE = "ed25519"
# type -> (allowed bits, default bits)
KEY_TYPES: dict[str, tuple[tuple[int, ...], int]] = {
    "ed25519": ((256,), 256),
    "rsa": ((2048, 3072, 4096), 3072),
    "ecdsa": ((256, 384, 521), 256),
}
_TYPE_ALIASES = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa", "ec": "ecdsa"}
# Files that live in ~/.ssh beside keys: a key must never be named like them, or
# `generate --overwrite` would replace the user's config.
RESERVED_NAMES = frozenset({"config", "known_hosts", "known_hosts.old", "authorized_keys",
                            "authorized_keys2", "environment", "rc"})
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+-]{0,127}$")
_PUBKEY_TYPES = {
    "ssh-ed25519": "ed25519",
    "ssh-rsa": "rsa",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
}
_OPENSSH_MAGIC = b"openssh-key-v1\x00"


@dataclass(frozen=True)
class KeyInfo:
    """One key pair as found on disk."""

    name: str
    path: Path
    public_path: Path
    type: str  # "ed25519" | "rsa" | "ecdsa" (or the raw OpenSSH type for others)
    bits: int
    fingerprint: str  # "SHA256:..."
    comment: str
    encrypted: bool

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        data["public_path"] = str(self.public_path)
        return data


# -- pure validation ----------------------------------------------------------------------


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a key file in ~/.ssh, else raise UsageError."""
    if "/" in name or "\\" in name or "\x00" in name:
        raise UsageError(f"key name {name!r} contains a path separator",
                         "give a plain name like 'id_ed25519' or 'github'; keys live in ~/.ssh")
    if name.endswith(".pub"):
        raise UsageError(f"key name {name!r} ends in .pub", "give the name without .pub")
    if not _NAME_RE.match(name):
        raise UsageError(f"key name {name!r} is not allowed",
                         "use letters, digits and . _ - @ + (at most 128, not starting "
                         "with . or -)")
    if name in RESERVED_NAMES:
        raise UsageError(f"key name {name!r} is the name of an OpenSSH file in ~/.ssh",
                         "choose another name")
    return name


def normalize_type_and_bits(key_type: str, bits: int | None) -> tuple[str, int]:
    """Check a key type and size; return the canonical type and the bits to use."""
    canonical = _TYPE_ALIASES.get(key_type.lower(), key_type.lower())
    if canonical not in KEY_TYPES:
        raise UsageError(f"unknown key type {key_type!r}",
                         f"use one of: {', '.join(KEY_TYPES)}")
    allowed, default = KEY_TYPES[canonical]
    if bits is None:
        return canonical, default
    if bits not in allowed:
        raise UsageError(f"{bits} bits is not a size for {canonical} keys",
                         f"{canonical} keys take: {', '.join(map(str, allowed))}")
    return canonical, bits


# -- pure parsing of OpenSSH formats ------------------------------------------------------


def _split_public_line(line: str) -> tuple[str, bytes, str]:
    """Split ``<type> <base64> [comment]`` into its parts; ConfigError if it is not one."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise ConfigError("not an OpenSSH public key line (expected '<type> <base64> [comment]')")
    key_type, b64 = parts[0], parts[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ConfigError("the public key's base64 part is not valid base64") from exc
    if len(blob) < 4:
        raise ConfigError("the public key blob is too short")
    (n,) = struct.unpack(">I", blob[:4])
    if blob[4:4 + n].decode("ascii", "replace") != key_type:
        raise ConfigError(f"the public key blob does not match its type {key_type!r}")
    return key_type, blob, parts[2] if len(parts) > 2 else ""


def fingerprint_of_blob(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# what fingerprint_of_public_key returns: "SHA256:" and 43 unpadded base64 characters
SHA256_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def same_fingerprint(a: str, b: str) -> bool:
    """Whether two fingerprints are equal, compared in constant time."""
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def fingerprint_of_public_key(line: str) -> str:
    """The ``SHA256:...`` fingerprint of an OpenSSH public key line (as ``ssh-keygen -l``)."""
    _, blob, _ = _split_public_line(line)
    return fingerprint_of_blob(blob)


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    (n,) = struct.unpack(">I", blob[offset:offset + 4])
    start = offset + 4
    if start + n > len(blob):
        raise ConfigError("truncated SSH key blob")
    return blob[start:start + n], start + n


def describe_public_key(line: str) -> tuple[str, int, str, str]:
    """(type, bits, fingerprint, comment) of a public key line."""
    ssh_type, blob, comment = _split_public_line(line)
    return (_PUBKEY_TYPES.get(ssh_type, ssh_type), _bits_of(ssh_type, blob),
            fingerprint_of_blob(blob), comment)


def _bits_of(ssh_type: str, blob: bytes) -> int:
    if ssh_type == "ssh-ed25519":
        return 256
    if ssh_type.startswith("ecdsa-sha2-nistp"):
        return int(ssh_type.removeprefix("ecdsa-sha2-nistp"))
    if ssh_type == "ssh-rsa":
        _, off = _read_string(blob, 0)
        _, off = _read_string(blob, off)  # e
        n, _ = _read_string(blob, off)
        return int.from_bytes(n, "big").bit_length()
    return 0


def private_key_is_encrypted(data: bytes) -> bool:
    """Whether a private key file (OpenSSH or PEM) needs a passphrase to load."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
        try:
            raw = base64.b64decode(body)
        except ValueError as exc:
            raise ConfigError("the private key's body is not valid base64") from exc
        if not raw.startswith(_OPENSSH_MAGIC):
            raise ConfigError("not an OpenSSH private key")
        cipher, _ = _read_string(raw, len(_OPENSSH_MAGIC))
        return cipher != b"none"
    return "ENCRYPTED" in text


# -- key generation (pure: returns bytes) -------------------------------------------------


def build_key_pair(key_type: str, bits: int, comment: str,
                   passphrase: str | None) -> tuple[bytes, bytes]:
    """Generate a key; return (private OpenSSH PEM bytes, public line bytes with newline)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        curve = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}[bits]
        private = ec.generate_private_key(curve())
    from cryptography.exceptions import UnsupportedAlgorithm

    encryption = (ser.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else ser.NoEncryption())
    try:
        private_pem = private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                            encryption)
    except UnsupportedAlgorithm as exc:  # the bcrypt KDF of encrypted OpenSSH keys
        raise SystemDependencyError("encrypting the key needs the bcrypt package",
                                    "pip install bcrypt (a tether dependency)") from exc
    public = private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    if comment:
        public += b" " + comment.encode()
    return private_pem, public + b"\n"


def default_comment() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "user"
    return f"{user}@{socket.gethostname()}"


# -- the I/O shell --------------------------------------------------------------------------


def _directory(directory: Path | None) -> Path:
    return Path(directory) if directory is not None else paths.ssh_dir()


def check_new_key(name: str, *, type: str = DEFAULT_TYPE, bits: int | None = None,
                  comment: str | None = None, directory: Path | None = None,
                  overwrite: bool = False) -> tuple[str, int, Path, Path]:
    """Everything `generate_key` checks before writing: (type, bits, private, public path)."""
    validate_name(name)
    key_type, key_bits = normalize_type_and_bits(type, bits)
    if comment is not None and ("\n" in comment or "\r" in comment):
        raise UsageError("a key comment must be one line",
                         "pass a single-line comment with -C (it ends up in the .pub file)")
    folder = _directory(directory)
    private_path, public_path = folder / name, folder / f"{name}.pub"
    if not overwrite:
        for p in (private_path, public_path):
            if p.exists() or p.is_symlink():
                raise AlreadyExistsError(f"{p} exists already",
                                         "pick another name, or pass --overwrite to replace it")
    return key_type, key_bits, private_path, public_path


def generate_key(name: str, *, type: str = DEFAULT_TYPE, bits: int | None = None,
                 comment: str | None = None, passphrase: str | None = None,
                 directory: Path | None = None, overwrite: bool = False) -> KeyInfo:
    """Create ``<directory>/<name>`` (0600) and ``<name>.pub`` (0644).

    Raises UsageError for a bad name/type/bits and AlreadyExistsError when either file exists
    and ``overwrite`` is false; in both cases nothing is written.
    """
    key_type, key_bits, private_path, public_path = check_new_key(
        name, type=type, bits=bits, comment=comment, directory=directory, overwrite=overwrite)
    folder = private_path.parent
    private_pem, public_line = build_key_pair(
        key_type, key_bits, default_comment() if comment is None else comment, passphrase)
    paths.ensure_dir(folder, paths.PRIVATE_DIR_MODE)
    # Public first: if the private write fails, no private key exists without its public
    # half; a stray .pub is harmless and `generate --overwrite` replaces it.
    public_existed = public_path.exists()
    paths.atomic_write(public_path, public_line, mode=paths.PUBLIC_FILE_MODE)
    try:
        paths.atomic_write(private_path, private_pem, mode=paths.PRIVATE_FILE_MODE)
    except LocalIOError:
        if not public_existed:  # leave nothing half-written behind
            public_path.unlink(missing_ok=True)
        raise
    return _info(name, private_path, public_path)


def _info(name: str, private_path: Path, public_path: Path) -> KeyInfo:
    try:
        line = public_path.read_text(errors="replace")
        private_data = private_path.read_bytes()
    except OSError as exc:
        raise LocalIOError(f"could not read the key {name}: {exc.strerror}") from exc
    key_type, bits, fingerprint, comment = describe_public_key(line)
    return KeyInfo(name, private_path, public_path, key_type, bits, fingerprint, comment,
                   private_key_is_encrypted(private_data))


def _looks_like_private_key(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    return head.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in head


def list_keys(directory: Path | None = None) -> list[KeyInfo]:
    """Every key pair in ``directory``: a private key file with its ``.pub`` beside it."""
    folder = _directory(directory)
    if not folder.is_dir():
        return []
    found = []
    for pub in sorted(folder.glob("*.pub")):
        private = pub.with_suffix("")
        if not private.is_file() or not _looks_like_private_key(private):
            continue
        try:
            found.append(_info(private.name, private, pub))
        except ConfigError:
            continue  # a file we cannot parse is not a key tether manages; list the rest
    return found


def get_key(name: str, directory: Path | None = None) -> KeyInfo:
    validate_name(name)
    folder = _directory(directory)
    private, public = folder / name, folder / f"{name}.pub"
    if not private.is_file() or not public.is_file():
        raise NotFoundError(f"no key named {name!r} in {folder}",
                            "see `tether keys list`, or create it with `tether keys generate`")
    try:
        return _info(name, private, public)
    except ConfigError as exc:
        raise ConfigError(f"{public} is not an OpenSSH public key: {exc.message}") from exc


def public_key_line(name: str, directory: Path | None = None) -> str:
    """The public key line of ``name`` (ready to paste into a forge), without newline."""
    info = get_key(name, directory)
    return info.public_path.read_text().strip()


def resolve_key_path(name_or_path: str, directory: Path | None = None) -> Path:
    """A key given by name (in ~/.ssh) or by path -> the private key path."""
    if "/" in name_or_path or "\\" in name_or_path:
        path = Path(name_or_path).expanduser()
        if path.suffix == ".pub":
            path = path.with_suffix("")
        if not path.is_file():
            raise NotFoundError(f"no private key at {path}",
                                "give a key name from `tether keys list` or an existing path")
        return path.absolute()
    return get_key(name_or_path, directory).path


def delete_key(name: str, *, force: bool = False, directory: Path | None = None,
               config_path: Path | None = None) -> None:
    """Delete both files of ``name``. InUseError if the ssh config names it, unless ``force``."""
    info = get_key(name, directory)
    if not force:
        from tether.ssh.config import config_path as default_config, hosts_using_identity

        users = hosts_using_identity(info.path, config_path or default_config())
        if users:
            raise InUseError(f"the ssh config still uses the key {name} (Host {', '.join(users)})",
                             "remove those blocks first (`tether keys config remove NAME`), "
                             "or pass --force")
    for p in (info.path, info.public_path):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalIOError(f"could not delete {p}: {exc.strerror}",
                               f"check that {p.parent} is writable (not a read-only mount) "
                               "and run the command again") from exc
