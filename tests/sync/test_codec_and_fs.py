"""The frame codec (round trips, split reads, bad input), the scanner's caches and ignore
rules, and the receiver's safety checks, on local directories."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import errors
from tether.sync import protocol as P
from tether.sync.fs import Receiver, chunk_sigs, send_frames
from tether.sync.reconcile import Entry, Kind
from tether.sync.scan import Scanner

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
                min_size=1, max_size=20)
entries = st.builds(Entry, st.sampled_from(list(Kind)), st.binary(max_size=32),
                    st.integers(0, 2**63 - 1), st.booleans(), names | st.just(""))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(names, entries, max_size=20), st.lists(names, max_size=5),
       st.booleans())
def test_tree_round_trip(changed, removed, full):
    d = P.TreeDelta(full, changed, removed, sorted(removed))
    assert P.decode_tree(P.encode_tree(d)) == d


def test_undecodable_file_names_survive():
    name = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes: not UTF-8
    d = P.TreeDelta(True, {name: Entry(Kind.FILE, b"x" * 32, 1)})
    assert P.decode_tree(P.encode_tree(d)).changed == d.changed


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 7))
def test_frames_survive_any_split(payloads, step):
    stream = b"".join(P.encode(P.T.DATA, p) for p in payloads)
    dec = P.FrameDecoder()
    got = []
    for i in range(0, len(stream), step):
        got += dec.feed(stream[i:i + step])
    assert [f.payload for f in got] == payloads and dec.pending == 0


@pytest.mark.parametrize("raw,what", [
    (b"\x00\x00\x00\x00\x63", "unknown sync frame type"),
    (b"\x7f\xff\xff\xff\x08", "too large"),
], ids=["unknown-type", "oversized"])
def test_bad_frames_are_protocol_errors(raw, what):
    with pytest.raises(errors.ProtocolError, match=what):
        P.FrameDecoder().feed(raw)


def test_truncated_tree_is_a_protocol_error():
    blob = P.encode_tree(P.TreeDelta(True, {"a": Entry(Kind.FILE, b"d" * 32, 3)}))
    with pytest.raises(errors.ProtocolError):
        P.decode_tree(blob[:-3])


def test_rescan_reuses_the_stat_cache_and_sees_edits(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").write_text(str(i))
    s = Scanner(tmp_path)
    first = s.scan()
    assert first.hashed_bytes > 0 and len(first.tree) == 50
    again = s.scan()
    assert again.hashed_bytes == 0 and again.tree == first.tree
    (tmp_path / "f3").write_text("changed")
    os.chmod(tmp_path / "f4", 0o755)
    third = s.scan()
    assert third.tree["f3"] != first.tree["f3"] and third.tree["f4"].executable
    assert third.hashed_bytes == len("changed") + 1


def test_scanner_ignores_its_own_temp_files_and_fifos(tmp_path):
    (tmp_path / ".tether-sync-abc123").write_text("half")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "real").write_text("r")
    assert set(Scanner(tmp_path).scan().tree) == {"real"}


def test_negated_and_nested_ignore_rules(tmp_path):
    (tmp_path / ".gitignore").write_text("*.log\n!keep.log\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".gitignore").write_text("!inner.log\n")
    for p in ("x.log", "keep.log", "a/inner.log", "a/other.log"):
        (tmp_path / p).write_text(p)
    tree = Scanner(tmp_path).scan().tree
    assert {p for p in tree if p.endswith(".log")} == {"keep.log", "a/inner.log"}


def test_bad_exclude_pattern_is_a_usage_error():
    from tether.sync.ignore import check_patterns

    with pytest.raises(errors.UsageError):
        check_patterns(["ok/*.py", "a/[z-a]"])


def _transfer(src_root, dst_root, path, expect, sigs=None):
    src, dst = Scanner(src_root), Scanner(dst_root)
    entry = src.scan().tree[path]
    dst.scan()
    rx = Receiver(dst)
    for frame in send_frames(src, path, entry, expect, sigs):
        for f in P.FrameDecoder().feed(frame):
            assert rx.handle(f)
    return rx.result()


def test_receiver_refuses_to_overwrite_what_changed_since_the_scan(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("new")
    (b / "f").write_text("old")
    stale = Entry(Kind.FILE, b"\0" * 32, 3)  # not what b/f holds
    done, failed = _transfer(a, b, "f", stale)
    assert done == [] and failed[0][0] == "f"
    assert (b / "f").read_text() == "old"
    assert [p.name for p in b.iterdir()] == ["f"]  # no temp file left behind


def test_receiver_rejects_paths_outside_the_root(tmp_path):
    rx = Receiver(Scanner(tmp_path))
    rx.begin("../escape", Entry(Kind.DIR), None)
    rx.delete("/etc/passwd", Entry(Kind.FILE))
    done, failed = rx.result()
    assert done == [] and [f[1] for f in failed] == ["unsafe path", "unsafe path"]
    assert not (tmp_path.parent / "escape").exists()


def test_delta_transfer_reuses_the_receivers_chunks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    data = bytearray(os.urandom(4 << 20))
    (b / "f").write_bytes(data)
    data[2 << 20:(2 << 20) + 10] = b"0123456789"
    (a / "f").write_bytes(data)
    old = Scanner(b).scan().tree["f"]
    sigs = chunk_sigs(str(b / "f"))
    entry = Scanner(a).scan().tree["f"]
    frames = list(send_frames(Scanner(a), "f", entry, old, sigs))
    assert sum(map(len, frames)) < 600_000  # a few chunks, not 4 MiB
    _, failed = _transfer(a, b, "f", old, sigs)
    assert failed == [] and (b / "f").read_bytes() == bytes(data)


def test_a_bad_line_in_a_gitignore_is_skipped_like_git_does(tmp_path):
    (tmp_path / ".gitignore").write_text("\\\n*.log\n")
    (tmp_path / "a.log").write_text("x")
    (tmp_path / "a.txt").write_text("x")
    assert set(Scanner(tmp_path).scan().tree) == {".gitignore", "a.txt"}


def test_partial_rescan_matches_a_full_scan(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for p in ("a", "d/b", "d/e/c", "d/e/gone"):
        (tmp_path / p).write_text(p)
    (tmp_path / ".gitignore").write_text("*.log\n")
    s = Scanner(tmp_path)
    s.scan()
    (tmp_path / "a").write_text("edited")
    (tmp_path / "d" / "e" / "gone").unlink()
    (tmp_path / "d" / "new").mkdir()
    (tmp_path / "d" / "new" / "n").write_text("n")
    (tmp_path / "d" / "x.log").write_text("ignored")
    partial = s.scan_paths({"a", "d/e/gone", "d/new", "d/new/n", "d/x.log"})
    assert partial.tree == Scanner(tmp_path).scan().tree
    assert partial.hashed_bytes == len("edited") + 1


def test_receiver_never_writes_through_a_symlinked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    (outside / "victim").write_text("keep me")
    rx = Receiver(Scanner(root))
    rx.begin("link/planted", Entry(Kind.DIR), None)
    rx.delete("link/victim", Entry(Kind.FILE, b"x" * 32, 7))
    done, failed = rx.result()
    assert done == [] and len(failed) == 2
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_unreadable_directory_is_unstable_not_empty(tmp_path, monkeypatch):
    """Root reads everything, so the EACCES of an unreadable directory is injected."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "f").write_text("x")
    real = Scanner._listing

    def listing(self, rel, mtime_ns, rules):
        if rel == "locked":
            raise PermissionError(13, "Permission denied")
        return real(self, rel, mtime_ns, rules)

    monkeypatch.setattr(Scanner, "_listing", listing)
    r = Scanner(tmp_path).scan()
    assert "locked" in r.unstable and "locked/f" not in r.tree


