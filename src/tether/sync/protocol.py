"""The sync wire format: length-prefixed frames over one SSH exec channel (pure codec).

Layout of every frame (docs/sync-protocol.md has the full spec)::

    u32 length (big-endian, of what follows the type byte) | u8 type | payload

Control payloads are UTF-8 JSON objects; trees, chunk signatures and file data are binary.
The first frame each way is HELLO / READY carrying ``"v": VERSION``; a peer that does not know
the version answers ERROR and closes. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether import errors
from tether.sync.reconcile import Entry, Kind

VERSION = 1
MAX_PAYLOAD = 16 << 20
DATA_SIZE = 1 << 20  # file bytes per DATA frame
_HEAD = struct.Struct(">IB")
_RANGE = struct.Struct(">QI")
_ENTRY = struct.Struct(">BBQB")  # kind, executable, size, digest length
_CHUNK = struct.Struct(">QI16s")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

__all__ = [
    "VERSION",
    "Frame",
    "FrameDecoder",
    "T",
    "TreeDelta",
    "decode_json",
    "decode_range",
    "decode_sigs",
    "decode_tree",
    "encode",
    "encode_json",
    "encode_range",
    "encode_sigs",
    "encode_tree",
    "frame_head",
    "entry_from_json",
    "entry_to_json",
]


class T(enum.IntEnum):
    """Frame types. Requests come from the engine, replies and NOTIFY from the agent."""

    HELLO = 1  # json {v, root, excludes, create, watch}
    READY = 2  # json {v, root, pid}
    SCAN = 3  # json {full}
    TREE = 4  # binary TreeDelta
    SIGS = 5  # json {paths}: chunk signatures of the receiver's current files
    SIGS_REPLY = 6  # binary: one chunk list per requested path
    BEGIN = 7  # json {path, entry, expect}: a file/dir/symlink follows
    DATA = 8  # raw file bytes
    RANGE = 9  # >QI offset, length: bytes the receiver copies from its current file
    END = 10  # empty: the file is complete
    DELETE = 11  # json {path, expect}
    COMMIT = 12  # json {}: end of a batch; the receiver answers RESULT
    RESULT = 13  # json {done: [paths], failed: [[path, reason]]}
    GET = 14  # json {items: [[path, entry, sigs_present]]} (+ SIGS_REPLY frame): send files
    NOTIFY = 15  # json {}: the agent's watcher saw a change
    ERROR = 16  # json {message, hint}
    BYE = 17  # json {}
    ZEROS = 18  # >Q length: a run of zero bytes (the receiver leaves a hole)
    CLONE = 19  # json {from}: the content is the receiver's own file at `from` (renames)


@dataclass(frozen=True, slots=True)
class Frame:
    type: T
    payload: bytes  # a DATA frame read by the agent may carry a memoryview (see agent.py)

    def json(self) -> dict:
        return decode_json(self.payload)


def encode(ftype: T, payload: bytes | bytearray | memoryview = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise errors.ProtocolError(f"sync frame too large ({len(payload)} bytes)")
    return _HEAD.pack(len(payload), ftype) + bytes(payload)


def put_head(frame: bytearray, ftype: T, length: int) -> None:
    """Write the header into the first 5 bytes of a frame built in place."""
    if length > MAX_PAYLOAD:
        raise errors.ProtocolError(f"sync frame too large ({length} bytes)")
    _HEAD.pack_into(frame, 0, length, ftype)


# Made once: json.dumps with any argument builds a new encoder per call, and json.loads on
# bytes first sniffs the encoding (control payloads are UTF-8 by definition). A batch has a
# BEGIN per file, so both costs were paid 10k times for a 10k-file sync.
_JSON_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_JSON_DECODE = json.JSONDecoder().decode


def encode_json(ftype: T, obj: Mapping[str, Any]) -> bytes:
    return encode(ftype, _JSON_ENCODE(obj).encode())


def decode_json(payload: bytes) -> dict:
    try:
        obj = _JSON_DECODE(str(payload, "utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise errors.ProtocolError(f"malformed sync control frame: {exc}") from exc
    if not isinstance(obj, dict):
        raise errors.ProtocolError("malformed sync control frame: not an object")
    return obj


def frame_head(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, T]:
    """(payload length, type) of the frame header at ``buf[pos:pos + 5]``, checked."""
    length, ftype = _HEAD.unpack_from(buf, pos)
    if length > MAX_PAYLOAD:
        raise errors.ProtocolError(f"sync frame too large ({length} bytes)")
    kind = _TYPES.get(ftype)
    if kind is None:
        raise errors.ProtocolError(f"unknown sync frame type {ftype}")
    return length, kind


_TYPES = {int(t): t for t in T}  # a dict lookup: T(n) costs an Enum call per frame
HEAD_SIZE = _HEAD.size


class FrameDecoder:
    """Incremental: ``feed(bytes)`` returns the frames completed so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf, pos = self._buf, 0
        with memoryview(buf) as view:  # one copy per payload (a bytearray slice is two)
            while len(buf) - pos >= 5:
                length, kind = frame_head(buf, pos)
                if len(buf) - pos - 5 < length:
                    break
                frames.append(Frame(kind, bytes(view[pos + 5:pos + 5 + length])))
                pos += 5 + length
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


# -- entries ---------------------------------------------------------------------------------


def entry_to_json(e: Entry | None) -> list | None:
    if e is None:
        return None
    return [int(e.kind), e.digest.hex(), e.size, e.executable, e.target]


