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
(valid UTF-8, no NUL bytes, balanced markers), has OpenSSH itself check every candidate
(``ssh -G -F``) and writes it atomically with a ``.bak`` backup, so tether never leaves a
config that makes every ``ssh`` fail. The format is described in docs/ssh-config-blocks.md.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
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


# -- pure: reading OpenSSH's complaint ------------------------------------------------------


@dataclass(frozen=True)
class Complaint:
    """What ``ssh -G`` said about a config it refused: the first bad line it named."""

    file: str | None
    line: int | None
    message: str


# "FILE line 2: Bad port 'x'." and "FILE: line 2: Bad configuration option: bogus"
_COMPLAINT_RE = re.compile(r"^(?P<file>.+?):? line (?P<line>\d+): (?P<message>.+)$")
_NOISE = ("terminating,", "Pseudo-terminal will not be allocated")


def parse_complaint(stderr: str) -> Complaint:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        m = _COMPLAINT_RE.match(line)
        if m:
            return Complaint(m.group("file"), int(m.group("line")),
                             m.group("message").rstrip("."))
    useful = [line for line in lines if not any(n in line for n in _NOISE)]
    return Complaint(None, None, (useful or lines or ["ssh -G failed"])[0].rstrip("."))


def _check_host(block: ManagedBlock | None) -> str:
    """A host for ``ssh -G``: the block's first literal pattern, so its section is applied."""
    for pattern in (block.host.split() if block else []):
        if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", pattern):
            return pattern
    return "tether-config-check.invalid"


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


# An Include argument -> the files it names, each as (label, text); labels name where a hit is.
IncludeLoader = Callable[[str], list[tuple[str, str]]]
_MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH


def identity_hosts(text: str, identity: Path, home: Path,
                   include: IncludeLoader | None = None) -> list[str]:
    """Host patterns whose section names ``identity`` as an IdentityFile (pure).

    With ``include``, ``Include`` lines are followed as OpenSSH does: an included file starts
    in the section the Include sits in, and its own Host/Match lines do not leak out of it.
    A hit in an included file is reported as ``PATTERN in FILE``.
    """
    found: list[str] = []
    _scan_identity(text, os.path.normpath(str(identity)), home, include, "(global)", "",
                   found, 0)
    return found


def _scan_identity(text: str, target: str, home: Path, include: IncludeLoader | None,
                   current: str, where: str, found: list[str], depth: int) -> None:
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
            label = current + where
            if os.path.normpath(expanded) == target and label not in found:
                found.append(label)
        elif key == "include" and include is not None and depth < _MAX_INCLUDE_DEPTH:
            for name, included in include(m.group(2)):
                _scan_identity(included, target, home, include, current, f" in {name}",
                               found, depth + 1)


# -- the I/O shell --------------------------------------------------------------------------


def include_files(argument: str, ssh_dir: Path, home: Path) -> list[Path]:
    """The files an ``Include`` argument names, as OpenSSH finds them: several paths may be
    given, ``~`` is the home, a relative path is under ``~/.ssh``, globs are expanded (sorted)
    and a pattern matching nothing names nothing."""
    import glob
    import shlex

    try:
        words = shlex.split(argument)
    except ValueError:  # unbalanced quotes: OpenSSH refuses the line; read it as plain words
        words = argument.split()
    files: list[Path] = []
    for word in words:
        if word.startswith("~/") or word == "~":
            word = str(home) + word[1:]
        elif not os.path.isabs(word):
            word = str(ssh_dir / word)
        files += [Path(p) for p in sorted(glob.glob(word)) if os.path.isfile(p)]
    return files


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


def openssh_complaint(text: str, directory: Path | None, host: str) -> Complaint | None:
    """What OpenSSH says against ``text`` as a user config, or None when it accepts it.

    The text goes to a temp file in ``directory`` (the config's own folder, ~/.ssh, where
    relative ``Include``s are resolved) and ``ssh -G -F`` reads it: ~5 ms, and the verdict is
    OpenSSH's own. None also when there is no ``ssh`` binary (nothing here would reject the
    file, and nothing would read it either), when the temp file cannot be made (the write
    that follows fails the same way and says so), or when ssh does not finish (a slow
    ``Match exec`` of the user's: their every ssh waits for it too).
    """
    import shutil
    import tempfile

    ssh = shutil.which("ssh")
    if ssh is None:
        return None
    try:
        fd, name = tempfile.mkstemp(prefix=".config.", suffix=".tether-check", dir=directory)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        complaint = _run_ssh_g(ssh, name, host)
    except OSError:
        return None
    finally:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
    if complaint is not None and complaint.file == name:
        complaint = Complaint(None, complaint.line, complaint.message)
    return complaint


