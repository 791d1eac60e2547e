"""The repository format codec: bytes <-> typed values, and nothing else.

This module is pure: no file, socket or clock access (the I/O shells in ``repo.py``,
``backup.py`` and ``restore.py`` call it). Every decoder checks the version it reads and
rejects what it does not know, and validates structure (names, ids, sizes) so a hostile
repository cannot make a reader misbehave. The spec is docs/snapshot-format.md.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import blake3
import zstandard

from tether.errors import IntegrityError, ProtocolError

VERSION = 1
ID_LEN = 32
DATA, TREE = 0, 1  # blob types
FILE, DIR, LINK = "f", "d", "l"  # tree entry types

PACK_MAGIC = b"TTHRPACK"
PACK_TRAILER = struct.Struct("<IB3x8s")  # header length, version, magic
PACK_HEADER_MAGIC = b"TPKH"
INDEX_MAGIC = b"TIDX"
ENTRY = struct.Struct("<B32sQIII")  # type, id, segment offset, segment length, offset, length
_COUNT = struct.Struct("<4sBI")
_PACK_REF = struct.Struct("<32sI")

MAX_SEGMENT = 64 << 20  # a decoder refuses bigger segments: caps memory a hostile pack can ask
MAX_LISTING = 1 << 30  # pack headers and indexes: 53 bytes per blob, ~20M blobs
MAX_NAME = 4096
_HEX_ID = re.compile(r"[0-9a-f]{64}")
_LEVEL = 3


def blob_id(data: bytes | memoryview) -> bytes:
    """The id of a blob: BLAKE3 of its plaintext, 32 bytes."""
    return blake3.blake3(data).digest()


def object_id(data: bytes) -> str:
    """The name of a stored object (pack, index, snapshot): hex BLAKE3 of its bytes."""
    return blake3.blake3(data).hexdigest()


def check_version(v: object, what: str) -> None:
    if v != VERSION:
        raise ProtocolError(f"{what} has format version {v!r}; this tether reads version "
                            f"{VERSION}", "upgrade tether to read this repository")


# -- packs -------------------------------------------------------------------------------


class BlobEntry(NamedTuple):
    """Where one blob lives inside a pack: a segment (zstd frame) and a slice of its plaintext.

    A NamedTuple, not a dataclass: indexes decode tens of thousands of these per push."""

    type: int
    id: bytes
    seg_offset: int
    seg_length: int
    offset: int
    length: int


def compressor(threads: int = 0) -> zstandard.ZstdCompressor:
    # No zstd frame checksum: every blob is checked against its BLAKE3 id anyway, and the
    # checksum costs ~20% of compression time.
    return zstandard.ZstdCompressor(level=_LEVEL, write_checksum=False, threads=threads)


def encode_segment(blobs: Sequence[bytes | memoryview], cctx: zstandard.ZstdCompressor) -> bytes:
    """One zstd frame holding the blobs back to back (they compress together, like a tar)."""
    return cctx.compress(b"".join(blobs))


def decode_segment(frame: bytes, expected_size: int | None = None,
                   limit: int = MAX_SEGMENT) -> bytes:
    limit = expected_size or limit
    try:
        # The frame header states the plaintext size; refuse a huge claim before allocating.
        claimed = zstandard.frame_content_size(frame)
        if claimed > limit:
            raise IntegrityError(f"pack segment claims {claimed} bytes (limit {limit})",
                                 "the repository is corrupt or was tampered with")
        out = zstandard.ZstdDecompressor().decompress(frame, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt pack segment: {exc}",
                             "run `tether snapshot verify --data` on the store") from exc
    if expected_size is not None and len(out) != expected_size:
        raise IntegrityError("pack segment has the wrong size",
                             "run `tether snapshot verify --data` on the store")
    return out


def encode_entries(entries: Iterable[BlobEntry]) -> bytes:
    return b"".join(ENTRY.pack(e.type, e.id, e.seg_offset, e.seg_length, e.offset, e.length)
                    for e in entries)


def decode_entries(buf: bytes, offset: int, count: int) -> list[BlobEntry]:
    end = offset + count * ENTRY.size
    if end > len(buf):
        raise IntegrityError("truncated blob list")
    out = list(map(BlobEntry._make, ENTRY.iter_unpack(buf[offset:end])))
    if any(e.type not in (DATA, TREE) for e in out):
        raise IntegrityError("unknown blob type in a blob list")
    return out


def encode_pack_tail(entries: Sequence[BlobEntry]) -> bytes:
    """The header (a zstd frame listing every blob) plus the fixed 16-byte trailer."""
    body = _COUNT.pack(PACK_HEADER_MAGIC, VERSION, len(entries)) + encode_entries(entries)
    header = zstandard.ZstdCompressor(level=_LEVEL).compress(body)
    return header + PACK_TRAILER.pack(len(header), VERSION, PACK_MAGIC)


def decode_pack_trailer(trailer: bytes) -> int:
    """The header length from a pack's last 16 bytes."""
    if len(trailer) != PACK_TRAILER.size:
        raise IntegrityError("pack too short for a trailer")
    length, version, magic = PACK_TRAILER.unpack(trailer)
    if magic != PACK_MAGIC:
        raise IntegrityError("not a tether pack (bad magic)")
    check_version(version, "pack")
    return length


