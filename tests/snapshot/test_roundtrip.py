"""push then pull gives back the same tree; excludes, stat cache, tags, diff, ls."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snapfix import BIG, PAST_NS, describe, make_tree, set_times  # noqa: E402

from tether.errors import NotFoundError, UsageError  # noqa: E402
from tether.snapshot import api  # noqa: E402
from tether.snapshot.format import RepoConfig  # noqa: E402
from tether.snapshot.repo import Repository  # noqa: E402
from tether.snapshot.stores import open_store  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store_url(tmp_path, isolated):
    return f"file://{tmp_path}/repo"


def test_round_trip_preserves_everything(tmp_path, store_url):
    src = make_tree(tmp_path / "src")
    os.chmod(src / "exec.sh", 0o4755)   # setuid: stored, but stripped on restore
    set_times(src)
    r = api.push(store_url, src)
    assert r.files == 10 and r.bytes > BIG
    out = tmp_path / "out"
    pulled = api.pull(store_url, out)
    assert pulled.files == 10 and pulled.links == 4
    want = describe(src)
    want["exec.sh"] = ("f", 0o755) + want["exec.sh"][2:]
    assert describe(out) == want
    assert os.readlink(out / "abs_link") == "/usr/bin/python3"
    assert (out / "empty_dir").is_dir() and not any((out / "empty_dir").iterdir())
    assert (out / "big.bin").stat().st_size == BIG


def test_large_files_are_chunked_and_deduplicated(tmp_path, store_url):
    src = make_tree(tmp_path / "src")
    api.push(store_url, src)
    # append to the big file: FastCDC keeps the unchanged chunks, so little is new
    with open(src / "big.bin", "ab") as fh:
        fh.write(os.urandom(1000))
    second = api.push(store_url, src)
    assert second.files_read == 1
    # Only the chunk that holds the end of the file is new: at most one maximal chunk plus the
    # small tree and index objects, never the 9 MiB file again. (How much the first push
    # stores depends on how the random rotations deduplicate, so it is not a fixed number.)
    assert second.bytes_new <= RepoConfig(id="x").chunk_max + (64 << 10) < BIG


def test_default_excludes_and_tetherignore(tmp_path, store_url):
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"x")
    (src / "pkg" / "m.py").write_text("x = 1")
    (src / "pkg" / "old.pyc").write_bytes(b"x")
    (src / ".cache" / "pip").mkdir(parents=True)
    (src / ".cache" / "pip" / "blob").write_bytes(b"x")
    (src / "tagged").mkdir()
    (src / "tagged" / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55\n")
    (src / "tagged" / "data").write_bytes(b"x")
    (src / "fake-tag").mkdir()
    (src / "fake-tag" / "CACHEDIR.TAG").write_bytes(b"not the signature")
    (src / "build").mkdir()
    (src / "build" / "out.o").write_bytes(b"x")
    (src / "debug.log").write_text("x")
    (src / "keep.txt").write_text("x")
    (src / ".tetherignore").write_text("*.log\nbuild/\n")
    api.push(store_url, src)
    api.pull(store_url, tmp_path / "out")
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert got == [".tetherignore", "fake-tag", "fake-tag/CACHEDIR.TAG", "keep.txt", "pkg",
                   "pkg/m.py"]


def test_unchanged_files_are_not_read_again(tmp_path, store_url):
    src = make_tree(tmp_path / "src", big=False)
    first = api.push(store_url, src)
    assert first.files_read == first.files
    second = api.push(store_url, src)
    assert second.files_read == 0 and second.tree == first.tree
    assert second.bytes_uploaded < 2000          # lock + snapshot object only
    (src / "a.txt").write_text("changed")
    os.utime(src / "a.txt", ns=(PAST_NS + 10**9, PAST_NS + 10**9))
    third = api.push(store_url, src)
    assert third.files_read == 1 and third.tree != first.tree


def test_recently_modified_files_are_read_again(tmp_path, store_url):
    """Racy-clean guard: a file changed within the mtime tick of the last push is re-read."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one")
    api.push(store_url, src)
    second = api.push(store_url, src)
    assert second.files_read == 1


def test_tags_ls_and_refs(tmp_path, store_url):
    src = make_tree(tmp_path / "src", big=False)
    a = api.push(store_url, src, tags=["base"])
    (src / "new.txt").write_text("new")
    b = api.push(store_url, src)
    snaps = api.list_snapshots(store_url)
    assert [s.id for s in snaps] == [a.snapshot_id, b.snapshot_id]
    assert snaps[0].tags == ["base"] and snaps[0].path == str(src)
    api.pull(f"{store_url}@base", tmp_path / "old")
    assert not (tmp_path / "old" / "new.txt").exists()
    api.pull(f"{store_url}@{b.snapshot_id[:10]}", tmp_path / "new")
    assert (tmp_path / "new" / "new.txt").read_text() == "new"
    with pytest.raises(NotFoundError, match="no snapshot or tag 'nope'"):
        api.pull(f"{store_url}@nope", tmp_path / "x")
    with pytest.raises(UsageError, match="invalid tag"):
        api.push(store_url, src, tags=["has space"])


