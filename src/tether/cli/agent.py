"""`tether agent sync ROOT`: the remote half of `tether sync` (hidden; started over SSH).

It speaks the framed protocol of docs/sync-protocol.md on stdin/stdout and is not meant to be
run by hand.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(add_completion=False, hidden=True,
                  help="Remote helpers started by tether over SSH (not for direct use).")


@app.callback()
def agent() -> None:
    """Remote helpers started by tether over SSH."""


@app.command(help="Serve the sync protocol for ROOT on stdin/stdout.")
def sync(root: Annotated[str, typer.Argument(help="The sync root on this machine.")]) -> None:
    from tether.sync.agent import main

    raise typer.Exit(main(root))
