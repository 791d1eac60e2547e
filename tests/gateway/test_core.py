"""The gateway's pure core: bearer parsing, token digests, one-time codes, keys, rate limits."""

from __future__ import annotations

import subprocess

import pytest

from tether.gateway import core

ED = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqN3lq9S9Jq3r3lVw1G0m3Xr2x9g1vJ0o1YbqMZJf1C "
      "me@laptop")


@pytest.mark.parametrize("header,token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), (None, None), ("", None),
    ("Basic abc", None), ("Bearer", None), ("Bearer " + "x" * 600, None),
], ids=["plain", "case-and-space", "none", "empty", "basic", "no-token", "too-long"])
def test_parse_bearer(header, token) -> None:
    assert core.parse_bearer(header) == token


def test_token_matches_only_stored_digests() -> None:
    t1, t2 = core.new_token(), core.new_token()
    assert t1 != t2 and t1.startswith("tt_")
    digests = [core.digest(t1)]
    assert core.token_matches(t1, digests)
    assert not core.token_matches(t2, digests)
    assert not core.token_matches(None, digests)
    assert not core.token_matches(core.digest(t1), digests)  # the digest is not a token
    assert not core.token_matches(t1, [])


def test_new_code_alphabet() -> None:
    codes = {core.new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == core.CODE_LENGTH and set(c) <= set(core.CODE_ALPHABET) for c in codes)


NOW = 1_000_000


@pytest.mark.parametrize("entries,code,outcome,used", [
    ([core.CodeEntry(core.digest("abc"), NOW + 60)], "abc", core.Redeem.OK, [NOW]),
    ([core.CodeEntry(core.digest("abc"), NOW + 60)], "abd", core.Redeem.WRONG, [None]),
    ([core.CodeEntry(core.digest("abc"), NOW + 60, NOW - 5)], "abc", core.Redeem.SPENT,
     [NOW - 5]),
    ([core.CodeEntry(core.digest("abc"), NOW)], "abc", core.Redeem.SPENT, [None]),
    ([core.CodeEntry(core.digest("a"), NOW + 9), core.CodeEntry(core.digest("b"), NOW + 9)],
     "b", core.Redeem.OK, [None, NOW]),
    ([], "abc", core.Redeem.WRONG, []),
], ids=["ok", "wrong", "reused", "expired", "second-of-two", "no-codes"])
def test_redeem(entries, code, outcome, used) -> None:
    got, after = core.redeem(entries, code, NOW)
    assert got is outcome
    assert [e.used_at for e in after] == used


@pytest.mark.parametrize("entries,code,outcome", [
    ([core.CodeEntry(core.digest("abc"), NOW + 60)], "abc", core.Redeem.OK),
    ([core.CodeEntry(core.digest("abc"), NOW + 60)], "abd", core.Redeem.WRONG),
    ([core.CodeEntry(core.digest("abc"), NOW + 60, NOW - 5)], "abc", core.Redeem.SPENT),
    ([core.CodeEntry(core.digest("abc"), NOW)], "abc", core.Redeem.SPENT),
], ids=["ok", "wrong", "reused", "expired"])
def test_peek_answers_like_redeem_without_using_the_code(entries, code, outcome) -> None:
    assert core.peek(entries, code, NOW) is outcome
    assert core.redeem(entries, code, NOW)[0] is outcome  # still redeemable as it was


FP = "SHA256:" + "A" * 43


@pytest.mark.parametrize("expected,actual,ok", [
    (None, FP, True), (FP, FP, True), ("SHA256:" + "B" * 43, FP, False),
], ids=["older-client-says-nothing", "same", "other"])
def test_fingerprint_matches(expected, actual, ok) -> None:
    assert core.fingerprint_matches(expected, actual) is ok


def test_redeem_forgets_long_expired_codes() -> None:
    old = core.CodeEntry(core.digest("old"), NOW - core.CODE_MEMORY_S - 1)
    fresh = core.CodeEntry(core.digest("new"), NOW + 60)
    outcome, after = core.redeem([old, fresh], "old", NOW)
    assert outcome is core.Redeem.SPENT
    assert after == [fresh]


def test_validate_real_keys(tmp_path) -> None:
    for kind in ("ed25519", "ecdsa", "rsa"):
        path = tmp_path / kind
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
        line = path.with_suffix(".pub").read_text().strip()
        assert core.validate_public_key(line) == " ".join(line.split()[:2])


@pytest.mark.parametrize("line", [
    "", "ssh-ed25519", 'command="rm -rf /" ' + ED, ED + "\nssh-ed25519 AAAA x",
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-ed25519 !!!notbase64",
    "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKqN3lq9S9Jq3r3lVw1G0m3Xr2x9g1vJ0o1YbqMZJf1C",
    "ssh-ed25519 AAAA",
], ids=["empty", "no-blob", "options", "two-lines", "dss", "bad-base64", "type-mismatch",
        "short-blob"])
def test_validate_rejects(line) -> None:
    with pytest.raises(ValueError):
        core.validate_public_key(line)


GOOD = {"v": 1, "workspace_id": "ws_1", "code": "abc", "public_key": ED, "client_name": "lap"}


@pytest.mark.parametrize("body,message", [
    ([], "JSON object"), ({**GOOD, "v": 2}, "version"), ({**GOOD, "code": ""}, "code"),
    ({**GOOD, "code": 5}, "code"), ({k: v for k, v in GOOD.items() if k != "public_key"},
                                    "public_key"),
    ({**GOOD, "client_name": "a b"}, "client_name"), ({**GOOD, "code": "x" * 200}, "too long"),
    ({**GOOD, "public_key": "nope"}, "public_key"),
], ids=["not-object", "version", "empty-code", "int-code", "no-key", "bad-client", "long-code",
        "bad-key"])
def test_parse_pair_request_rejects(body, message) -> None:
    with pytest.raises(ValueError) as info:
        core.parse_pair_request(body)
    assert message in str(info.value)


def test_parse_pair_request_normalizes_key() -> None:
    req = core.parse_pair_request(GOOD)
    assert req.public_key == " ".join(ED.split()[:2])
    assert req.client_name == "lap"
    assert req.host_key_fingerprint is None  # optional: older clients leave it out
    assert core.parse_pair_request({**GOOD, "host_key_fingerprint": FP}).host_key_fingerprint \
        == FP
    with pytest.raises(ValueError, match="host_key_fingerprint"):
        core.parse_pair_request({**GOOD, "host_key_fingerprint": FP + "A"})


def test_rate_limiter_per_client_and_overall() -> None:
    rl = core.RateLimiter(per_client=2, overall=3, window_s=10)
    assert rl.check("a", 0) is None
    assert rl.check("a", 1) is None
    assert rl.check("a", 2) == pytest.approx(8)  # a's oldest hit leaves the window at t=10
    assert rl.check("b", 3) is None
    assert rl.check("c", 4) == pytest.approx(6)  # overall budget of 3 spent
    assert rl.check("a", 10.5) is None  # the window slid
