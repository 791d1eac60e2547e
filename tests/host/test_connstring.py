"""The connection string codec (pure): round trips and every malformed input."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.errors import UsageError
from tether.link.connstring import ConnectionString, valid_gateway_url, ws_url

FP = "SHA256:" + "A" * 43
GOOD = ConnectionString("http://127.0.0.1:8765", "ws_abc123", "code-123456", 1_900_000_000, FP)


def _raw(payload: dict) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return "tether1:" + body


def test_round_trip() -> None:
    text = GOOD.encode()
    assert text.startswith("tether1:")
    assert ConnectionString.decode(text) == GOOD
    assert ConnectionString.decode(f"  {text}\n") == GOOD


@given(url=st.sampled_from(["http://127.0.0.1:1", "https://a-b.trycloudflare.com",
                            "https://x.ngrok-free.app/sub"]),
       ws=st.from_regex(r"[A-Za-z0-9_-]{4,64}", fullmatch=True),
       code=st.from_regex(r"[A-Za-z0-9_-]{6,128}", fullmatch=True),
       exp=st.integers(1, 2**40))
def test_round_trip_any(url: str, ws: str, code: str, exp: int) -> None:
    cs = ConnectionString(url, ws, code, exp, FP)
    assert ConnectionString.decode(cs.encode()) == cs


GOOD_PAYLOAD = {"v": 1, "u": GOOD.url, "w": GOOD.workspace_id, "c": GOOD.pairing_code,
                "e": GOOD.expires_at, "k": FP}


@pytest.mark.parametrize("text,fragment", [
    ("", "not a tether connection string"),
    ("http://127.0.0.1:8765", "not a tether connection string"),
    ("tether2:abc", "newer tether"),
    ("tether1:", "malformed"),
    ("tether1:!!!!", "malformed"),
    ("tether1:" + "A" * 5000, "malformed"),
    ("tether1:eyJ2Ijo", "malformed"),
    (_raw([1, 2]), "malformed"),
    (_raw({**GOOD_PAYLOAD, "v": 2}), "version 2"),
    (_raw({k: v for k, v in GOOD_PAYLOAD.items() if k != "c"}), "lacks the field 'c'"),
    (_raw({**GOOD_PAYLOAD, "u": "ftp://x"}), "not an http(s) URL"),
    (_raw({**GOOD_PAYLOAD, "u": "http://u:p@x"}), "not an http(s) URL"),
    (_raw({**GOOD_PAYLOAD, "u": "http://x:99999"}), "not an http(s) URL"),
    (_raw({**GOOD_PAYLOAD, "w": "a b"}), "workspace id"),
    (_raw({**GOOD_PAYLOAD, "c": "x"}), "pairing code"),
    (_raw({**GOOD_PAYLOAD, "e": "soon"}), "expiry"),
    (_raw({**GOOD_PAYLOAD, "e": True}), "expiry"),
    (_raw({**GOOD_PAYLOAD, "k": "MD5:aa"}), "fingerprint"),
], ids=["empty", "plain-url", "newer-version-prefix", "empty-body", "bad-alphabet", "too-long",
        "truncated", "not-object", "unknown-version", "missing-code", "bad-scheme",
        "credentials-in-url", "bad-port", "bad-workspace", "short-code", "expiry-not-int",
        "expiry-bool", "bad-fingerprint"])
def test_malformed(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        ConnectionString.decode(text)
    assert fragment in info.value.message
    assert info.value.hint


@pytest.mark.parametrize("url,ok", [
    ("http://127.0.0.1:8765", True), ("https://x.trycloudflare.com", True),
    ("https://x.example/prefix", True), ("http://", False), ("x.com", False),
    ("https://x.com/?q=1", False), ("https://x.com/#f", False), ("https://x .com", False),
], ids=["local", "cloudflare", "prefix", "no-host", "no-scheme", "query", "fragment", "space"])
def test_valid_gateway_url(url: str, ok: bool) -> None:
    assert valid_gateway_url(url) is ok


@pytest.mark.parametrize("base,expected", [
    ("http://127.0.0.1:8/", "ws://127.0.0.1:8/.tether/ssh"),
    ("https://a.b", "wss://a.b/.tether/ssh"),
    ("https://a.b/p/", "wss://a.b/p/.tether/ssh"),
], ids=["http", "https", "prefix"])
def test_ws_url(base: str, expected: str) -> None:
    assert ws_url(base, "/.tether/ssh") == expected