_KINDS = {int(k): k for k in Kind}


def entry_from_json(v: Any) -> Entry | None:
    if v is None:
        return None
    try:
        kind, digest, size, executable, target = v
        return Entry(_KINDS[kind], bytes.fromhex(digest), int(size), bool(executable),
                     str(target))
    except (TypeError, ValueError, KeyError) as exc:
        raise errors.ProtocolError(f"malformed entry in sync frame: {v!r}") from exc


def _name(text: str) -> bytes:
    # File names are bytes on the wire; undecodable ones travel as surrogate escapes (PEP 383).
    return text.encode("utf-8", "surrogateescape")


def _put_bytes(out: bytearray, b: bytes) -> None:
    out += _U16.pack(len(b))
    out += b


@dataclass
class TreeDelta:
    """A scan result relative to the previous one sent (``full``: relative to nothing)."""

    full: bool
    changed: dict[str, Entry] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    unstable: list[str] = field(default_factory=list)
    root_missing: bool = False


def encode_tree(d: TreeDelta) -> bytes:
    out = bytearray([int(d.full) | (int(d.root_missing) << 1)])
    out += _U32.pack(len(d.changed))
    for path, e in d.changed.items():
        _put_bytes(out, _name(path))
        out += _ENTRY.pack(e.kind, e.executable, e.size, len(e.digest))
        out += e.digest
        _put_bytes(out, _name(e.target))
    for paths in (d.removed, d.unstable):
        out += _U32.pack(len(paths))
        for p in paths:
            _put_bytes(out, _name(p))
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def take(self, s: struct.Struct) -> tuple:
        if self.pos + s.size > len(self.view):
            raise errors.ProtocolError("truncated sync frame")
        v = s.unpack_from(self.view, self.pos)
        self.pos += s.size
        return v

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.view):
            raise errors.ProtocolError("truncated sync frame")
        b = bytes(self.view[self.pos:self.pos + n])
        self.pos += n
        return b

    def name(self) -> str:
        (n,) = self.take(_U16)
        return self.raw(n).decode("utf-8", "surrogateescape")


def decode_tree(data: bytes) -> TreeDelta:
    r = _Reader(data)
    flags = r.raw(1)[0]
    d = TreeDelta(full=bool(flags & 1), root_missing=bool(flags & 2))
    (n,) = r.take(_U32)
    for _ in range(n):
        path = r.name()
        kind, ex, size, dlen = r.take(_ENTRY)
        try:
            k = Kind(kind)
        except ValueError as exc:
            raise errors.ProtocolError(f"unknown entry kind {kind}") from exc
        digest = r.raw(dlen)
        d.changed[path] = Entry(k, digest, size, bool(ex), r.name())
    for target in (d.removed, d.unstable):
        (n,) = r.take(_U32)
        target.extend(r.name() for _ in range(n))
    return d


def tree_delta(old: Mapping[str, Entry], new: Mapping[str, Entry], *, full: bool,
               unstable: Iterable[str] = (), root_missing: bool = False,
               only: Iterable[str] | None = None) -> TreeDelta:
    """What to send so a peer holding ``old`` ends up with ``new``.

    ``only``: the paths that can differ (from a partial scan), to avoid comparing everything.
    """
    if full:
        return TreeDelta(True, dict(new), [], sorted(unstable), root_missing)
    if only is not None:
        changed = {p: new[p] for p in only if p in new and old.get(p) != new[p]}
        removed = [p for p in only if p in old and p not in new]
        return TreeDelta(False, changed, removed, sorted(unstable), root_missing)
    changed = {p: e for p, e in new.items() if old.get(p) != e}
    removed = [p for p in old if p not in new]
    return TreeDelta(False, changed, removed, sorted(unstable), root_missing)


def apply_delta(tree: dict[str, Entry], d: TreeDelta) -> dict[str, Entry]:
    if d.full:
        return dict(d.changed)
    for p in d.removed:
        tree.pop(p, None)
    tree.update(d.changed)
    return tree


# -- chunk signatures and ranges ---------------------------------------------------------------

Chunk = tuple[int, int, bytes]  # offset, length, 16-byte BLAKE3 prefix


def encode_sigs(lists: Iterable[list[Chunk]]) -> bytes:
    out = bytearray()
    lists = list(lists)
    out += _U32.pack(len(lists))
    for chunks in lists:
        out += _U32.pack(len(chunks))
        for off, length, digest in chunks:
            out += _CHUNK.pack(off, length, digest)
    return bytes(out)


def decode_sigs(data: bytes) -> list[list[Chunk]]:
    r = _Reader(data)
    (n,) = r.take(_U32)
    out = []
    for _ in range(n):
        (m,) = r.take(_U32)
        out.append([r.take(_CHUNK) for _ in range(m)])
    return out


def encode_range(offset: int, length: int) -> bytes:
    return encode(T.RANGE, _RANGE.pack(offset, length))


_ZEROS = struct.Struct(">Q")


def encode_zeros(length: int) -> bytes:
    return encode(T.ZEROS, _ZEROS.pack(length))


def decode_zeros(payload: bytes) -> int:
    if len(payload) != _ZEROS.size:
        raise errors.ProtocolError("malformed ZEROS frame")
    return _ZEROS.unpack(payload)[0]


def decode_range(payload: bytes) -> tuple[int, int]:
    if len(payload) != _RANGE.size:
        raise errors.ProtocolError("malformed RANGE frame")
    return _RANGE.unpack(payload)
