"""asciicast v2 recordings of terminal sessions (``tether sandbox attach --record FILE``).

Format (https://docs.asciinema.org/manual/asciicast/v2/): the first line is a JSON header
``{"version": 2, "width": W, "height": H, "timestamp": T, "env": {...}}``; every further line
is an event ``[seconds_since_start, "o", "text"]`` (output) or ``"i"`` (input). Output bytes
are decoded as UTF-8 incrementally, so a character split across two reads is written whole.
"""

from __future__ import annotations

import codecs
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tether.errors import LocalIOError, ProtocolError

VERSION = 2


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    timestamp: int
    env: tuple[tuple[str, str], ...] = ()
    title: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": VERSION, "width": self.width, "height": self.height,
                                "timestamp": self.timestamp}
        if self.env:
            data["env"] = dict(self.env)
        if self.title:
            data["title"] = self.title
        return data


def encode_event(elapsed: float, kind: str, text: str) -> str:
    return json.dumps([round(elapsed, 6), kind, text], ensure_ascii=False) + "\n"


def parse(text: str) -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    """Header and events of a recording (used by tests and by anyone replaying one)."""
    lines = text.splitlines()
    if not lines:
        raise ProtocolError("empty asciicast recording")
    header = json.loads(lines[0])
    if header.get("version") != VERSION:
        raise ProtocolError(f"asciicast version {header.get('version')!r} is not 2")
    events = []
    for line in lines[1:]:
        if line.strip():
            t, kind, data = json.loads(line)
            events.append((float(t), str(kind), str(data)))
    return header, events


class Recorder:
    """Writes one recording; feed it the bytes the terminal shows, then close it."""

    def __init__(self, fh: IO[str], header: Header, *, clock=time.monotonic) -> None:
        self._fh = fh
        self._clock = clock
        self._start = clock()
        self._decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in "oi"}
        fh.write(json.dumps(header.to_json()) + "\n")
        fh.flush()

    @classmethod
    def open(cls, path: Path, width: int, height: int, env: dict[str, str] | None = None,
             title: str | None = None) -> Recorder:
        try:
            fh = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise LocalIOError(f"could not write the recording {path}: {exc.strerror}") from exc
        header = Header(width=width, height=height, timestamp=int(time.time()),
                        env=tuple(sorted((env or {}).items())), title=title)
        return cls(fh, header)

    def _event(self, kind: str, data: bytes, final: bool = False) -> None:
        text = self._decoders[kind].decode(data, final)
        if text:
            self._fh.write(encode_event(self._clock() - self._start, kind, text))
            self._fh.flush()

    def output(self, data: bytes) -> None:
        self._event("o", data)

    def input(self, data: bytes) -> None:
        self._event("i", data)

    def close(self) -> None:
        self._event("o", b"", final=True)
        self._fh.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