def decode_pack_header(header: bytes, pack_size: int | None = None) -> list[BlobEntry]:
    body = decode_segment(header, limit=MAX_LISTING)
    if len(body) < _COUNT.size:
        raise IntegrityError("pack header too short")
    magic, version, count = _COUNT.unpack_from(body)
    if magic != PACK_HEADER_MAGIC:
        raise IntegrityError("bad pack header magic")
    check_version(version, "pack header")
    entries = decode_entries(body, _COUNT.size, count)
    if pack_size is not None:
        for e in entries:
            if e.seg_offset + e.seg_length > pack_size or e.offset + e.length > MAX_SEGMENT:
                raise IntegrityError("pack header points outside the pack")
    return entries


def split_pack(pack: bytes) -> list[BlobEntry]:
    """Entries of a whole pack, read from its own tail."""
    hlen = decode_pack_trailer(pack[-PACK_TRAILER.size:])
    start = len(pack) - PACK_TRAILER.size - hlen
    if start < 0:
        raise IntegrityError("pack header length exceeds the pack")
    return decode_pack_header(pack[start:len(pack) - PACK_TRAILER.size], start)


# -- index -------------------------------------------------------------------------------


def encode_index(packs: dict[bytes, Sequence[BlobEntry]]) -> bytes:
    parts = [_COUNT.pack(INDEX_MAGIC, VERSION, len(packs))]
    for pack_id in sorted(packs):
        entries = packs[pack_id]
        parts.append(_PACK_REF.pack(pack_id, len(entries)))
        parts.append(encode_entries(entries))
    return zstandard.ZstdCompressor(level=_LEVEL).compress(b"".join(parts))


def decode_index(data: bytes) -> dict[bytes, list[BlobEntry]]:
    body = decode_segment(data, limit=MAX_LISTING)
    if len(body) < _COUNT.size:
        raise IntegrityError("index too short")
    magic, version, npacks = _COUNT.unpack_from(body)
    if magic != INDEX_MAGIC:
        raise IntegrityError("bad index magic")
    check_version(version, "index")
    pos = _COUNT.size
    out: dict[bytes, list[BlobEntry]] = {}
    for _ in range(npacks):
        if pos + _PACK_REF.size > len(body):
            raise IntegrityError("truncated index")
        pack_id, count = _PACK_REF.unpack_from(body, pos)
        pos += _PACK_REF.size
        out[pack_id] = decode_entries(body, pos, count)
        pos += count * ENTRY.size
    return out


# -- trees -------------------------------------------------------------------------------


class Entry(NamedTuple):
    """One name in a directory. ``ref``: content ids (file), tree id (dir), target (link)."""

    name: str
    type: str
    mode: int
    mtime_ns: int
    size: int
    ref: tuple[bytes, ...] | bytes | str


