"""`tether host status`, `tether host pair-code`, `tether host ngrok-token`: the workspace
running on this machine, and what `tether up` needs to start one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

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


@app.command("ngrok-token")
def ngrok_token(
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="Read the token from this file ('-' for stdin).",
        show_default=False)] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the stored token.")] = False,
    json: JsonOption = False,
) -> None:
    """Store the ngrok authtoken for `tether up --tunnel ngrok` (token: --token-file,
    $NGROK_AUTHTOKEN or a prompt; never an argument)."""
    from tether.errors import UsageError
    from tether.secrets import SecretSource, read_secret
    from tether.tunnels.ngrok import TOKEN_ENV, clear_token, store_token

    out = Output(json)
    if clear:
        if token_file is not None:
            raise UsageError("--clear takes no token", "use either --clear or --token-file")
        removed = clear_token()
        out.result({"stored": False, "removed": removed},
                   "forgot the stored ngrok authtoken" if removed
                   else "no ngrok authtoken was stored")
        return
    store_token(read_secret(SecretSource("ngrok authtoken", file=token_file, env=TOKEN_ENV)))
    out.result({"stored": True, "removed": False},
               "stored the ngrok authtoken; `tether up --tunnel ngrok` will use it")
