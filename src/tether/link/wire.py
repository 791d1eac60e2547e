"""Frames between the CLI (`exec`, `shell`, `status`, `cp`) and the local link daemon
(docs/link-daemon.md).

Pure and stdlib-only: the CLI's fast path imports this and nothing heavy. A frame is a
one-byte kind, a 4-byte big-endian payload length, then the payload.
"""

from __future__ import annotations

import json
import struct

VERSION = 1
HEADER = struct.Struct(">cI")
MAX_PAYLOAD = 16 * 1024 * 1024

# client -> daemon
OPEN = b"H"  # JSON request, first frame
STDIN = b"I"  # bytes for the remote stdin; empty payload = EOF
WINCH = b"W"  # JSON {"cols", "rows"}
SIGNAL = b"S"  # signal name, ASCII ("INT", "TERM", "HUP")
# daemon -> client
STDOUT = b"O"
STDERR = b"E"
EXIT = b"X"  # JSON {"exit_code", "signal"}; last frame
ERROR = b"R"  # JSON {"kind", "message", "hint"}; last frame
REPLY = b"A"  # JSON answer to ping/shutdown/status/copy; last frame
PROGRESS = b"P"  # JSON event of a status/copy request: accepted, plan, advance

KINDS = frozenset({OPEN, STDIN, WINCH, SIGNAL, STDOUT, STDERR, EXIT, ERROR, REPLY, PROGRESS})


class WireError(ValueError):
    """A malformed frame (unknown kind or oversized payload)."""


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, obj: object) -> bytes:
    return encode(kind, json.dumps(obj, separators=(",", ":")).encode())


class Decoder:
    """Incremental decoder: ``feed(bytes)`` -> complete (kind, payload) frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, size = HEADER.unpack_from(self._buf)
            if kind not in KINDS:
                raise WireError(f"unknown frame kind {kind!r}")
            if size > MAX_PAYLOAD:
                raise WireError(f"frame of {size} bytes exceeds {MAX_PAYLOAD}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)