def _run_ssh_g(ssh: str, config: str, host: str) -> Complaint | None:
    import subprocess

    try:
        # CanonicalizeHostname=no: no DNS lookups; a command-line option wins over the file.
        proc = subprocess.run([ssh, "-G", "-F", config, "-o", "CanonicalizeHostname=no", host],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace", timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return None if proc.returncode == 0 else parse_complaint(proc.stderr)


def _check_candidate(path: Path, old: str, new: str, change: str,
                     block: ManagedBlock | None = None) -> None:
    """Refuse to write ``new`` over ``path`` when OpenSSH rejects it; say whose fault it is."""
    host = _check_host(block)
    # No ~/.ssh yet: check in the temp dir rather than leave a new ~/.ssh behind a refusal.
    complaint = openssh_complaint(new, path.parent if path.parent.is_dir() else None, host)
    if complaint is None:
        return
    # Only on failure (the common path stays one ssh run): was the file refused already?
    # Checked in place, so the line numbers are the user's own.
    before = _run_ssh_g("ssh", str(path), host) if old.strip() else None
    if before is not None:
        file = before.file or str(path)
        where = f"line {before.line} of {file}" if before.line else file
        raise ConfigError(f"OpenSSH already refuses the ssh config ({where}: {before.message});"
                          " tether did not change it",
                          f"fix {where}, then run the command again")
    where = f" (line {complaint.line} of {complaint.file})" if complaint.file else ""
    raise ConfigError(f"OpenSSH refuses the ssh config with {change}: "
                      f"{complaint.message}{where}",
                      f"fix the option name or value (see `man ssh_config`); {path} was not "
                      "changed")


def upsert_block(block: ManagedBlock, config_path: Path | None = None) -> Path | None:
    """Add or replace ``block``; returns the backup path (None if nothing changed or new).

    ConfigError (nothing written) when OpenSSH would refuse the result, naming its complaint.
    """
    path = _target(config_path)
    old = read_config(path)
    new = upsert_text(old, block)
    if new == old and path.exists():
        return None
    _check_candidate(path, old, new, f"the block {block.name}", block)
    return _write(path, new, backup=True)


def remove_block(name: str, config_path: Path | None = None) -> bool:
    path = _target(config_path)
    old = read_config(path)
    new, removed = remove_text(old, name)
    if removed:
        _check_candidate(path, old, new, f"the block {name} removed")
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
    """Host patterns in the whole config (managed or not, Included files too) that use
    ``identity``."""
    home = Path.home()
    ssh_dir = paths.ssh_dir()

    def load(argument: str) -> list[tuple[str, str]]:
        loaded = []
        for file in include_files(argument, ssh_dir, home):
            try:
                data = file.read_bytes()
            except OSError as exc:  # OpenSSH fails on it too; we cannot say the key is unused
                raise LocalIOError(f"could not read {file} (included by the ssh config): "
                                   f"{exc.strerror}",
                                   "fix its permissions, or pass --force") from exc
            # Lenient: a stray byte must not hide an IdentityFile line from this safety check.
            loaded.append((str(file), data.decode("utf-8", "replace")))
        return loaded

    return identity_hosts(read_config(config_path), Path(identity), home, load)


def reset_config(config_path: Path | None = None, *, managed_only: bool = False) -> Path | None:
    """Empty the config (or drop only tether's blocks), keeping a timestamped backup.

    Returns the backup path, or None when there was no file.
    """
    path = _target(config_path)
    if not path.exists():
        return None
    if managed_only:
        old = read_config(path)
        new = strip_all_blocks(old)
        _check_candidate(path, old, new, "tether's blocks removed")
    else:
        new = ""  # an empty config is always valid
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
