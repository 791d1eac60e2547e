"""`tether host status`, `tether host pair-code`: the running workspace, from the host."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="The workspace running on this machine.", no_args_is_help=True)


@app.command()
def status(json: JsonOption = False) -> None:
    """Show whether a workspace runs here, its URL, ports, uptime and paired clients."""
    from tether.host.api import host_status

    out = Output(json)
    s = host_status()

    def human(o: Output) -> None:
        if not s["running"]:
            o.out.print(f"no workspace is running (platform: {s['platform']})", markup=False)
            return
        rows = [("url", s["url"]), ("local url", s["local_url"]), ("tunnel", s["tunnel"]),
                ("tunnel restarts", s["tunnel_restarts"]), ("workspace", s["workspace_id"]),
                ("directory", s["directory"]), ("host key", s["host_key_fingerprint"]),
                ("sshd port", s["sshd_port"]), ("pid", s["pid"]),
                ("uptime", f"{s['uptime_s']}s"), ("paired clients", s["clients"]),
                ("platform", s["platform"])]
        a = s.get("autosave")
        if a:
            last = ("not yet" if a["last_save_at"] is None else
                    time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(a["last_save_at"]))
                    + (" ok" if a["last_ok"] else f" FAILED: {a['last_error']}"))
            rows += [("autosave", f"{a['store']} every {a['every_s']:.0f}s"),
                     ("last save", last)]
        o.table(["", ""], rows)
        if s["policy"]:
            o.out.print(f"\nnote: {s['policy']}", markup=False)

    out.result(s, human)


@app.command("pair-code")
def pair_code_cmd(
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds the code stays valid")] = 900,
    json: JsonOption = False,
) -> None:
    """Issue a new one-time connection string for the running workspace."""
    from tether.host.api import pair_code

    out = Output(json)
    r = pair_code(ttl)
    expires = time.strftime("%H:%M UTC", time.gmtime(r["expires_at"]))

    def human(o: Output) -> None:
        o.out.print(f"connection string (one-time code, expires {expires}):", markup=False)
        o.out.print(f"  {r['connection_string']}", markup=False)
        o.out.print("\non your laptop run:", markup=False)
        o.out.print(f"  {r['connect_command']}", markup=False)

    out.result(r, human)
