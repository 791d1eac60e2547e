"""tether-managed ``Host`` blocks in ``~/.ssh/config``.

A managed block is the text between two marker lines::

    # >>> tether: NAME >>>
    Host HOST
        HostName 127.0.0.1
        User root
    # <<< tether: NAME <<<

Everything outside the markers belongs to the user and is preserved byte for byte. A new block
goes before the user's first ``Host *`` or ``Match`` section (OpenSSH uses the first value it
finds for an option, so a catch-all above our block would override it), else at the end. The
text transformations are pure functions over ``str``; the I/O shell reads the file strictly
(valid UTF-8, no NUL bytes, balanced markers) and writes it atomically with a ``.bak`` backup.
The format is described in docs/ssh-config-blocks.md.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether import paths
from tether.errors import ConfigError, LocalIOError, NotFoundError, UsageError

BEGIN = "# >>> tether: {name} >>>"
END = "# <<< tether: {name} <<<"
_BEGIN_RE = re.compile(r"^# >>> tether: (\S+) >>>[ \t]*\r?\n?$")
_END_RE = re.compile(r"^# <<< tether: (\S+) <<<[ \t]*\r?\n?$")
_MARKER_PREFIX_RE = re.compile(r"^\s*#\s*(>>>|<<<)\s*tether\b")
_KEYWORD_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*?)\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_OPTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
INDENT = "    "


@dataclass(frozen=True)
class ManagedBlock:
    name: str  # block id, e.g. "tether-laptop" or "forge-github"
    host: str  # the Host pattern(s), e.g. "tether-laptop"
    options: tuple[tuple[str, str], ...] = field(default=())

    def option(self, key: str) -> str | None:
        for k, v in self.options:
            if k.lower() == key.lower():
                return v
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "host": self.host,
                "options": [[k, v] for k, v in self.options]}


@dataclass(frozen=True)
class _Span:
    """Where one managed block sits: lines[start:end] (end exclusive, markers included)."""

    name: str
    start: int
    end: int


# -- pure: validation, rendering, parsing -------------------------------------------------


def validate_block(block: ManagedBlock) -> ManagedBlock:
    if not _NAME_RE.match(block.name):
        raise UsageError(f"block name {block.name!r} is not allowed",
                         "use letters, digits and . _ - @ + (no spaces)")
    _check_value("Host", block.host)
    if not block.host.strip():
        raise UsageError("a Host block needs a host pattern")
    for key, value in block.options:
        if not _OPTION_RE.match(key) or key.lower() in ("host", "match", "include"):
            raise UsageError(f"{key!r} is not an ssh config option a block can hold")
        _check_value(key, value)
    return block


def _check_value(key: str, value: str) -> None:
    # A shell command (ProxyCommand...) is written raw, so it may hold its own quotes.
    forbidden = "\n\r\x00" if key.lower() in _RAW_OPTIONS else "\n\r\x00\""
    if not value or any(c in value for c in forbidden) or value.lstrip().startswith("#"):
        raise UsageError(f"the value {value!r} for {key} cannot be written to an ssh config",
                         "values must be non-empty, one line, without double quotes")


# OpenSSH reads these as the raw rest of the line (a shell command): quotes would reach the
# shell and break the command (`"/x/tether proxy NAME": No such file or directory`).
_RAW_OPTIONS = frozenset({"proxycommand", "localcommand", "remotecommand",
                          "knownhostscommand"})


def _quote(value: str, key: str = "") -> str:
    if key.lower() in _RAW_OPTIONS:
        return value
    return f'"{value}"' if any(c.isspace() for c in value) else value


def render_block(block: ManagedBlock) -> str:
    """The block's text, markers included, ending in a newline."""
    lines = [BEGIN.format(name=block.name), f"Host {block.host}"]
    lines += [f"{INDENT}{key} {_quote(value, key)}" for key, value in block.options]
    lines.append(END.format(name=block.name))
    return "\n".join(lines) + "\n"


def check_text(data: bytes, where: str = "the ssh config") -> str:
    """Decode a config file strictly: ConfigError for binary data or invalid UTF-8."""
    if b"\x00" in data:
        raise ConfigError(f"{where} contains NUL bytes (binary data?)",
                          "fix or move the file away; tether did not change it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not valid UTF-8 (byte {exc.start})",
                          "fix or move the file away; tether did not change it") from exc