def test_stat_cache_survives_the_process(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for i in range(20):
        (root / f"f{i}").write_text(str(i))
    first = Scanner(root)
    tree = first.scan().tree
    first.save_cache(str(tmp_path / "c.scan"))
    later = Scanner(root)
    assert later.load_cache(str(tmp_path / "c.scan"))
    again = later.scan()
    assert again.tree == tree and again.hashed_bytes == 0
    assert not Scanner(tmp_path).load_cache(str(tmp_path / "c.scan"))  # another root
    (tmp_path / "bad.scan").write_bytes(b"TSC1garbage")
    assert not Scanner(root).load_cache(str(tmp_path / "bad.scan"))


def test_agent_keeps_its_stat_cache_between_sessions(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_text("a")
    env = {**os.environ, "TETHER_HOME": str(tmp_path / "th")}
    hello = P.encode_json(P.T.HELLO, {"v": P.VERSION, "root": str(root), "cache": True})
    stream = hello + P.encode_json(P.T.SCAN, {"full": True}) + P.encode_json(P.T.BYE, {})
    out = subprocess.run([sys.executable, "-m", "tether.cli.main", "agent", "sync",
                          str(root)], input=stream, capture_output=True, env=env, timeout=30,
                         check=True)
    frames = P.FrameDecoder().feed(out.stdout)
    assert [f.type for f in frames] == [P.T.READY, P.T.TREE]
    [cache] = (tmp_path / "th").rglob("*.scan")
    s = Scanner(root)
    assert s.load_cache(str(cache)) and s.scan().hashed_bytes == 0


def test_agent_refuses_another_protocol_version(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tether.cli.main", "agent", "sync",
                          str(tmp_path)], input=P.encode_json(P.T.HELLO, {"v": 99}),
                         capture_output=True, timeout=30, check=False)
    [frame] = P.FrameDecoder().feed(out.stdout)
    assert frame.type is P.T.ERROR and "version" in frame.json()["message"]
    assert out.returncode == 1


def _file(data: bytes) -> Entry:
    import blake3

    return Entry(Kind.FILE, blake3.blake3(data).digest(), len(data))


def test_receiver_picks_a_new_temp_name_when_one_is_taken(tmp_path, monkeypatch):
    from tether.sync import fs

    stems = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(fs.secrets, "token_hex", lambda n: next(stems))
    rx = Receiver(Scanner(tmp_path))
    (tmp_path / ".tether-sync-aaaa1").write_text("leftover of a crashed run")
    rx.begin("f", _file(b"new"), None)
    rx.data(b"new")
    rx.end()
    done, failed = rx.result()
    assert failed == [] and [p for p, _ in done] == ["f"]
    assert (tmp_path / "f").read_bytes() == b"new"
    assert (tmp_path / ".tether-sync-aaaa1").read_text() == "leftover of a crashed run"


def test_receiver_closes_directory_descriptors_beyond_its_limit(tmp_path, monkeypatch):
    from tether.sync import fs

    monkeypatch.setattr(fs, "MAX_DIR_FDS", 3)
    rx = Receiver(Scanner(tmp_path))
    for i in range(8):
        rx.begin(f"d{i}/e/f", _file(b"x"), None)
        rx.data(b"x")
        rx.end()
        assert len(rx._dfds) <= 4  # the limit, plus the one opened after the check
    done, failed = rx.result()
    assert failed == [] and len(done) == 8 and rx._dfds == {}
    assert all((tmp_path / f"d{i}" / "e" / "f").read_bytes() == b"x" for i in range(8))


def test_receiver_refuses_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "a").write_text("a file")
    rx = Receiver(Scanner(tmp_path))
    rx.begin("a/b", _file(b"x"), None)
    rx.delete("a/c", None)
    done, failed = rx.result()
    assert done == [] and all("parent" in why for _, why in failed) and len(failed) == 2


