"""`tether mcp`: the sandbox tools as an MCP server on stdin/stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Serve the sandbox tools over MCP (stdio).")


@app.command()
def mcp(
    workdir: Annotated[Optional[Path], typer.Option(
        help="The workspace of the run tool (default: current directory).")] = None,
) -> None:
    """Run an MCP server on stdio exposing run, exec, files and sandbox lifecycle tools."""
    from tether.sandbox.mcp_server import serve_stdio

    serve_stdio(workdir)