def find_spans(lines: list[str]) -> list[_Span]:
    """Locate managed blocks; ConfigError on unbalanced, nested or duplicate markers."""
    spans: list[_Span] = []
    open_name: str | None = None
    open_at = 0
    for i, line in enumerate(lines):
        begin, end = _BEGIN_RE.match(line), _END_RE.match(line)
        if begin:
            if open_name is not None:
                raise ConfigError(f"line {i + 1}: tether block {begin.group(1)!r} starts inside "
                                  f"block {open_name!r}", _MARKER_HINT)
            open_name, open_at = begin.group(1), i
        elif end:
            if open_name != end.group(1):
                raise ConfigError(f"line {i + 1}: end marker of tether block {end.group(1)!r} "
                                  f"without its start marker", _MARKER_HINT)
            if any(s.name == open_name for s in spans):
                raise ConfigError(f"tether block {open_name!r} appears twice", _MARKER_HINT)
            spans.append(_Span(open_name, open_at, i + 1))
            open_name = None
        elif _MARKER_PREFIX_RE.match(line):
            raise ConfigError(f"line {i + 1}: malformed tether marker: {line.strip()!r}",
                              _MARKER_HINT)
    if open_name is not None:
        raise ConfigError(f"line {open_at + 1}: tether block {open_name!r} has no end marker",
                          _MARKER_HINT)
    return spans


_MARKER_HINT = ("fix the '# >>> tether: NAME >>>' / '# <<< tether: NAME <<<' lines by hand "
                "(or `tether keys reset --ssh-config`); tether did not change the file")


def parse_block(lines: list[str], span: _Span) -> ManagedBlock:
    host = ""
    options: list[tuple[str, str]] = []
    for line in lines[span.start + 1:span.end - 1]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _KEYWORD_RE.match(line)
        if not m:
            raise ConfigError(f"tether block {span.name!r}: cannot read {line.strip()!r}",
                              _MARKER_HINT)
        key = m.group(1)
        value = m.group(2) if key.lower() in _RAW_OPTIONS else _unquote(m.group(2))
        if key.lower() == "host" and not host:
            host = value
        else:
            options.append((key, value))
    return ManagedBlock(span.name, host, tuple(options))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_blocks(text: str) -> list[ManagedBlock]:
    lines = text.splitlines(keepends=True)
    return [parse_block(lines, s) for s in find_spans(lines)]


def _insertion_index(lines: list[str], spans: list[_Span]) -> int | None:
    """Index before the user's first catch-all (`Host *` or `Match`), or None for the end."""
    inside = set()
    for s in spans:
        inside.update(range(s.start, s.end))
    for i, line in enumerate(lines):
        if i in inside:
            continue
        m = _KEYWORD_RE.match(line)
        if not m:
            continue
        key = m.group(1).lower()
        if key == "match" or (key == "host" and "*" in m.group(2).split()):
            # Keep the user's comment lines that introduce that section with it.
            while i > 0 and (i - 1) not in inside and lines[i - 1].lstrip().startswith("#"):
                i -= 1
            return i
    return None


def upsert_text(text: str, block: ManagedBlock) -> str:
    """``text`` with ``block`` added, or replaced in place when a block of that name exists."""
    validate_block(block)
    lines = text.splitlines(keepends=True)
    spans = find_spans(lines)
    rendered = render_block(block)
    for s in spans:
        if s.name == block.name:
            return "".join(lines[:s.start]) + rendered + "".join(lines[s.end:])
    at = _insertion_index(lines, spans)
    if at is not None:
        # One blank line after the block separates it from the user's section; remove_text
        # takes it away again, so add + remove gives back the original bytes.
        return "".join(lines[:at]) + rendered + "\n" + "".join(lines[at:])
    if not text:
        return rendered
    head = text if text.endswith("\n") else text + "\n"
    return head + "\n" + rendered