def test_diff(tmp_path, store_url):
    src = make_tree(tmp_path / "src", big=False)
    a = api.push(store_url, src).snapshot_id
    (src / "a.txt").write_text("changed")
    (src / "sub" / "deeper" / "x.txt").unlink()
    (src / "sub" / "added").write_text("n")
    b = api.push(store_url, src).snapshot_id
    changes = {(c.status, c.path) for c in api.diff(store_url, a, b)}
    assert changes == {("M", "a.txt"), ("-", "sub/deeper/x.txt"), ("+", "sub/added")}
    assert api.diff(store_url, a, a) == []


def test_pull_defaults_to_the_original_path_and_refuses_non_empty(tmp_path, store_url):
    src = make_tree(tmp_path / "src", big=False)
    api.push(store_url, src)
    before = describe(src)
    with pytest.raises(UsageError, match="not empty"):
        api.pull(store_url)
    (src / "a.txt").write_text("local edit")
    (src / "extra").write_text("gone after replace")
    r = api.pull(store_url, replace=True)
    assert r.path == str(src)
    after = describe(src)
    assert after == before
    assert not [p for p in tmp_path.iterdir() if ".tether-" in p.name]  # no staging left


def test_push_of_a_missing_folder_is_a_clear_error(tmp_path, store_url):
    with pytest.raises(NotFoundError, match="not a directory"):
        api.push(store_url, tmp_path / "missing")


def test_pull_from_an_empty_store_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="no snapshot repository"):
        api.pull(f"file://{tmp_path}/nothing", tmp_path / "out")
    assert not (tmp_path / "nothing").exists()


def test_repository_keys_follow_the_layout(tmp_path, store_url):
    api.push(store_url, make_tree(tmp_path / "src", big=False))
    store = open_store(store_url)
    tops = {k.split("/")[0] for k in store.list()}
    assert tops == {"config", "packs", "index", "snapshots"}   # the push lock is gone
    repo = Repository.open(store)
    assert repo.orphan_packs() == []


def _chmod_deep_file(src):
    os.chmod(src / "sub" / "deeper" / "x.txt", 0o600)


def _retime_symlink(src):
    os.utime(src / "rel_link", ns=(PAST_NS + 5, PAST_NS + 5), follow_symlinks=False)


def _chmod_subdir(src):
    os.chmod(src / "sub" / "deeper", 0o750)


