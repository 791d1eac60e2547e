"""What sync leaves alone: ``.gitignore`` files (nested ones too), ``.tetherignore`` and
``--exclude`` patterns, all in gitignore syntax (pathspec), plus sync's own temporary files.

Rules are evaluated relative to the directory that holds the ignore file, like git. Both
sides evaluate them on their own tree; the ignore files themselves are synced, so the two
sides converge on the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

IGNORE_FILES = (".gitignore", ".tetherignore")
# Receivers write under this prefix before the rename; never sync another transfer's temp.
TEMP_PREFIX = ".tether-sync-"
_ALWAYS = re.compile(r"^\.tether-sync-.*")


def _spec(lines: Iterable[str]):
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(list(lines))
    except Exception as exc:
        from tether import errors

        raise errors.UsageError(f"bad ignore pattern: {exc}",
                                "patterns use .gitignore syntax, e.g. 'build/' or '*.log'") from exc


def _valid(line: str) -> bool:
    try:
        _spec([line])
        return True
    except Exception:  # noqa: BLE001
        return False


def check_patterns(patterns: Sequence[str]) -> None:
    """UsageError for a pattern pathspec cannot compile."""
    _spec(patterns)


class Rules:
    """The rules active in one directory: its parent's plus its own ignore files."""

    __slots__ = ("layers",)

    def __init__(self, layers: tuple = ()) -> None:
        self.layers = layers  # ((dir_prefix, PathSpec), ...) outermost first

    @classmethod
    def root(cls, excludes: Sequence[str]) -> Rules:
        return cls((("", _spec(excludes)),) if excludes else ())

    def child(self, reldir: str, texts: Sequence[str]) -> Rules:
        """The rules for directory ``reldir`` holding ignore files with ``texts``."""
        lines = [line for text in texts for line in text.splitlines()]
        if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
            return self
        prefix = reldir + "/" if reldir else ""
        try:
            spec = _spec(lines)
        except Exception:  # noqa: BLE001 - like git, skip the lines it cannot read
            spec = _spec([line for line in lines if _valid(line)])
        return Rules(self.layers + ((prefix, spec),))

    def excluded(self, relpath: str, is_dir: bool, name: str) -> bool:
        if _ALWAYS.match(name):
            return True
        if not self.layers:
            return False
        verdict = False
        for prefix, spec in self.layers:
            sub = relpath[len(prefix):] if prefix and relpath.startswith(prefix) else relpath
            if is_dir:
                sub += "/"
            # pathspec reports the last matching pattern's verdict (negations included);
            # inner ignore files override outer ones, as in git.
            result = spec.check_file(sub)
            if result.include is not None:
                verdict = bool(result.include)
        return verdict
