"""``tether mcp``: the sandbox tools over the Model Context Protocol (stdio).

A coding agent that speaks MCP (Claude Code, Codex, Gemini CLI, opencode...) starts
``tether mcp`` and gets tools to run commands in throwaway sandboxes and to manage named ones.
The tools call the same library as the CLI and the HTTP API (``tether.sandbox.service`` and
``named``), so every run is audited (``via: mcp``). Errors reach the agent as tool errors that
carry tether's message and hint. stdout is the protocol channel: nothing else may write to it.
"""

from __future__ import annotations

import base64
import functools
import inspect
from pathlib import Path
from typing import Any

from tether.errors import TetherError, UsageError

try:  # the tools' signatures name it, and MCPServer reads them from this module's globals
    from mcp.server.mcpserver import Context
except ImportError:  # pragma: no cover - `tether mcp` then reports the missing SDK
    Context = None  # type: ignore[assignment,misc]
from tether.sandbox import named, schemas
from tether.sandbox.service import Service

INSTRUCTIONS = (
    "Run shell commands in bubblewrap sandboxes. `run` uses a fresh sandbox each call (nothing "
    "persists). Named sandboxes (sandbox_create, then sandbox_exec) keep files under /workspace "
    "and /home/sandbox between calls. Profiles: restrictive (no network, read-only workspace), "
    "moderate (default), permissive."
)


def _result(result) -> dict[str, Any]:
    return schemas.RunResponse.from_result(result).model_dump()


def _tool_error(exc: TetherError) -> Exception:
    from mcp.server.mcpserver.exceptions import ToolError

    text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    return ToolError(text)


def _client_name(ctx) -> str | None:
    """The agent's name from its MCP initialize request (for the audit log's `who`)."""
    try:
        info = ctx.session.client_params.client_info
    except AttributeError:
        return None
    return f"mcp client {info.name}" if info is not None and info.name else None


def _tool(server):
    """Register a function as a tool whose TetherErrors reach the agent as tool errors."""
    def register(fn):
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args, **kw):
                try:
                    return await fn(*args, **kw)
                except TetherError as exc:
                    raise _tool_error(exc) from exc
        else:
            @functools.wraps(fn)
            def wrapper(*args, **kw):
                try:
                    return fn(*args, **kw)
                except TetherError as exc:
                    raise _tool_error(exc) from exc
        server.tool()(wrapper)
        return fn
    return register


def create_server(workdir: Path | None = None):
    """The MCP server; ``workdir`` is the workspace of ``run`` (default: the current dir)."""
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError as exc:
        from tether.errors import SystemDependencyError

        raise SystemDependencyError("the MCP Python SDK (mcp >= 2) is not installed",
                                    "pip install 'tether[mcp]'") from exc

    from tether._version import __version__

    service = Service(workdir=Path(workdir or Path.cwd()))
    server = MCPServer("tether-sandbox", version=__version__, instructions=INSTRUCTIONS,
                       log_level="WARNING")
    tool = _tool(server)

    @tool
    async def run(command: list[str], ctx: Context, profile: str | None = None,
                  network: str | None = None, allow_domains: list[str] | None = None,
                  timeout: float | None = None, stdin: str | None = None) -> dict[str, Any]:
        """Run a command (argv list) in a fresh sandbox; returns exit_code, stdout, stderr."""
        req = schemas.RunRequest(command=command, profile=profile, network=network,
                                 allow_domains=allow_domains or [], timeout=timeout, stdin=stdin)
        return _result(await service.run(req, via="mcp", client=_client_name(ctx)))

    @tool
    def sandbox_create(name: str, profile: str | None = None, network: str | None = None,
                       allow_domains: list[str] | None = None,
                       command: list[str] | None = None) -> dict[str, Any]:
        """Create a named sandbox with its own persistent /workspace and home."""
        options = schemas.RunOptions(profile=profile, network=network,
                                     allow_domains=allow_domains or [])
        return named.create(name, options, command=command,
                            workdir=service.workdir).to_schema().model_dump()

    @tool
    def sandbox_list() -> dict[str, Any]:
        """The named sandboxes and their status."""
        return {"sandboxes": [b.to_schema().model_dump() for b in named.list_sandboxes()]}

    @tool
    async def sandbox_exec(name: str, command: list[str], ctx: Context,
                           stdin: str | None = None,
                           timeout: float | None = None) -> dict[str, Any]:
        """Run a command in a named sandbox (files persist; sees its running main command)."""
        data = None if stdin is None else stdin.encode()
        return _result(await named.exec_async(name, command, stdin=data, timeout=timeout,
                                              via="mcp", client=_client_name(ctx)))

    _file_and_lifecycle_tools(tool)
    return server


def _file_and_lifecycle_tools(tool) -> None:
    @tool
    def sandbox_read_file(name: str, path: str) -> dict[str, Any]:
        """Read a file from a named sandbox (/workspace/... or /home/sandbox/...)."""
        data = named.read_file(name, path)
        try:
            return {"path": path, "encoding": "utf-8", "content": data.decode()}
        except UnicodeDecodeError:
            return {"path": path, "encoding": "base64",
                    "content": base64.b64encode(data).decode()}

    @tool
    def sandbox_write_file(name: str, path: str, content: str,
                           encoding: str = "utf-8") -> dict[str, Any]:
        """Write a file into a named sandbox; encoding is utf-8 or base64."""
        if encoding not in ("utf-8", "base64"):
            raise UsageError(f"unknown encoding {encoding!r}", "use utf-8 or base64")
        try:
            data = base64.b64decode(content, validate=True) if encoding == "base64" \
                else content.encode()
        except ValueError as exc:
            raise UsageError(f"content is not valid base64: {exc}") from exc
        named.write_file(name, path, data)
        return {"path": path, "bytes": len(data)}

    @tool
    def sandbox_start(name: str) -> dict[str, Any]:
        """Start a named sandbox's main command in the background."""
        return named.start(name).to_schema().model_dump()

    @tool
    def sandbox_stop(name: str) -> dict[str, Any]:
        """Stop a named sandbox's main command."""
        return named.stop(name).to_schema().model_dump()

    @tool
    def sandbox_remove(name: str, force: bool = False) -> dict[str, Any]:
        """Delete a named sandbox and its files."""
        named.remove(name, force=force)
        return {"removed": name}


def serve_stdio(workdir: Path | None = None) -> None:
    """Run the MCP server on stdin/stdout until the client closes the stream."""
    import anyio

    server = create_server(workdir)
    anyio.run(server.run_stdio_async)
