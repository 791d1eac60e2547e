"""Host profiles on the laptop: save/load/list/delete, token in secrets, bad files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tether.errors import AuthError, ConfigError, NotFoundError, UsageError
from tether.link import profiles


def _profile(name: str = "gpu") -> profiles.HostProfile:
    return profiles.HostProfile(
        name=name, workspace_id="ws_abcd", url="http://127.0.0.1:9", user="me",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB host",
        identity_file=Path("/k/id"), known_hosts_file=profiles.known_hosts_path(name),
        host_key_alias=profiles.host_key_alias(name))


def test_save_load_list_delete(isolated) -> None:
    p = _profile()
    profiles.save_profile(p)
    path = profiles.profile_path("gpu")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "token" not in path.read_text()
    assert profiles.load_profile("gpu") == p
    profiles.set_access_token("gpu", "secret-token")
    assert profiles.access_token("gpu") == "secret-token"
    assert [x.name for x in profiles.list_profiles()] == ["gpu"]
    assert profiles.delete_profile("gpu") is True
    assert profiles.delete_profile("gpu") is False
    assert profiles.list_profiles() == []
    with pytest.raises(AuthError):
        profiles.access_token("gpu")


def test_missing_profile(isolated) -> None:
    with pytest.raises(NotFoundError) as info:
        profiles.load_profile("nope")
    assert "tether hosts" in info.value.hint


@pytest.mark.parametrize("content", ["{not json", '{"v": 9}', '{"v": 1, "name": "gpu"}'],
                         ids=["not-json", "unknown-version", "missing-fields"])
def test_broken_profile(isolated, content: str) -> None:
    path = profiles.profile_path("gpu")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ConfigError):
        profiles.load_profile("gpu")
    assert profiles.list_profiles() == []


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "..", "ä"],
                         ids=["empty", "dash-first", "slash", "space", "too-long", "dots",
                              "non-ascii"])
def test_bad_names(isolated, name: str) -> None:
    with pytest.raises(UsageError):
        profiles.profile_path(name)