def check_name(name: object) -> str:
    """A name restore may create: one path component, never "", ".", "..", "/" or NUL."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name
            or len(name) > MAX_NAME):
        raise IntegrityError(f"unsafe name in tree: {name!r}",
                             "the repository was tampered with or is corrupt")
    return name


def encode_tree(entries: Iterable[Entry]) -> bytes:
    """Canonical JSON (sorted by name, ASCII-escaped so any byte name round-trips)."""
    rows = []
    for e in sorted(entries, key=lambda e: e.name):
        if e.type == FILE:
            ref: object = [i.hex() for i in e.ref]  # type: ignore[union-attr]
        elif e.type == DIR:
            ref = e.ref.hex()  # type: ignore[union-attr]
        else:
            ref = e.ref
        rows.append([e.name, e.type, e.mode, e.mtime_ns, e.size, ref])
    return json.dumps({"v": VERSION, "entries": rows}, separators=(",", ":")).encode()


def decode_tree(data: bytes) -> list[Entry]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"tree is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise IntegrityError("tree is not an object")
    check_version(doc.get("v"), "tree")
    rows = doc.get("entries")
    if not isinstance(rows, list):
        raise IntegrityError("tree has no entry list")
    out: list[Entry] = []
    seen: set[str] = set()
    for row in rows:
        e = _decode_entry(row)
        if e.name in seen:
            raise IntegrityError(f"duplicate name in tree: {e.name!r}",
                                 "the repository was tampered with or is corrupt")
        seen.add(e.name)
        out.append(e)
    return out


def _decode_entry(row: object) -> Entry:
    if not (isinstance(row, list) and len(row) == 6):
        raise IntegrityError("malformed tree entry")
    name, typ, mode, mtime_ns, size, ref = row
    check_name(name)
    if not (_is_int(mode) and 0 <= mode <= 0o7777 and _is_int(mtime_ns) and _is_int(size)
            and size >= 0):
        raise IntegrityError(f"malformed tree entry {name!r}")
    if typ == FILE and isinstance(ref, list) and all(_is_hex_id(i) for i in ref):
        return Entry(name, FILE, mode, mtime_ns, size, tuple(bytes.fromhex(i) for i in ref))
    if typ == DIR and _is_hex_id(ref):
        return Entry(name, DIR, mode, mtime_ns, size, bytes.fromhex(ref))
    if typ == LINK and isinstance(ref, str) and ref and "\0" not in ref:
        return Entry(name, LINK, mode, mtime_ns, size, ref)
    raise IntegrityError(f"malformed tree entry {name!r} (type {typ!r})")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hex_id(v: object) -> bool:
    return isinstance(v, str) and _HEX_ID.fullmatch(v) is not None


# -- snapshots, config, locks ------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    """A virtualenv inside the snapshot: where it was, which interpreter, what was installed."""

    path: str          # relative to the snapshot root, "/"-separated ("" = the root itself)
    home: str          # pyvenv.cfg "home": the base interpreter's bin dir
    version: str       # pyvenv.cfg "version"
    freeze: tuple[str, ...]  # "name==version" lines, as `pip freeze` prints them


@dataclass(frozen=True)
class Snapshot:
    tree: bytes
    time_ns: int
    hostname: str
    path: str                         # absolute source path on the machine that pushed
    tags: tuple[str, ...] = ()
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    venvs: tuple[Venv, ...] = field(default=())


def encode_snapshot(s: Snapshot) -> bytes:
    doc = {"v": VERSION, "tree": s.tree.hex(), "time_ns": s.time_ns, "hostname": s.hostname,
           "path": s.path, "tags": list(s.tags),
           "stats": {"files": s.files, "dirs": s.dirs, "bytes": s.bytes},
           "venvs": [{"path": v.path, "home": v.home, "version": v.version,
                      "freeze": list(v.freeze)} for v in s.venvs]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_snapshot(data: bytes) -> Snapshot:
    try:
        doc = json.loads(data)
        check_version(doc.get("v"), "snapshot")
        stats = doc.get("stats", {})
        if not _is_hex_id(doc["tree"]):
            raise IntegrityError("snapshot names no valid tree")
        venvs = tuple(Venv(str(v["path"]), str(v["home"]), str(v["version"]),
                           tuple(str(x) for x in v["freeze"])) for v in doc.get("venvs", []))
        return Snapshot(tree=bytes.fromhex(doc["tree"]), time_ns=int(doc["time_ns"]),
                        hostname=str(doc["hostname"]), path=str(doc["path"]),
                        tags=tuple(str(t) for t in doc.get("tags", [])),
                        files=int(stats.get("files", 0)), dirs=int(stats.get("dirs", 0)),
                        bytes=int(stats.get("bytes", 0)), venvs=venvs)
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"malformed snapshot object: {exc}") from exc


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunk_min: int = 256 << 10
    chunk_avg: int = 1 << 20
    chunk_max: int = 4 << 20
    large_file: int = 8 << 20   # files this big or bigger are cut into FastCDC chunks


def encode_config(c: RepoConfig) -> bytes:
    return json.dumps({"v": VERSION, "id": c.id,
                       "chunker": {"min": c.chunk_min, "avg": c.chunk_avg, "max": c.chunk_max},
                       "large_file": c.large_file}, sort_keys=True).encode()


def decode_config(data: bytes) -> RepoConfig:
    try:
        doc = json.loads(data)
        check_version(doc.get("v"), "repository config")
        ch = doc["chunker"]
        cfg = RepoConfig(id=str(doc["id"]), chunk_min=int(ch["min"]), chunk_avg=int(ch["avg"]),
                         chunk_max=int(ch["max"]), large_file=int(doc["large_file"]))
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"malformed repository config: {exc}") from exc
    # Both bounds keep every segment under MAX_SEGMENT (a segment closes past 4 MiB, and one
    # blob is at most a chunk or a file under large_file).
    if not (0 < cfg.chunk_min <= cfg.chunk_avg <= cfg.chunk_max <= (32 << 20)
            and 0 < cfg.large_file <= (32 << 20)):
        raise IntegrityError("repository config has impossible chunker sizes")
    return cfg


@dataclass(frozen=True)
class Lock:
    kind: str       # "push" (shared) or "prune" (exclusive)
    hostname: str
    pid: int
    time: float     # unix seconds; refreshed while the holder runs


def encode_lock(lock: Lock) -> bytes:
    return json.dumps({"v": VERSION, "kind": lock.kind, "hostname": lock.hostname,
                       "pid": lock.pid, "time": lock.time}).encode()


def decode_lock(data: bytes) -> Lock:
    try:
        doc = json.loads(data)
        check_version(doc.get("v"), "lock")
        kind = str(doc["kind"])
        if kind not in ("push", "prune"):
            raise IntegrityError(f"unknown lock kind {kind!r}")
        return Lock(kind, str(doc["hostname"]), int(doc["pid"]), float(doc["time"]))
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"malformed lock: {exc}") from exc


# -- keys --------------------------------------------------------------------------------


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def pack_id_of_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    return bytes.fromhex(name) if _is_hex_id(name) else None
