"""`tether up`: start the workspace host (sshd + gateway + tunnel)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer()


def render_started(o: Output, info: dict) -> None:
    expires = time.strftime("%H:%M UTC", time.gmtime(info["pairing_code_expires_at"]))
    o.out.print(f"workspace {info['workspace_id']} is up at {info['url']} "
                f"(tunnel: {info['tunnel']}, platform: {info['platform']})", markup=False)
    o.out.print(f"host key: {info['host_key_fingerprint']}", markup=False)
    if info.get("connected"):
        c = info["connected"]
        o.out.print(f"this machine is paired as {c['name']!r}: try `ssh {c['ssh_host']}` "
                    f"or `tether exec {c['name']} -- hostname`", markup=False)
    o.out.print(f"\nconnection string (one-time code, expires {expires}):", markup=False)
    o.out.print(f"  {info['connection_string']}", markup=False)
    o.out.print("\non your laptop run:", markup=False)
    o.out.print(f"  {info['connect_command']}", markup=False)


@app.command()
def up(
    directory: Annotated[Path | None, typer.Argument(help="The workspace folder (default: .)")]
    = None,
    tunnel: Annotated[str, typer.Option("--tunnel", help="local | cloudflared | ngrok")]
    = "local",
    port: Annotated[int | None, typer.Option("--port", help="Gateway port (default: a free one)",
                                             min=1, max=65535)] = None,
    public_url: Annotated[str | None, typer.Option(
        "--public-url", help="With --tunnel local: the URL that reaches the gateway port")]
    = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background; stop with "
                                         "`tether down`")] = False,
    connect: Annotated[str | None, typer.Option(
        "--connect", help="Also pair this machine under NAME (then `ssh tether-NAME`)",
        metavar="NAME")] = None,
    json: JsonOption = False,
) -> None:
    """Start a workspace here: key-only sshd, the gateway and a tunnel; print how to connect."""
    out = Output(json)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                       signal.SIGHUP)}
    try:
        _run(out, directory, tunnel, port, public_url, detach, connect, json)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(out: Output, directory, tunnel, port, public_url, detach, connect, json) -> None:
    from tether.host.api import up as start_workspace

    if not detach:
        # Until the workspace exists a signal unwinds the start (which stops what started);
        # afterwards it asks the workspace to stop. Either way no sshd is left behind.
        def interrupt(*_):
            raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
    handle = start_workspace(directory, tunnel=tunnel, port=port, public_url=public_url,
                             connect=connect, detach=detach, announce=out.info)
    if not detach:
        workspace = handle._workspace
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: workspace.request_stop())
    data = {k: v for k, v in handle.info.items() if k != "state_dir"}
    data["detached"] = detach
    if detach:
        out.result(data, lambda o: render_started(o, handle.info))
        out.info("running in the background; stop it with `tether down`")
        return
    try:
        out.result(data, lambda o: render_started(o, handle.info))
        out.info("\nCtrl-C stops the workspace")
        handle.wait()
    finally:
        handle.stop()
    out.info("workspace stopped")
