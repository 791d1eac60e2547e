"""`tether agents`: detection on PATH, key presence reported, key values never printed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether.sandbox.agents import AGENTS, agent_status

SECRET = "sk-ant-SUPERSECRETVALUE-1234567890"


@pytest.mark.parametrize(("name", "env", "installed", "keys", "ready"), [
    ("claude", {"ANTHROPIC_API_KEY": "x"}, True, {"ANTHROPIC_API_KEY": True}, True),
    ("claude", {}, True, {"ANTHROPIC_API_KEY": False}, False),
    ("claude", {"ANTHROPIC_API_KEY": "  "}, True, {"ANTHROPIC_API_KEY": False}, False),
    ("gemini", {"GOOGLE_API_KEY": "x"}, True,
     {"GEMINI_API_KEY": False, "GOOGLE_API_KEY": True}, True),
    ("codex", {"OPENAI_API_KEY": "x"}, False, {"OPENAI_API_KEY": True}, False),
    ("aider", {"OPENROUTER_API_KEY": "x"}, True, None, True),
], ids=["claude-ready", "claude-no-key", "blank-key-is-unset", "gemini-google-key",
        "codex-not-installed", "aider-any-provider"])
def test_agent_status(name, env, installed, keys, ready):
    kind = next(k for k in AGENTS if k.name == name)
    status = agent_status(kind, env, lambda p: f"/bin/{p}" if installed else None,
                          lambda path: "1.0")
    assert status.installed is installed and status.ready is ready
    if keys is not None:
        assert dict(status.keys) == keys
    assert status.version == ("1.0" if installed else None)


def _fake_agent(bin_dir: Path, name: str, version: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho '{version}'\n")
    path.chmod(0o755)


def test_cli_detects_agents_on_path_and_never_prints_keys(isolated, cli, tmp_path,
                                                          monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_agent(bin_dir, "claude", "1.2.3 (Claude Code)")
    _fake_agent(bin_dir, "aider", "aider 0.80")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(var, raising=False)

    data = cli("agents", "--json").json()
    by_name = {a["name"]: a for a in data["agents"]}
    assert by_name["claude"]["installed"] and by_name["claude"]["version"] == "1.2.3 (Claude Code)"
    assert by_name["claude"]["keys"] == {"ANTHROPIC_API_KEY": "set"} and by_name["claude"]["ready"]
    assert not by_name["codex"]["installed"] and not by_name["codex"]["ready"]
    assert by_name["aider"]["ready"]  # any one provider key is enough
    assert data["keys"]["ANTHROPIC_API_KEY"] == "set" and data["keys"]["OPENAI_API_KEY"] == "unset"

    human = cli("agents")
    assert human.exit_code == 0 and "claude" in human.stdout
    for result in (human, cli("agents", "--json")):
        assert SECRET not in result.stdout + result.stderr
        assert SECRET[:12] not in result.stdout + result.stderr
    assert os.environ["ANTHROPIC_API_KEY"] == SECRET  # reading does not consume it


def test_an_agent_whose_version_hangs_or_fails_is_still_listed(isolated, tmp_path, monkeypatch):
    from tether.sandbox.agents import detect_agents

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "codex"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    [codex] = [a for a in detect_agents({}, path=str(bin_dir)) if a.name == "codex"]
    assert codex.installed and codex.version is None
