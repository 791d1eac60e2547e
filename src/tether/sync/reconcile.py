"""The three-way merge at the heart of sync: base + local + remote -> actions and conflicts.

Pure (no ``os``, sockets or asyncio), on the model of mutagen's ``reconcile.go``. A *tree* maps
POSIX relative paths (``"src/a.py"``) to :class:`Entry` values that carry only content identity
(kind, digest, size, executable bit, symlink target), so two entries compare equal exactly when
the two sides hold the same thing. The *base* is what both sides held after the last cycle
that finished; a side "changed" a path when its entry differs from the base's.

Invariants (tested, also with hypothesis):
- ``reconcile(t, t, t, mode)`` yields nothing, for every tree and mode.
- two-way-safe never deletes or overwrites anything that differs from the base on the side it
  writes to: every action's ``expect`` (what the receiver must still hold) is the base entry or
  absence. Both-changed paths become conflicts; the other side's version is saved beside the
  file (``name.conflict-<side>-<time>.ext``), so both versions survive on both sides.
- A deletion propagates only to a side that did not change the path.
- A side that holds nothing while the base holds something halts the session
  (:func:`halt_reason`) instead of deleting the other side.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Action", "Conflict", "Entry", "Keep", "Kind", "Mode", "Op", "Side", "Tree",
           "advance_base", "conflict_name", "halt_reason", "reconcile"]


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


@dataclass(frozen=True, slots=True)
class Entry:
    """What a path holds, by content. Directories carry only their kind."""

    kind: Kind
    digest: bytes = b""  # BLAKE3 of the content (files only)
    size: int = 0
    executable: bool = False
    target: str = ""  # symlinks only

    def to_dict(self) -> dict:
        return {"kind": self.kind.name.lower(), "digest": self.digest.hex(), "size": self.size,
                "executable": self.executable, "target": self.target}


Tree = Mapping[str, Entry]
DIR = Entry(Kind.DIR)


class Mode(str, enum.Enum):
    """Sync modes, named by how safe they are (the first is the default)."""

    TWO_WAY_SAFE = "two-way-safe"  # both ways; conflicts keep both versions and are reported
    TWO_WAY_RESOLVED = "two-way-resolved"  # both ways; local wins conflicts (remote's is lost)
    ONE_WAY_SAFE = "one-way-safe"  # local -> remote; never touches what changed remotely
    ONE_WAY_REPLICA = "one-way-replica"  # remote becomes an exact copy of local


class Side(str, enum.Enum):
    LOCAL = "local"
    REMOTE = "remote"

    @property
    def other(self) -> Side:
        return Side.REMOTE if self is Side.LOCAL else Side.LOCAL


class Keep(str, enum.Enum):
    """How the user resolves a conflict (`tether sync resolve PATH --keep ...`)."""

    LOCAL = "local"
    REMOTE = "remote"
    BOTH = "both"  # local's version at the path, remote's beside it as a conflict copy


class Op(str, enum.Enum):
    COPY = "copy"  # make dst hold ``entry`` (taken from the other side's ``source``)
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Action:
    """One change on one side. The receiver applies it only if it still holds ``expect``."""

    op: Op
    path: str
    dst: Side
    entry: Entry | None  # COPY: what dst gets; DELETE: None
    expect: Entry | None  # what dst must hold right now (None: nothing)
    source: str = ""  # COPY: the path on the other side to read (default: ``path``)

    @property
    def src_path(self) -> str:
        return self.source or self.path

    def to_dict(self) -> dict:
        return {"op": self.op.value, "path": self.path, "to": self.dst.value,
                "source": self.src_path}


@dataclass(frozen=True, slots=True)
class Conflict:
    """Both sides changed ``path`` differently since the base."""

    path: str
    base: Entry | None
    local: Entry | None
    remote: Entry | None
    copy: str | None = None  # where the other side's version was saved (None: nothing to save)
    resolved: str | None = None  # two-way-resolved: which side won automatically

    def to_dict(self) -> dict:
        def d(e: Entry | None) -> dict | None:
            return None if e is None else e.to_dict()

        return {"path": self.path, "base": d(self.base), "local": d(self.local),
                "remote": d(self.remote), "copy": self.copy, "resolved": self.resolved}


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def conflict_name(path: str, side: Side, stamp: str) -> str:
    """``dir/name.ext`` -> ``dir/name.conflict-<side>-<stamp>.ext`` (stamp: e.g. 20261121T131500)."""
    head, _, tail = path.rpartition("/")
    stem, dot, ext = tail.rpartition(".")
    if not stem:  # no extension, or a dotfile like ".env"
        stem, dot, ext = tail, "", ""
    name = f"{stem}.conflict-{side.value}-{stamp}{dot}{ext}"
    return f"{head}/{name}" if head else name


def halt_reason(base: Tree, local: Tree, remote: Tree, mode: Mode) -> str | None:
    """Why the session must stop instead of propagating, or None.

    An emptied (or vanished, which scans as empty) root would otherwise look like "the user
    deleted everything" and be mirrored to the other side.
    """
    if not base or (not local and not remote):
        return None  # nothing to lose: a first sync, or both sides emptied on purpose
    if not local:
        return "the local sync root is empty (or gone) but was not before"
    if not remote and mode in (Mode.TWO_WAY_SAFE, Mode.TWO_WAY_RESOLVED):
        return "the remote sync root is empty (or gone) but was not before"
    return None


def _copy(path: str, dst: Side, entry: Entry, expect: Entry | None, source: str = "") -> Action:
    return Action(Op.COPY, path, dst, entry, expect, source)


def _propagate(path: str, dst: Side, want: Entry | None, have: Entry | None) -> Action:
    if want is None:
        return Action(Op.DELETE, path, dst, None, have)
    return _copy(path, dst, want, have)


class _Merge:
    def __init__(self, base: Tree, local: Tree, remote: Tree, stamp: str) -> None:
        self.base, self.local, self.remote, self.stamp = base, local, remote, stamp
        self.actions: list[Action] = []
        self.conflicts: list[Conflict] = []

    def tree(self, side: Side) -> Tree:
        return self.local if side is Side.LOCAL else self.remote

    def saved_copy(self, path: str, keep_on: Side, version: Entry) -> str | None:
        """Save the other side's ``version`` beside ``path`` on ``keep_on``; returns its name.

        Stateless de-duplication: if a sibling conflict copy with that content already exists
        there (an earlier cycle made it), nothing new is written.
        """
        if version.kind is Kind.DIR:
            return None
        tree = self.tree(keep_on)
        origin = keep_on.other
        name = conflict_name(path, origin, self.stamp)
        prefix = conflict_name(path, origin, "\0").split("\0")[0]
        head = _parent(path)
        for other_path, entry in tree.items():
            if (entry == version and other_path.startswith(prefix)
                    and _parent(other_path) == head):
                return other_path
        if name in tree:
            return None
        self.actions.append(_copy(name, keep_on, version, None, source=path))
        return name

    def conflict(self, path: str, b: Entry | None, l: Entry | None, r: Entry | None) -> None:
        # Keep both: the remote version beside the local file (it then syncs like any new
        # file), or the local one beside the remote file when remote holds a directory there.
        saved = None
        if r is not None and r.kind is not Kind.DIR:
            saved = self.saved_copy(path, Side.LOCAL, r)
        elif l is not None and l.kind is not Kind.DIR:
            saved = self.saved_copy(path, Side.REMOTE, l)
        self.conflicts.append(Conflict(path, b, l, r, copy=saved))

    def resolve(self, path: str, b: Entry | None, l: Entry | None, r: Entry | None,
                keep: Keep) -> None:
        if keep is Keep.REMOTE:
            self.actions.append(_propagate(path, Side.LOCAL, r, l))
            return
        if keep is Keep.BOTH and r is not None:
            self.saved_copy(path, Side.LOCAL, r)
        self.actions.append(_propagate(path, Side.REMOTE, l, r))


def _two_way(m: _Merge, path: str, b: Entry | None, l: Entry | None, r: Entry | None,
             mode: Mode) -> None:
    lc, rc = l != b, r != b
    if lc and not rc:
        m.actions.append(_propagate(path, Side.REMOTE, l, r))
    elif rc and not lc:
        m.actions.append(_propagate(path, Side.LOCAL, r, l))
    elif mode is Mode.TWO_WAY_RESOLVED:
        m.actions.append(_propagate(path, Side.REMOTE, l, r))
        m.conflicts.append(Conflict(path, b, l, r, resolved=Side.LOCAL.value))
    elif l is None:  # deleted here, edited there: the edit wins, nothing is lost
        m.actions.append(_copy(path, Side.LOCAL, r, None))  # type: ignore[arg-type]
    elif r is None:
        m.actions.append(_copy(path, Side.REMOTE, l, None))
    else:
        m.conflict(path, b, l, r)


def _one_way(m: _Merge, path: str, b: Entry | None, l: Entry | None, r: Entry | None,
             mode: Mode) -> None:
    if mode is Mode.ONE_WAY_REPLICA:
        m.actions.append(_propagate(path, Side.REMOTE, l, r))
        return
    if l == b:
        return  # nothing new locally; whatever the remote did is its own business
    if r == b:
        m.actions.append(_propagate(path, Side.REMOTE, l, r))
    else:
        m.conflicts.append(Conflict(path, b, l, r))


def _fix_directories(actions: list[Action]) -> list[Action]:
    """Directory deletes yield to copies below them; deletes run deepest first, then copies.

    A side that deleted ``d/`` while the other added or edited ``d/x`` gets ``d/`` back (the
    edit wins), rather than the other side losing ``d/x`` with its directory.
    """
    copies_into: dict[Side, set[str]] = {Side.LOCAL: set(), Side.REMOTE: set()}
    for a in actions:
        if a.op is Op.COPY:
            parent = _parent(a.path)
            while parent:
                copies_into[a.dst].add(parent)
                parent = _parent(parent)
    kept: list[Action] = []
    for a in actions:
        if a.op is Op.DELETE and a.expect is not None and a.expect.kind is Kind.DIR:
            if a.path in copies_into[a.dst.other]:
                continue  # the other side still needs this directory for its copies
            if a.path in copies_into[a.dst]:
                continue  # this side gets new content below it: keep the directory
        kept.append(a)
    # Receivers create missing parent directories for a copy, so a directory the dst side
    # deleted comes back with the file that needs it.
    deletes = sorted((a for a in kept if a.op is Op.DELETE), key=lambda a: a.path, reverse=True)
    copies = sorted((a for a in kept if a.op is Op.COPY), key=lambda a: a.path)
    return deletes + copies


def _under(path: str, skipped: set[str]) -> bool:
    """``path`` or one of its ancestors is in ``skipped``."""
    while path:
        if path in skipped:
            return True
        path = _parent(path)
    return False


def reconcile(base: Tree, local: Tree, remote: Tree, mode: Mode = Mode.TWO_WAY_SAFE, *,
              stamp: str = "0", skip: Iterable[str] = (),
              resolutions: Mapping[str, Keep] | None = None,
              paths: Iterable[str] | None = None,
              ) -> tuple[list[Action], list[Conflict]]:
    """The actions that bring both sides together, and the conflicts left for the user.

    ``stamp`` names conflict copies; ``skip`` are paths not to touch this cycle (files that
    changed while being read); ``resolutions`` are the user's answers to earlier conflicts;
    ``paths`` limits the merge to paths that may have changed (watch mode: what the watchers
    reported), the result being the same as a full merge whenever every other path is in step
    or already known to conflict.
    """
    m = _Merge(base, local, remote, stamp)
    skipped = set(skip)
    resolutions = resolutions or {}
    todo = set(base) | set(local) | set(remote) if paths is None \
        else set(paths) | set(resolutions)
    for path in sorted(todo):
        if skipped and _under(path, skipped):
            continue
        b, l, r = base.get(path), local.get(path), remote.get(path)
        if l == r:
            continue
        keep = resolutions.get(path)
        if keep is not None:
            m.resolve(path, b, l, r, keep)
        elif mode in (Mode.TWO_WAY_SAFE, Mode.TWO_WAY_RESOLVED):
            _two_way(m, path, b, l, r, mode)
        else:
            _one_way(m, path, b, l, r, mode)
    return _fix_directories(m.actions), m.conflicts


def advance_base(base: Tree, local: Tree, remote: Tree, done: Iterable[Action],
                 paths: Iterable[str] | None = None) -> dict[str, Entry]:
    """The next base: what both sides hold after the actions in ``done`` were applied.

    Paths where the sides still differ keep their old base entry, so the change that made
    them differ is still seen as a change next cycle (a conflict stays a conflict).
    ``paths`` (with the paths of ``done``) limits the work to what may have changed; other
    entries are carried over from ``base``.
    """
    done = list(done)
    changes: dict[Side, dict[str, Entry | None]] = {Side.LOCAL: {}, Side.REMOTE: {}}
    for a in done:
        changes[a.dst][a.path] = None if a.op is Op.DELETE else a.entry
    if paths is None:
        out: dict[str, Entry] = {}
        todo: set[str] = set(base) | set(local) | set(remote)
    else:
        out = dict(base)
        todo = set(paths)
    todo.update(changes[Side.LOCAL], changes[Side.REMOTE])
    lch, rch = changes[Side.LOCAL], changes[Side.REMOTE]
    for path in todo:
        lv = lch[path] if path in lch else local.get(path)
        rv = rch[path] if path in rch else remote.get(path)
        if lv is not None and lv == rv:
            out[path] = lv
        elif lv != rv and path in base:
            out[path] = base[path]
        else:
            out.pop(path, None)
    return out