def test_receiver_replaces_a_directory_then_writes_below_a_new_one(tmp_path):
    (tmp_path / "d").mkdir()
    s = Scanner(tmp_path)
    s.scan()
    rx = Receiver(s)
    rx.begin("d/x", _file(b"1"), None)  # opens (and caches) the directory d
    rx.data(b"1")
    rx.end()
    rx.delete("d/x", s.cache["d/x"][1])
    rx.delete("d", Entry(Kind.DIR))
    rx.begin("d", _file(b"now a file"), None)
    rx.data(b"now a file")
    rx.end()
    done, failed = rx.result()
    assert failed == [] and [p for p, _ in done] == ["d/x", "d/x", "d", "d"]
    assert (tmp_path / "d").read_bytes() == b"now a file"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([P.T.DATA, P.T.BEGIN, P.T.END]),
                          st.integers(0, 300)), max_size=12),
       st.integers(1, 97))
def test_agent_reads_the_frames_of_any_stream_split_any_way(frames, step):
    """The agent's own reader (one fixed buffer, big frames read apart, DATA payloads as
    views) yields what FrameDecoder does, with a small buffer so every branch runs."""
    import socket
    import threading

    from tether.sync import agent

    payloads = [(t, bytes([i % 251]) * n) for i, (t, n) in enumerate(frames)]
    stream = b"".join(P.encode(t, p) for t, p in payloads)
    a, b = socket.socketpair()

    def writer() -> None:
        for i in range(0, len(stream), step):
            a.sendall(stream[i:i + step])
        a.close()

    threading.Thread(target=writer, daemon=True).start()
    old = agent.READ_BUF, agent.BIG_FRAME, agent.MIN_READ
    agent.READ_BUF, agent.BIG_FRAME, agent.MIN_READ = 512, 128, 16
    waits = []
    try:
        got = [(f.type, bytes(f.payload))
               for f in agent.read_frames(b.fileno(), lambda: waits.append(1))]
    finally:
        agent.READ_BUF, agent.BIG_FRAME, agent.MIN_READ = old
        b.close()
    assert got == payloads and len(waits) >= 1


