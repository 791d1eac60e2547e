"""Sandboxes: run untrusted code (AI coding agents, tests) in isolation, in milliseconds.

- ``tether.sandbox.profiles``: profiles as data, resolved into a ``SandboxSpec``; spec -> bwrap argv.
- ``tether.sandbox.runner``: runs a spec under bubblewrap (namespaces, seccomp, limits, proxy).
- ``tether.sandbox.named``: named sandboxes whose writable layer survives CLI restarts.
- ``tether.sandbox.pool``: pre-started sandboxes for runs that start in a few milliseconds.
- ``tether.sandbox.api`` / ``client``: the HTTP API (``tether serve``) and its Python SDK.
- ``tether.sandbox.mcp_server``: the same tools over MCP (``tether mcp``).
- ``tether.sandbox.audit``: the append-only log of every run.
- ``tether.sandbox.trust``: which project tether.toml files the user trusted (their
  ``[sandbox]`` section applies only then).

Names load on first use, so importing the package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "AsyncClient": "tether.sandbox.client",
    "Client": "tether.sandbox.client",
    "ProjectConfig": "tether.sandbox.trust",
    "list_trusted": "tether.sandbox.trust",
    "revoke_trust": "tether.sandbox.trust",
    "trust_project_config": "tether.sandbox.trust",
}
# public name -> its name in the defining module, where they differ
_RENAMED = {"revoke_trust": "revoke", "trust_project_config": "trust"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
