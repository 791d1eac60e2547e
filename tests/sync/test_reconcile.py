"""The pure three-way merge: a table of named cases (mutagen reconcile_test.go style) plus
hypothesis laws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.sync.reconcile import (
    Action,
    Entry,
    Keep,
    Kind,
    Mode,
    Op,
    Side,
    advance_base,
    conflict_name,
    halt_reason,
    reconcile,
)

# tiny named fixtures
A = Entry(Kind.FILE, b"a" * 32, 1)
A2 = Entry(Kind.FILE, b"b" * 32, 2)  # an edit of A
A3 = Entry(Kind.FILE, b"c" * 32, 3)  # a different edit of A
AX = Entry(Kind.FILE, b"a" * 32, 1, executable=True)  # A made executable
D = Entry(Kind.DIR)
L1 = Entry(Kind.SYMLINK, target="a")
L2 = Entry(Kind.SYMLINK, target="b")

S, R, OS_, OR = Mode.TWO_WAY_SAFE, Mode.TWO_WAY_RESOLVED, Mode.ONE_WAY_SAFE, Mode.ONE_WAY_REPLICA
LOC, REM = Side.LOCAL, Side.REMOTE


def cp(path, dst, entry, expect, source=""):
    return Action(Op.COPY, path, dst, entry, expect, source)


def rm(path, dst, expect):
    return Action(Op.DELETE, path, dst, None, expect)


CASES = [
    # id, mode, base, local, remote, expected actions, expected conflict paths
    ("nothing", S, {}, {}, {}, [], []),
    ("in-step", S, {"f": A}, {"f": A}, {"f": A}, [], []),
    ("new-local", S, {}, {"f": A}, {}, [cp("f", REM, A, None)], []),
    ("new-remote", S, {}, {}, {"f": A}, [cp("f", LOC, A, None)], []),
    ("same-new-both", S, {}, {"f": A}, {"f": A}, [], []),
    ("edit-local", S, {"f": A}, {"f": A2}, {"f": A}, [cp("f", REM, A2, A)], []),
    ("edit-remote", S, {"f": A}, {"f": A}, {"f": A2}, [cp("f", LOC, A2, A)], []),
    ("chmod-local", S, {"f": A}, {"f": AX}, {"f": A}, [cp("f", REM, AX, A)], []),
    ("same-edit-both", S, {"f": A}, {"f": A2}, {"f": A2}, [], []),
    ("delete-local", S, {"f": A}, {}, {"f": A}, [rm("f", REM, A)], []),
    ("delete-remote", S, {"f": A}, {"f": A}, {}, [rm("f", LOC, A)], []),
    ("delete-both", S, {"f": A}, {}, {}, [], []),
    ("delete-vs-edit", S, {"f": A}, {}, {"f": A2}, [cp("f", LOC, A2, None)], []),
    ("edit-vs-delete", S, {"f": A}, {"f": A2}, {}, [cp("f", REM, A2, None)], []),
    ("both-edit-conflict", S, {"f.txt": A}, {"f.txt": A2}, {"f.txt": A3},
     [cp("f.conflict-remote-T.txt", LOC, A3, None, "f.txt")], ["f.txt"]),
    ("both-new-conflict", S, {}, {"f": A2}, {"f": A3},
     [cp("f.conflict-remote-T", LOC, A3, None, "f")], ["f"]),
    ("conflict-copy-exists", S, {"f": A}, {"f": A2, "f.conflict-remote-X": A3}, {"f": A3},
     [cp("f.conflict-remote-X", REM, A3, None)], ["f"]),
    ("file-vs-dir-conflict", S, {}, {"x": D}, {"x": A},
     [cp("x.conflict-remote-T", LOC, A, None, "x")], ["x"]),
    ("symlink-retarget", S, {"l": L1}, {"l": L2}, {"l": L1}, [cp("l", REM, L2, L1)], []),
    ("rename-local", S, {"a": A}, {"b": A}, {"a": A}, [rm("a", REM, A), cp("b", REM, A, None)],
     []),
    ("new-tree-parents-first", S, {}, {"d": D, "d/f": A}, {},
     [cp("d", REM, D, None), cp("d/f", REM, A, None)], []),
    ("delete-tree-deepest-first", S, {"d": D, "d/f": A}, {}, {"d": D, "d/f": A},
     [rm("d/f", REM, A), rm("d", REM, D)], []),
    ("dir-delete-vs-new-file-inside", S, {"d": D}, {}, {"d": D, "d/new": A},
     [cp("d/new", LOC, A, None)], []),
    ("resolved-local-wins", R, {"f": A}, {"f": A2}, {"f": A3}, [cp("f", REM, A2, A3)], ["f"]),
    ("resolved-delete-wins", R, {"f": A}, {}, {"f": A3}, [rm("f", REM, A3)], ["f"]),
    ("oneway-new", OS_, {}, {"f": A}, {}, [cp("f", REM, A, None)], []),
    ("oneway-ignores-remote-edit", OS_, {"f": A}, {"f": A}, {"f": A2}, [], []),
    ("oneway-ignores-remote-only", OS_, {}, {}, {"r": A}, [], []),
    ("oneway-keeps-remote-edit", OS_, {"f": A}, {"f": A2}, {"f": A3}, [], ["f"]),
    ("oneway-delete-unchanged", OS_, {"f": A}, {}, {"f": A}, [rm("f", REM, A)], []),
    ("oneway-no-delete-edited", OS_, {"f": A}, {}, {"f": A2}, [], ["f"]),
    ("replica-overwrites", OR, {"f": A}, {"f": A}, {"f": A2}, [cp("f", REM, A, A2)], []),
    ("replica-deletes-extra", OR, {}, {}, {"r": A}, [rm("r", REM, A)], []),
]


@pytest.mark.parametrize("mode,base,local,remote,want,want_conflicts",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reconcile_table(mode, base, local, remote, want, want_conflicts):
    actions, conflicts = reconcile(base, local, remote, mode, stamp="T")
    assert actions == want
    assert [c.path for c in conflicts] == want_conflicts


def test_conflict_reports_the_saved_copy():
    _, [c] = reconcile({"f.txt": A}, {"f.txt": A2}, {"f.txt": A3}, S, stamp="T")
    assert (c.local, c.remote, c.base, c.copy) == (A2, A3, A, "f.conflict-remote-T.txt")


@pytest.mark.parametrize("keep,want", [
    (Keep.LOCAL, [cp("f", REM, A2, A3)]),
    (Keep.REMOTE, [cp("f", LOC, A3, A2)]),
    (Keep.BOTH, [cp("f", REM, A2, A3), cp("f.conflict-remote-T", LOC, A3, None, "f")]),
], ids=["local", "remote", "both"])
def test_resolutions(keep, want):
    actions, conflicts = reconcile({"f": A}, {"f": A2}, {"f": A3}, S, stamp="T",
                                   resolutions={"f": keep})
    assert sorted(actions, key=lambda a: a.path) == sorted(want, key=lambda a: a.path)
    assert conflicts == []


def test_skip_leaves_files_being_written_alone():
    actions, _ = reconcile({"f": A}, {"f": A2}, {"f": A}, S, skip={"f"})
    assert actions == []


@pytest.mark.parametrize("path,side,want", [
    ("a.txt", LOC, "a.conflict-local-T.txt"),
    ("d/a.tar.gz", REM, "d/a.tar.conflict-remote-T.gz"),
    (".env", LOC, ".env.conflict-local-T"),
    ("Makefile", REM, "Makefile.conflict-remote-T"),
], ids=["ext", "nested", "dotfile", "noext"])
def test_conflict_name(path, side, want):
    assert conflict_name(path, side, "T") == want


@pytest.mark.parametrize("mode,base,local,remote,halts", [
    (S, {}, {}, {}, False),
    (S, {"f": A}, {}, {"f": A}, True),
    (S, {"f": A}, {"f": A}, {}, True),
    (OS_, {"f": A}, {"f": A}, {}, False),  # one-way: an emptied remote is just refilled
    (OR, {"f": A}, {}, {"f": A}, True),
    (S, {"f": A}, {"g": A}, {"f": A}, False),
    (S, {"f": A}, {}, {}, False),
], ids=["first-sync", "local-emptied", "remote-emptied", "oneway-remote-emptied",
        "replica-local-emptied", "local-renamed-all", "both-emptied"])
def test_halt_reason(mode, base, local, remote, halts):
    assert (halt_reason(base, local, remote, mode) is not None) is halts


def test_advance_base_keeps_old_base_for_conflicts():
    base = {"f": A, "g": A}
    local, remote = {"f": A2, "g": A2}, {"f": A3, "g": A}
    actions, _ = reconcile(base, local, remote, S, stamp="T")
    new = advance_base(base, local, remote, actions)
    assert new["f"] == A  # still a conflict next cycle
    assert new["g"] == A2  # propagated
    assert "f.conflict-remote-T" not in new  # only local has it yet: it syncs next cycle


def test_advance_base_without_done_actions_changes_nothing_that_differs():
    base = {"f": A}
    new = advance_base(base, {"f": A2}, {"f": A}, [])
    assert new == {"f": A}


# -- laws -------------------------------------------------------------------------------------

PATHS = ["a", "b", "d", "d/x", "d/y"]
ENTRIES = st.sampled_from([A, A2, A3, AX, L1, D])


@st.composite
def trees(draw):
    tree = {}
    for p in PATHS:
        e = draw(st.one_of(st.none(), ENTRIES))
        if e is not None:
            tree[p] = e
    if any(p.startswith("d/") for p in tree):
        tree["d"] = D  # a child needs its directory
    return tree


MODES = st.sampled_from(list(Mode))


@settings(max_examples=150, deadline=None)
@given(trees(), MODES)
def test_law_in_step_is_empty(t, mode):
    assert reconcile(t, t, t, mode) == ([], [])


@settings(max_examples=200, deadline=None)
@given(trees(), trees(), trees())
def test_law_two_way_safe_never_destroys_a_change(base, local, remote):
    actions, _ = reconcile(base, local, remote, S, stamp="T")
    for a in actions:
        have = (local if a.dst is LOC else remote).get(a.path)
        assert a.expect == have  # it acts only on what it saw
        if have is not None and have.kind is not Kind.DIR:
            # overwriting or deleting: only what the base already had on that side
            assert have == base.get(a.path), a


@settings(max_examples=150, deadline=None)
@given(trees(), trees(), trees())
def test_law_two_way_safe_converges(base, local, remote):
    """Applying the actions and reconciling again leaves at most the same conflicts."""
    actions, conflicts = reconcile(base, local, remote, S, stamp="T")
    new_base = advance_base(base, local, remote, actions)
    trees_after = {LOC: dict(local), REM: dict(remote)}
    for a in actions:
        if a.op is Op.DELETE:
            trees_after[a.dst].pop(a.path, None)
        else:
            trees_after[a.dst][a.path] = a.entry
            parent = a.path.rpartition("/")[0]
            if parent:
                trees_after[a.dst].setdefault(parent, D)  # receivers create parents
    again, conflicts2 = reconcile(new_base, trees_after[LOC], trees_after[REM], S, stamp="T")
    assert {c.path for c in conflicts2} <= {c.path for c in conflicts} | {
        a.path for a in actions}
    # what is left to do is only carrying the new conflict copies across
    assert all(a.op is Op.COPY and a.expect is None and ".conflict-" in a.path
               for a in again), again


@settings(max_examples=150, deadline=None)
@given(trees(), trees(), trees())
def test_law_one_way_never_writes_local(base, local, remote):
    for mode in (OS_, OR):
        actions, _ = reconcile(base, local, remote, mode)
        assert all(a.dst is REM for a in actions)


@settings(max_examples=150, deadline=None)
@given(trees(), trees(), trees(), MODES)
def test_law_limiting_to_changed_paths_changes_nothing(base, local, remote, mode):
    """Watch mode merges only the paths that changed; that must equal the full merge."""
    changed = {p for p in set(base) | set(local) | set(remote)
               if not base.get(p) == local.get(p) == remote.get(p)}
    full = reconcile(base, local, remote, mode, stamp="T")
    assert reconcile(base, local, remote, mode, stamp="T", paths=changed) == full
    assert advance_base(base, local, remote, full[0], changed) == \
        advance_base(base, local, remote, full[0])


def test_skip_covers_everything_below_an_unreadable_directory():
    base = {"d": D, "d/x": A, "e": A}
    actions, _ = reconcile(base, {"d": D, "e": A2}, base, S, skip={"d"})
    assert actions == [cp("e", REM, A2, A)]  # d/x is not deleted remotely


@pytest.mark.parametrize("module", ["tether.sync.reconcile", "tether.sync.protocol"])
def test_pure_modules_import_no_io(module):
    """The merge and the codec stay pure: no os, socket or asyncio (STYLE.md)."""
    import ast
    import importlib

    source = importlib.import_module(module).__file__
    with open(source, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"os", "posixpath", "socket", "asyncio", "subprocess"}