def remove_text(text: str, name: str) -> tuple[str, bool]:
    """``text`` without the block ``name`` (and the blank line that separated it)."""
    lines = text.splitlines(keepends=True)
    for s in find_spans(lines):
        if s.name != name:
            continue
        start, end = s.start, s.end
        if end < len(lines) and not lines[end].strip():
            end += 1
        elif end == len(lines) and start > 0 and not lines[start - 1].strip():
            start -= 1
        return "".join(lines[:start]) + "".join(lines[end:]), True
    return text, False


def strip_all_blocks(text: str) -> str:
    for block in parse_blocks(text):
        text, _ = remove_text(text, block.name)
    return text


def identity_hosts(text: str, identity: Path, home: Path) -> list[str]:
    """Host patterns whose section names ``identity`` as an IdentityFile (pure)."""
    target = os.path.normpath(str(identity))
    found: list[str] = []
    current = "(global)"
    for line in text.splitlines():
        m = _KEYWORD_RE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        key, value = m.group(1).lower(), _unquote(m.group(2))
        if key in ("host", "match"):
            current = value
        elif key == "identityfile":
            expanded = value.replace("%d", str(home))
            if expanded.startswith("~/") or expanded == "~":
                expanded = str(home) + expanded[1:]
            if os.path.normpath(expanded) == target and current not in found:
                found.append(current)
    return found


# -- the I/O shell --------------------------------------------------------------------------


def config_path() -> Path:
    return paths.ssh_dir() / "config"


def _target(path: Path | None) -> Path:
    path = Path(path) if path is not None else config_path()
    # A symlinked config (dotfile managers) is edited where it points, not replaced.
    return path.resolve() if path.is_symlink() else path


def read_config(path: Path | None = None) -> str:
    path = _target(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a directory, not an ssh config file") from exc
    except OSError as exc:
        raise LocalIOError(f"could not read {path}: {exc.strerror}") from exc
    text = check_text(data, str(path))
    find_spans(text.splitlines(keepends=True))
    return text


def _write(path: Path, text: str, backup: bool) -> Path | None:
    paths.ensure_dir(path.parent, paths.PRIVATE_DIR_MODE)
    return paths.atomic_write(path, text, mode=paths.PRIVATE_FILE_MODE,
                              backup=backup and path.exists())


def upsert_block(block: ManagedBlock, config_path: Path | None = None) -> Path | None:
    """Add or replace ``block``; returns the backup path (None if nothing changed or new)."""
    path = _target(config_path)
    old = read_config(path)
    new = upsert_text(old, block)
    if new == old and path.exists():
        return None
    return _write(path, new, backup=True)


def remove_block(name: str, config_path: Path | None = None) -> bool:
    path = _target(config_path)
    old = read_config(path)
    new, removed = remove_text(old, name)
    if removed:
        _write(path, new, backup=True)
    return removed


def list_blocks(config_path: Path | None = None) -> list[ManagedBlock]:
    return parse_blocks(read_config(config_path))


def get_block(name: str, config_path: Path | None = None) -> ManagedBlock:
    for block in list_blocks(config_path):
        if block.name == name:
            return block
    raise NotFoundError(f"no tether block named {name!r} in the ssh config",
                        "see `tether keys config list`")


def hosts_using_identity(identity: Path, config_path: Path | None = None) -> list[str]:
    """Host patterns in the whole config (managed or not) that use ``identity``."""
    return identity_hosts(read_config(config_path), Path(identity), Path.home())


def reset_config(config_path: Path | None = None, *, managed_only: bool = False) -> Path | None:
    """Empty the config (or drop only tether's blocks), keeping a timestamped backup.

    Returns the backup path, or None when there was no file.
    """
    path = _target(config_path)
    if not path.exists():
        return None
    if managed_only:
        new = strip_all_blocks(read_config(path))
    else:
        new = ""
    backup = backup_copy(path)
    _write(path, new, backup=False)
    return backup


def backup_copy(path: Path) -> Path:
    """Copy ``path`` to ``<path>.tether-<UTC timestamp>`` (mode kept) and return it."""
    import shutil

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = path.with_name(f"{path.name}.tether-{stamp}")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.tether-{stamp}-{n}")
    try:
        shutil.copy2(path, backup)
    except OSError as exc:
        raise LocalIOError(f"could not back up {path}: {exc.strerror}",
                           f"check that {path.parent} is writable") from exc
    return backup