def _same_size_same_mtime_edit(src):
    st = os.stat(src / "sub" / "deeper" / "x.txt")
    (src / "sub" / "deeper" / "x.txt").write_text("DEEP")
    os.utime(src / "sub" / "deeper" / "x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))


def _retarget_symlink(src):
    os.unlink(src / "rel_link")
    os.symlink("empty", src / "rel_link")
    os.utime(src / "rel_link", ns=(PAST_NS, PAST_NS), follow_symlinks=False)
    os.utime(src, ns=(PAST_NS, PAST_NS))


CHANGES = {
    "chmod-deep-file": _chmod_deep_file,
    "retime-symlink": _retime_symlink,
    "chmod-subdir": _chmod_subdir,
    "same-size-same-mtime-edit": _same_size_same_mtime_edit,
    "retarget-symlink": _retarget_symlink,
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_the_next_push_sees_every_kind_of_change(tmp_path, store_url, change):
    src = make_tree(tmp_path / "src", big=False)
    first = api.push(store_url, src)
    assert api.push(store_url, src).tree == first.tree   # cached trees are reused...
    CHANGES[change](src)
    second = api.push(store_url, src)
    assert second.tree != first.tree                      # ...but never past a change
    api.pull(store_url, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def test_cachedir_tag_and_ignore_changes_are_seen(tmp_path, store_url):
    src = make_tree(tmp_path / "src", big=False)
    api.push(store_url, src)
    api.push(store_url, src)
    (src / "sub" / "deeper" / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55")
    api.push(store_url, src)
    api.pull(store_url, tmp_path / "out1")
    assert not (tmp_path / "out1" / "sub" / "deeper").exists()
    (src / ".tetherignore").write_text("private/\n")
    api.push(store_url, src)
    api.pull(store_url, tmp_path / "out2")
    assert not (tmp_path / "out2" / "private").exists()
    assert (tmp_path / "out2" / "a.txt").exists()


def test_cached_ids_are_rechecked_after_prune(tmp_path, store_url):
    """Prune replaces index objects, so a folder's stat cache is no longer trusted blindly:
    here prune dropped everything folder A pushed, and A's next push must upload it again."""
    a = make_tree(tmp_path / "a", big=False)
    b = tmp_path / "b"
    b.mkdir()
    (b / "only").write_text("b")
    api.push(store_url, a)
    api.push(store_url, b)
    api.prune(store_url, keep_last=1)           # keeps only b's snapshot
    r = api.push(store_url, a)
    assert r.bytes_read == r.bytes and r.bytes_new > 0   # every byte read and stored again
    api.pull(f"{store_url}@{r.snapshot_id}", tmp_path / "out")
    assert describe(tmp_path / "out") == describe(a)
    assert api.verify(store_url, data=True).ok


def test_a_store_inside_the_pushed_folder_is_not_pushed_into_itself(tmp_path, isolated):
    src = make_tree(tmp_path / "src", big=False)
    url = f"file://{src}/.snapshots"
    api.push(url, src)
    second = api.push(url, src)
    assert second.files == 9
    api.pull(url, tmp_path / "out")
    assert not (tmp_path / "out" / ".snapshots").exists()


def test_modes_are_exact_whatever_the_umask(tmp_path, store_url):
    src = make_tree(tmp_path / "src", big=False)
    os.chmod(src / "a.txt", 0o666)
    set_times(src)
    api.push(store_url, src)
    old = os.umask(0o077)
    try:
        api.pull(store_url, tmp_path / "out")
    finally:
        os.umask(old)
    assert describe(tmp_path / "out") == describe(src)


def test_trees_deeper_than_restore_accepts_are_skipped_with_a_note(tmp_path, store_url,
                                                                    monkeypatch):
    from tether.snapshot import backup

    monkeypatch.setattr(backup, "MAX_DEPTH", 3)
    src = tmp_path / "src"
    (src / "a" / "b" / "c" / "d").mkdir(parents=True)
    (src / "a" / "b" / "c" / "d" / "deep.txt").write_text("x")
    (src / "a" / "ok.txt").write_text("x")
    r = api.push(store_url, src)
    assert r.skipped == ["a/b/c/d/: nested deeper than 3 directories"]
    api.pull(store_url, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "ok.txt").exists()
    assert not (tmp_path / "out" / "a" / "b" / "c" / "d").exists()


def test_a_push_right_after_a_pull_reads_nothing(tmp_path, store_url):
    """A workspace restored on a new machine and then autosaved is not read again."""
    src = make_tree(tmp_path / "src")
    api.push(store_url, src)
    api.pull(store_url, tmp_path / "restored")
    r = api.push(store_url, tmp_path / "restored")
    assert r.files_read == 0 and r.bytes_new == 0
    (tmp_path / "restored" / "a.txt").write_text("edited after restore")
    assert api.push(store_url, tmp_path / "restored").files_read == 1


def test_progress_has_a_total(tmp_path, store_url):
    """Pull knows its total once the snapshot is checked; a push knows the folder's size
    from its last push (the stat cache), and counts the whole folder, read or not."""
    src = make_tree(tmp_path / "src")
    events: list[tuple[str, int]] = []

    def on(kind):
        return lambda n: events.append((kind, n))

    first = api.push(store_url, src, progress=on("+"), on_total=on("total"))
    assert [k for k, _ in events].count("total") == 0            # nothing known yet
    assert sum(n for k, n in events if k == "+") == first.bytes
    events.clear()
    second = api.push(store_url, src, progress=on("+"), on_total=on("total"))
    assert events[0] == ("total", first.bytes) and second.files_read == 0
    assert sum(n for k, n in events if k == "+") == second.bytes
    events.clear()
    pulled = api.pull(store_url, tmp_path / "out", progress=on("+"), on_total=on("total"))
    assert events[0] == ("total", pulled.bytes) and pulled.bytes == first.bytes
    assert sum(n for k, n in events if k == "+") == pulled.bytes


def test_cli_progress_bar_shows_the_total(isolated, monkeypatch):
    """The bar renders "done/total" once the total is known, and takes a status line."""
    import io

    monkeypatch.setenv("TERM", "xterm")   # rich draws no live bar on a dumb terminal

    from rich.console import Console

    from tether.cli.output import Output

    out = Output()
    buf = io.StringIO()
    out._err = Console(file=buf, force_terminal=True, width=120)
    with out.progress("pull") as bar:
        bar.total(2_000_000)
        bar.advance(1_000_000)
        bar.status("committing to kaggle://alice/ws")
        bar.prog.refresh()
    last = [f for f in buf.getvalue().split("\r") if "committing to kaggle" in f][-1]
    assert "1.0/2.0 MB" in last and "/?" not in last
    quiet = Output(json_mode=True)
    with quiet.progress("pull") as bar:   # --json: no bar, and nothing printed
        bar.total(5)
        bar.advance(1)
        bar.status("x")
