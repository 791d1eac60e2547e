"""`tether down`: stop the workspace `tether up --detach` started."""

from __future__ import annotations

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer()


@app.command()
def down(json: JsonOption = False) -> None:
    """Stop the running workspace (sshd, gateway, tunnel)."""
    from tether.host.api import down as stop_workspace

    out = Output(json)
    result = stop_workspace()
    out.result(result, (f"workspace stopped (pid {result['pid']})" if result["stopped"]
                        else result["reason"]))
