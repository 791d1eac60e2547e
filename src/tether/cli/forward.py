"""`tether forward NAME PORT[:PORT]... [--reverse]`: forward TCP ports until Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(add_completion=False)


@app.command(help="Forward ports of host NAME: LISTEN[:TARGET], listening here and reaching "
                  "the host's 127.0.0.1:TARGET; with --reverse listening on the host and "
                  "reaching this machine. Port 0 picks a free one. Ctrl-C stops.")
def forward(
    name: Annotated[str, typer.Argument(help="Host name (see `tether hosts`).")],
    ports: Annotated[list[str], typer.Argument(help="LISTEN[:TARGET] (one or more).")],
    reverse: Annotated[bool, typer.Option("--reverse", "-R",
                                          help="Listen on the host, reach this machine.")]
    = False,
    json_mode: JsonOption = False,
) -> None:
    from tether.link.api import forward as start_forward
    from tether.link.pool import run_sync

    out = Output(json_mode)
    fw = start_forward(name, ports, reverse=reverse)
    lines = "\n".join(f"forwarding {f.spec.describe(name, f.bound_port)}" for f in fw.forwards)
    out.result({"host": name, "forwards": fw.to_dicts()}, lines)
    out.info("Ctrl-C stops")
    try:
        run_sync(fw.wait_closed())
    except KeyboardInterrupt:
        fw.close()
        out.info("stopped")
