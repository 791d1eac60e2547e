"""`tether hosts [--json]`, `tether hosts rm NAME`: the workspaces this machine is paired with."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="The workspaces this machine is paired with.",
                  invoke_without_command=True)


@app.callback()
def hosts(ctx: typer.Context, json: JsonOption = False) -> None:
    """List paired hosts (name, workspace, URL, user)."""
    if ctx.invoked_subcommand is not None:
        return
    from tether.link.profiles import list_profiles
    from tether.ssh.keys import fingerprint_of_public_key

    out = Output(json)
    rows = [{"name": p.name, "workspace_id": p.workspace_id, "url": p.url, "user": p.user,
             "ssh_host": p.host_key_alias,
             "host_key_fingerprint": fingerprint_of_public_key(p.host_key)}
            for p in list_profiles()]

    def human(o: Output) -> None:
        if not rows:
            o.out.print("no hosts yet: pair with `tether connect <string> --name NAME`",
                        markup=False)
            return
        o.table(["name", "ssh host", "workspace", "url", "user"],
                [(r["name"], r["ssh_host"], r["workspace_id"], r["url"], r["user"])
                 for r in rows])

    out.result(rows, human)


@app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="The host name")],
       json: JsonOption = False) -> None:
    """Forget a host: its profile, token, pinned key and ~/.ssh/config block."""
    from tether.link.pairing import remove_host

    out = Output(json)
    remove_host(name)
    out.result({"removed": name}, f"removed host {name!r}")
