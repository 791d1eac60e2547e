"""The forge adapters against local servers that follow each forge's documented API."""

from __future__ import annotations

import pytest

from tether.errors import (AlreadyExistsError, AuthError, ConnectError, NotFoundError,
                           PeerError, PermissionDeniedError, ProtocolError, RateLimitedError)
from tether.forges.base import Credentials, Provider
from tether.ssh.keys import generate_key


@pytest.fixture
def pubkeys(tmp_path):
    """Three fresh public key lines and their fingerprints."""
    out = []
    for i in range(3):
        info = generate_key(f"k{i}", directory=tmp_path / "keys", comment=f"test{i}")
        out.append((info.public_path.read_text().strip(), info.fingerprint))
    return out


def test_whoami_names_the_account(forge):
    with forge.client() as c:
        user = c.whoami()
    assert user.login == "octocat"
    assert user.name == "Octo Cat"


def test_auth_header_is_the_documented_one(forge):
    with forge.client() as c:
        c.whoami()
    _, _, headers = forge.fake.requests[-1]
    headers = {k.lower(): v for k, v in headers.items()}
    if forge.provider is Provider.GITHUB:
        assert headers["authorization"] == "Bearer ghp_full"
        assert headers["x-github-api-version"] == "2022-11-28"
    elif forge.provider is Provider.GITLAB:
        assert headers["private-token"] == "glpat-full"
    else:
        import base64

        assert headers["authorization"] == "Basic " + base64.b64encode(
            b"octo@example.com:ATATT-full").decode()


def test_add_list_delete_round_trip(forge, pubkeys):
    line, fingerprint = pubkeys[0]
    with forge.client() as c:
        added = c.add_key("laptop", line)
        assert added.title == "laptop"
        assert added.fingerprint == fingerprint
        listed = c.list_keys()
        assert [(k.id, k.title, k.fingerprint) for k in listed] == [
            (added.id, "laptop", fingerprint)]
        c.delete_key(added.id)
        assert c.list_keys() == []


def test_list_follows_pagination(forge, pubkeys):
    forge.fake.per_page_max = 2  # the server hands out pages of 2; the client must follow
    with forge.client() as c:
        for i, (line, _) in enumerate(pubkeys):
            c.add_key(f"key {i}", line)
        listed = c.list_keys()
    assert sorted(k.fingerprint for k in listed) == sorted(fp for _, fp in pubkeys)
    assert len([r for r in forge.fake.requests if r[0] == "GET" and "key" in r[1]]) >= 2


def test_bad_token_is_an_auth_error_with_a_login_hint(forge):
    bad = Credentials("nope", "octo@example.com")
    with forge.client(bad) as c, pytest.raises(AuthError) as err:
        c.whoami()
    assert type(err.value) is AuthError
    assert "refused the token" in err.value.message
    assert f"tether git login {forge.provider.value}" in err.value.hint


def test_missing_scope_is_named(forge, pubkeys):
    with forge.client(forge.weak) as c:
        assert c.list_keys() == []  # reading is allowed
        with pytest.raises(PermissionDeniedError) as err:
            c.add_key("laptop", pubkeys[0][0])
    assert forge.missing_scope in err.value.message
    assert err.value.hint  # where to make a token with the right scopes
    assert forge.fake.keys == []


def test_github_fine_grained_token_names_the_permission(github, pubkeys):
    with github.client(Credentials("github_pat_fine")) as c, \
            pytest.raises(PermissionDeniedError) as err:
        c.add_key("laptop", pubkeys[0][0])
    assert "git_ssh_keys=write" in err.value.message


def test_duplicate_key_is_already_exists(forge, pubkeys):
    line = pubkeys[0][0]
    with forge.client() as c:
        c.add_key("first", line)
        with pytest.raises(AlreadyExistsError) as err:
            c.add_key("second", line)
    assert "already" in err.value.message
    assert len(forge.fake.keys) == 1


def test_rate_limit_says_when_to_retry(forge):
    forge.fake.rate_limited = True
    with forge.client() as c, pytest.raises(RateLimitedError) as err:
        c.whoami()
    assert "rate limit" in err.value.message
    expected = {Provider.GITHUB: 42, Provider.GITLAB: 30, Provider.BITBUCKET: None}[
        forge.provider]
    if expected is None:
        assert err.value.retry_after is None and "try again" in err.value.hint
    else:
        assert expected - 3 <= err.value.retry_after <= expected
        assert "retry in" in err.value.message and "UTC" in err.value.hint


def test_deleting_an_unknown_key_is_not_found(forge):
    key_id = "{00000000-0000-0000-0000-000000000000}" if forge.provider is \
        Provider.BITBUCKET else "999999"
    with forge.client() as c, pytest.raises(NotFoundError):
        c.delete_key(key_id)


def test_unreachable_forge_is_a_connect_error(forge):
    from tests.conftest import free_port
    from tether.forges.accounts import client_class

    url = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on once closed
    with client_class(forge.provider)(url, forge.full) as c, pytest.raises(ConnectError) as err:
        c.whoami()
    assert "--base-url" in err.value.hint


@pytest.mark.parametrize(("override", "error", "text"), [
    ((200, {"Content-Type": "text/html"}, b"<html>captive portal</html>"), ProtocolError,
     "not JSON"),
    ((502, {}, b"bad gateway"), PeerError, "HTTP 502"),
    ((418, {}, {"message": "teapot"}), PeerError, "HTTP 418 teapot"),
], ids=["html", "502", "unexpected-status"])
def test_odd_answers_become_tether_errors(forge, override, error, text):
    forge.fake.override = override
    with forge.client() as c, pytest.raises(error) as err:
        c.whoami()
    assert text in err.value.message
