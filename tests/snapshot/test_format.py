"""The pure format codec: table-driven cases and hypothesis round trips."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import IntegrityError, ProtocolError
from tether.snapshot import format as fmt

ID = st.binary(min_size=32, max_size=32)
NAME = st.text(min_size=1, max_size=40).filter(
    lambda n: n not in (".", "..") and "/" not in n and "\0" not in n)


def test_codec_module_does_no_io():
    tree = ast.parse(Path(fmt.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"os", "socket", "asyncio", "subprocess", "pathlib", "shutil"}


ENTRY = st.builds(
    fmt.Entry, name=NAME, type=st.just(fmt.FILE), mode=st.integers(0, 0o7777),
    mtime_ns=st.integers(-(2**62), 2**62), size=st.integers(0, 2**50),
    ref=st.lists(ID, max_size=4).map(tuple))
DIR_ENTRY = st.builds(fmt.Entry, name=NAME, type=st.just(fmt.DIR), mode=st.integers(0, 0o777),
                      mtime_ns=st.integers(0, 2**62), size=st.just(0), ref=ID)
LINK_ENTRY = st.builds(fmt.Entry, name=NAME, type=st.just(fmt.LINK), mode=st.just(0o777),
                       mtime_ns=st.integers(0, 2**62), size=st.just(0),
                       ref=st.text(min_size=1).filter(lambda t: "\0" not in t))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(ENTRY, DIR_ENTRY, LINK_ENTRY), max_size=20,
                unique_by=lambda e: e.name))
def test_tree_round_trip(entries):
    data = fmt.encode_tree(entries)
    assert fmt.decode_tree(data) == sorted(entries, key=lambda e: e.name)
    # canonical: the order entries come in does not change the bytes (so not the id)
    assert fmt.encode_tree(list(reversed(entries))) == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(fmt.BlobEntry, type=st.sampled_from([fmt.DATA, fmt.TREE]), id=ID,
                          seg_offset=st.integers(0, 2**40), seg_length=st.integers(0, 2**31),
                          offset=st.integers(0, 2**31), length=st.integers(0, 2**31)),
                max_size=30))
def test_pack_tail_and_index_round_trip(entries):
    tail = fmt.encode_pack_tail(entries)
    hlen = fmt.decode_pack_trailer(tail[-16:])
    assert fmt.decode_pack_header(tail[-16 - hlen:-16]) == entries
    packs = {b"\x01" * 32: entries, b"\x02" * 32: entries[:3]}
    assert fmt.decode_index(fmt.encode_index(packs)) == packs


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=10))
def test_segment_round_trip_and_split_pack(blobs):
    cctx = fmt.compressor()
    frame = fmt.encode_segment(blobs, cctx)
    assert fmt.decode_segment(frame) == b"".join(blobs)
    entries, off = [], 0
    for b in blobs:
        entries.append(fmt.BlobEntry(fmt.DATA, fmt.blob_id(b), 0, len(frame), off, len(b)))
        off += len(b)
    pack = frame + fmt.encode_pack_tail(entries)
    assert fmt.split_pack(pack) == entries


@given(st.builds(fmt.Snapshot, tree=ID, time_ns=st.integers(0, 2**62), hostname=st.text(),
                 path=st.text(), tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
                 files=st.integers(0, 10**9), dirs=st.integers(0, 10**9),
                 bytes=st.integers(0, 2**60),
                 venvs=st.lists(st.builds(fmt.Venv, path=st.text(), home=st.text(),
                                          version=st.text(),
                                          freeze=st.lists(st.text()).map(tuple)),
                                max_size=2).map(tuple)))
def test_snapshot_round_trip(snap):
    assert fmt.decode_snapshot(fmt.encode_snapshot(snap)) == snap


def _tree(*rows, v=1) -> bytes:
    return json.dumps({"v": v, "entries": [list(r) for r in rows]}).encode()


H = "ab" * 32
BAD_TREES = [
    ("dotdot", _tree(["..", "f", 0o644, 0, 0, []])),
    ("dot", _tree([".", "d", 0o755, 0, 0, H])),
    ("slash", _tree(["a/b", "f", 0o644, 0, 0, []])),
    ("absolute", _tree(["/etc", "f", 0o644, 0, 0, []])),
    ("nul", _tree(["a\0b", "f", 0o644, 0, 0, []])),
    ("empty-name", _tree(["", "f", 0o644, 0, 0, []])),
    ("duplicate", _tree(["a", "f", 0o644, 0, 0, []], ["a", "f", 0o644, 0, 0, []])),
    ("link-then-file", _tree(["x", "l", 0o777, 0, 0, "/etc"], ["x", "f", 0o644, 0, 1, [H]])),
    ("device-type", _tree(["dev", "c", 0o644, 0, 0, ""])),
    ("fifo-type", _tree(["p", "p", 0o644, 0, 0, ""])),
    ("negative-size", _tree(["a", "f", 0o644, 0, -1, []])),
    ("mode-too-big", _tree(["a", "f", 0o17777, 0, 0, []])),
    ("bad-id", _tree(["a", "f", 0o644, 0, 0, ["zz"]])),
    ("dir-without-id", _tree(["a", "d", 0o755, 0, 0, []])),
    ("bool-size", _tree(["a", "f", 0o644, 0, True, []])),
    ("short-row", _tree(["a", "f", 0o644])),
    ("not-json", b"{nope"),
    ("not-object", b"[]"),
]


@pytest.mark.parametrize("data", [d for _, d in BAD_TREES], ids=[i for i, _ in BAD_TREES])
def test_malicious_trees_are_rejected(data):
    with pytest.raises(IntegrityError):
        fmt.decode_tree(data)


@pytest.mark.parametrize("decode,data", [
    (fmt.decode_tree, _tree(v=2)),
    (fmt.decode_snapshot, json.dumps({"v": 2, "tree": H}).encode()),
    (fmt.decode_config, json.dumps({"v": 99}).encode()),
    (fmt.decode_lock, json.dumps({"v": 0}).encode()),
    (fmt.decode_pack_trailer, fmt.PACK_TRAILER.pack(10, 2, fmt.PACK_MAGIC)),
], ids=["tree", "snapshot", "config", "lock", "pack"])
def test_unknown_versions_are_rejected(decode, data):
    with pytest.raises(ProtocolError, match="version"):
        decode(data)


@pytest.mark.parametrize("data,match", [
    (b"\0" * 16, "magic"),
    (b"short", "too short"),
], ids=["bad-magic", "short"])
def test_bad_pack_trailers(data, match):
    with pytest.raises(IntegrityError, match=match):
        fmt.decode_pack_trailer(data)


@pytest.mark.parametrize("where", [0, 5, 0.5, -1], ids=["magic", "header", "middle", "end"])
def test_a_corrupt_segment_never_passes_for_the_original(where):
    """Frames carry no checksum (blob ids are checked instead): a flipped byte either fails to
    decode or decodes to something whose id no longer matches."""
    blob = b"hello world " * 500
    frame = bytearray(fmt.encode_segment([blob], fmt.compressor()))
    pos = int(len(frame) * where) if isinstance(where, float) else where
    frame[pos] ^= 0xFF
    try:
        out = fmt.decode_segment(bytes(frame), len(blob))
    except IntegrityError:
        return
    assert fmt.blob_id(out) != fmt.blob_id(blob)


@pytest.mark.parametrize("cfg", [
    {"v": 1, "id": "x", "chunker": {"min": 10, "avg": 5, "max": 20}, "large_file": 1},
    {"v": 1, "id": "x", "chunker": {"min": 0, "avg": 5, "max": 20}, "large_file": 1},
    {"v": 1, "id": "x"},
    {"v": 1, "id": "x", "chunker": {"min": 1, "avg": 2, "max": 3}, "large_file": 1 << 30},
], ids=["min-above-avg", "zero-min", "no-chunker", "huge-large-file"])
def test_bad_configs(cfg):
    with pytest.raises(IntegrityError):
        fmt.decode_config(json.dumps(cfg).encode())


def test_config_round_trip():
    c = fmt.RepoConfig(id="abc")
    assert fmt.decode_config(fmt.encode_config(c)) == c


@pytest.mark.parametrize("key,expected", [
    ("packs/ab/" + "ab" * 32, bytes.fromhex("ab" * 32)),
    ("packs/ab/notanid", None),
], ids=["valid", "invalid"])
def test_pack_id_of_key(key, expected):
    assert fmt.pack_id_of_key(key) == expected
    if expected:
        assert fmt.pack_key(expected) == key


def test_a_segment_claiming_a_huge_size_is_refused_before_allocating():
    import zstandard

    frame = zstandard.ZstdCompressor().compress(b"\0" * (fmt.MAX_SEGMENT + 1))
    with pytest.raises(IntegrityError, match="claims"):
        fmt.decode_segment(frame)


# -- diff_trees: laws over random trees (pure: trees live in a dict) ---------------------

def _build(spec, trees: dict) -> bytes:
    """spec: {name: bytes (file) | dict (dir)} -> tree id, trees filled with decoded entries."""
    entries = []
    for name, v in spec.items():
        if isinstance(v, dict):
            entries.append(fmt.Entry(name, fmt.DIR, 0o755, 0, 0, _build(v, trees)))
        else:
            entries.append(fmt.Entry(name, fmt.FILE, 0o644, 0, len(v), (fmt.blob_id(v),)))
    data = fmt.encode_tree(entries)
    tid = fmt.blob_id(data)
    trees[tid] = fmt.decode_tree(data)
    return tid


SPEC = st.recursive(st.binary(max_size=3),
                    lambda kids: st.dictionaries(st.sampled_from("abcd"), kids, max_size=3),
                    max_leaves=8).filter(lambda v: isinstance(v, dict))


@settings(max_examples=100, deadline=None)
@given(SPEC, SPEC)
def test_diff_laws(x, y):
    from tether.snapshot.api import diff_trees

    trees: dict = {}
    a, b = _build(x, trees), _build(y, trees)
    assert diff_trees(trees.__getitem__, a, a) == []
    forward = diff_trees(trees.__getitem__, a, b)
    backward = diff_trees(trees.__getitem__, b, a)
    assert (forward == []) == (a == b)
    flip = {"+": "-", "-": "+"}
    assert sorted((flip.get(c.status, c.status), c.path) for c in forward) == \
        sorted((c.status, c.path) for c in backward)
