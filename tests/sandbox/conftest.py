"""Fixtures for the sandbox tests: a workspace, a fake host home with secrets, a spec maker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.sandbox.profiles import resolve_spec


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    (w / "README").write_text("project file\n")
    return w


@pytest.fixture
def host_home(isolated) -> Path:
    """The (isolated) host HOME holding an SSH key, a git token and a keyring file."""
    home = isolated.home
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETKEY\n")
    (home / ".git-credentials").write_text("https://u:ghp_SECRETTOKEN@github.com\n")
    (home / ".local/share/keyrings").mkdir(parents=True)
    (home / ".local/share/keyrings/login.keyring").write_text("SECRETKEYRING")
    return home


@pytest.fixture
def make_spec(workspace: Path):
    def make(profile: str, command: list[str], **kw):
        kw.setdefault("workdir", workspace)
        return resolve_spec(profile, command, **kw)
    return make


# The sandbox service's fixtures (a real API server): see sandbox_service_fixtures.py.
from .sandbox_service_fixtures import api_server, api_workdir  # noqa: E402, F401
