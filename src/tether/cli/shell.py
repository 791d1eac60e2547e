"""`tether shell NAME`: an interactive login shell on a workspace (PTY, window resize)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command(help="Open a login shell on host NAME (a PTY when stdin is a terminal; the "
                  "window size follows yours; your terminal is restored on exit).")
def shell(name: Annotated[str, typer.Argument(help="Host name (see `tether hosts`).")]) -> None:
    from tether.link.daemon_client import exec_request, run_cli

    raise typer.Exit(run_cli(exec_request(name, None)))
