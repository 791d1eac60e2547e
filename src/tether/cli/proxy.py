"""`tether proxy NAME`: the ssh ProxyCommand (stdin/stdout <-> the workspace's SSH bridge)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer()


@app.command()
def proxy(name: Annotated[str, typer.Argument(help="The host name")]) -> None:
    """Relay stdin/stdout to the host's sshd through its gateway (used by ssh, not people)."""
    from tether.link.proxy import run_proxy

    raise typer.Exit(run_proxy(name))