@pytest.mark.parametrize("head,want", [
    (b"\x00\x00\x00\x00\x0a", (0, P.T.END)),
    (b"\x00\x10\x00\x00\x08", (1 << 20, P.T.DATA)),
    (b"\x01\x00\x00\x00\x08", (16 << 20, P.T.DATA)),
    (b"\x01\x00\x00\x01\x08", "too large"),
    (b"\x00\x00\x00\x01\x00", "unknown sync frame type 0"),
    (b"\x00\x00\x00\x01\x14", "unknown sync frame type 20"),
])
def test_frame_head(head, want):
    if isinstance(want, str):
        with pytest.raises(errors.ProtocolError, match=want):
            P.frame_head(head)
    else:
        assert P.frame_head(b"xx" + head, 2) == want


@pytest.mark.parametrize("size,hint", [
    (0, 0), (10, 10), (10, 3), (10, 500), ((1 << 20) + 7, (1 << 20) + 7), (3 << 20, 5),
    (2 << 20, 2 << 20),
], ids=["empty", "exact", "grew", "shrank", "just-over-a-frame", "grew-a-lot", "zeros"])
def test_whole_file_frames_carry_the_file_whatever_the_size_hint(tmp_path, size, hint):
    """The hint only sizes the first read: a file that grew or shrank since the scan is
    still sent whole (the receiver's digest check decides), runs of zeros as ZEROS."""
    from tether.sync.fs import file_frames

    data = bytes(size) if size == 2 << 20 else os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    frames = P.FrameDecoder().feed(b"".join(file_frames(str(tmp_path / "f"), None, hint)))
    got = b"".join(f.payload if f.type is P.T.DATA else bytes(P.decode_zeros(f.payload))
                   for f in frames)
    assert got == data
    assert all(len(f.payload) <= P.DATA_SIZE for f in frames)
    assert (P.T.ZEROS in {f.type for f in frames}) == (size == 2 << 20)


def test_scanner_counts_edits_to_its_stat_cache(tmp_path):
    """Session.save_cache skips the write when this count has not moved."""
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    s = Scanner(tmp_path)
    s.scan()
    first = s.edits
    s.scan()
    assert first == 2 and s.edits == first  # nothing changed: nothing to save
    (tmp_path / "a").write_text("edited")
    s.scan()
    assert s.edits == first + 1
    (tmp_path / "b").unlink()
    s.scan()
    assert s.edits == first + 2
    s.forget("nothing-there")
    assert s.edits == first + 2


def test_agent_widens_its_pipes_and_leaves_other_files_alone(tmp_path):
    import fcntl

    from tether.sync import agent

    r, w = os.pipe()
    plain = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
    try:
        agent._widen_pipe(r)
        agent._widen_pipe(plain)  # not a pipe: nothing to do, no error
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == agent.PIPE_SIZE
    finally:
        for fd in (r, w, plain):
            os.close(fd)


@pytest.mark.parametrize("payload,want", [
    (b'{"path":"a","expect":null}', {"path": "a", "expect": None}),
    ('{"path":"caf\\u00e9"}'.encode(), {"path": "caf\u00e9"}),
    ('{"path":"café"}'.encode(), {"path": "café"}),
    (b"[1]", "not an object"),
    (b"{", "malformed"),
    (b'{"path":"\xff"}', "malformed"),  # not UTF-8
    ('{"a":1}'.encode("utf-16"), "malformed"),  # JSON, but control frames are UTF-8
])
def test_decode_json(payload, want):
    if isinstance(want, str):
        with pytest.raises(errors.ProtocolError, match=want):
            P.decode_json(payload)
    else:
        assert P.decode_json(payload) == want
        assert P.decode_json(P.encode_json(P.T.BEGIN, want)[5:]) == want


@pytest.mark.parametrize("when", ["before-begin", "between-begin-and-end"])
@pytest.mark.parametrize("what", ["file", "dir", "symlink"])
def test_a_new_file_never_replaces_what_appeared_since_the_scan(tmp_path, when, what):
    s = Scanner(tmp_path)
    s.scan()  # empty: the reconciler expects nothing at "f"
    rx = Receiver(s)

    def appear() -> None:
        if what == "file":
            (tmp_path / "f").write_text("written meanwhile")
        elif what == "dir":
            (tmp_path / "f").mkdir()
        else:
            os.symlink("elsewhere", tmp_path / "f")

    if when == "before-begin":
        appear()
    rx.begin("f", _file(b"synced"), None)
    rx.data(b"synced")
    if when != "before-begin":
        appear()
    rx.end()
    done, failed = rx.result()
    assert done == [] and [p for p, _ in failed] == ["f"]
    assert "changed since the scan" in failed[0][1]
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temp file left behind
    if what == "file":
        assert (tmp_path / "f").read_text() == "written meanwhile"
    elif what == "symlink":
        assert os.readlink(tmp_path / "f") == "elsewhere"
