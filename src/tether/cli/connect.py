"""`tether connect STRING --name NAME`: pair with a workspace, or update its URL."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer()


@app.command()
def connect(
    string: Annotated[str, typer.Argument(help="The connection string `tether up` printed")],
    name: Annotated[str, typer.Option("--name", "-n", help="What to call this host here")],
    json: JsonOption = False,
) -> None:
    """Pair with a workspace once (pinning its host key); then `ssh tether-NAME` works."""
    from tether.link.pairing import connect as do_connect

    out = Output(json)
    r = do_connect(string, name)
    d = r.to_dict()

    def human(o: Output) -> None:
        verb = "paired with" if r.paired else "updated the URL of"
        o.out.print(f"{verb} {d['workspace_id']} as {name!r} ({d['url']})", markup=False)
        o.out.print(f"host key pinned: {d['host_key_fingerprint']}", markup=False)
        o.out.print(f"try: ssh {d['ssh_host']}   or   tether exec {name} -- hostname",
                    markup=False)

    out.result(d, human)
