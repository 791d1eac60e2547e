"""Which AI coding agents are installed here, and whether their API keys are set.

``tether agents`` answers before you point an agent at a sandbox. Keys are reported as set or
unset, never shown: not even a prefix or a length reaches the output.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class AgentKind:
    """What tether knows about one agent: its program and the keys it reads."""

    name: str
    program: str
    description: str
    # Any one of these being set is enough; they are listed in the order the agent prefers.
    key_vars: tuple[str, ...]


AGENTS: tuple[AgentKind, ...] = (
    AgentKind("claude", "claude", "Claude Code (Anthropic)", ("ANTHROPIC_API_KEY",)),
    AgentKind("codex", "codex", "Codex CLI (OpenAI)", ("OPENAI_API_KEY",)),
    AgentKind("gemini", "gemini", "Gemini CLI (Google)", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
    AgentKind("opencode", "opencode", "opencode (any provider)",
              ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY")),
    AgentKind("aider", "aider", "aider (any provider)",
              ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY")),
)

# Every variable we report on, so `--json` shows the full picture even for missing agents.
KEY_VARS: tuple[str, ...] = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY",
                             "GOOGLE_API_KEY", "OPENROUTER_API_KEY")


@dataclass(frozen=True)
class AgentStatus:
    name: str
    description: str
    installed: bool
    path: str | None
    version: str | None
    keys: tuple[tuple[str, bool], ...]  # (variable, is set) - never the value

    @property
    def ready(self) -> bool:
        return self.installed and any(is_set for _, is_set in self.keys)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description,
                "installed": self.installed, "path": self.path, "version": self.version,
                "keys": {var: ("set" if is_set else "unset") for var, is_set in self.keys},
                "ready": self.ready}


def key_is_set(env: Mapping[str, str], var: str) -> bool:
    return bool(env.get(var, "").strip())


def agent_status(kind: AgentKind, env: Mapping[str, str], which: Callable[[str], str | None],
                 version_of: Callable[[str], str | None]) -> AgentStatus:
    """Pure given its probes: ``which`` finds a program, ``version_of`` asks it its version."""
    path = which(kind.program)
    return AgentStatus(name=kind.name, description=kind.description, installed=path is not None,
                       path=path, version=version_of(path) if path else None,
                       keys=tuple((var, key_is_set(env, var)) for var in kind.key_vars))


def _version_of(path: str) -> str | None:
    """First line of ``PROGRAM --version``; None if it fails or hangs (some agents phone home)."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip()[:100] if proc.returncode == 0 and lines else None


def detect_agents(env: Mapping[str, str] | None = None, *,
                  path: str | None = None) -> list[AgentStatus]:
    """Status of every known agent, looked up on ``path`` (default: ``$PATH``)."""
    env = os.environ if env is None else env
    search = path if path is not None else env.get("PATH", os.defpath)

    def which(program: str) -> str | None:
        return shutil.which(program, path=search)

    # `--version` of an agent can take seconds (node start-up, update checks): ask all at once
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(AGENTS)) as pool:
        return list(pool.map(lambda kind: agent_status(kind, env, which, _version_of), AGENTS))


def key_summary(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    return {var: ("set" if key_is_set(env, var) else "unset") for var in KEY_VARS}
