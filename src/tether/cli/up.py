"""`tether up`: start the workspace host (sshd + gateway + tunnel)."""

from __future__ import annotations

import contextlib
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
    if info.get("autosave"):
        o.out.print(f"autosave: to {info['autosave']}, periodically and when it stops",
                    markup=False)
    if info.get("connected"):
        c = info["connected"]
        o.out.print(f"this machine is paired as {c['name']!r}: try `ssh {c['ssh_host']}` "
                    f"or `tether exec {c['name']} -- hostname`", markup=False)
    o.out.print(f"\nconnection string (one-time code, expires {expires}):", markup=False)
    o.out.print(f"  {info['connection_string']}", markup=False)
    o.out.print("\non your laptop run:", markup=False)
    o.out.print(f"  {info['connect_command']}", markup=False)
    if info.get("ide"):
        from tether.cli.ide import render_ide

        render_ide(o, info["ide"])


@app.command()
def up(
    directory: Annotated[Path | None, typer.Argument(help="The workspace folder (default: .)")]
    = None,
    tunnel: Annotated[str | None, typer.Option(
        "--tunnel", help="local | cloudflared | ngrok (default: local; on Colab and Kaggle "
        "cloudflared when installed, else ngrok with a stored token: tether host ngrok-token)")]
    = None,
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
    ide: Annotated[bool, typer.Option("--ide", help="Also serve VS Code (code-server) in the "
                                      "browser at the gateway URL, behind a password")] = False,
    show_password: Annotated[bool, typer.Option(
        "--show-password", help="With --ide: print the IDE password (else `tether ide "
        "password` shows it)")] = False,
    ide_password_file: Annotated[Path | None, typer.Option(
        "--ide-password-file", help="With --ide: read the IDE password from this file ('-' = "
        "stdin) and store it (else $TETHER_IDE_PASSWORD, the stored one or a new one)",
        metavar="FILE")] = None,
    extension: Annotated[list[str] | None, typer.Option(
        "--extension", help="With --ide: install an extension at start (marketplace id or "
        ".vsix file; repeatable)", metavar="ID|FILE")] = None,
    idle_timeout: Annotated[str | None, typer.Option(
        "--idle-timeout", help="With --ide: stop the IDE after this long without a browser "
        "(e.g. 30m, 2h)", metavar="DURATION")] = None,
    restore: Annotated[str | None, typer.Option(
        "--restore", help="Before starting, restore the workspace folder, --venv folders, the "
        "IDE profile and the host identity from this snapshot store (`default`: a folder "
        "under tether's state dir)", metavar="STORE")] = None,
    venv: Annotated[list[Path] | None, typer.Option(
        "--venv", help="A virtualenv to restore/save too, at the same absolute path "
        "(repeatable)", metavar="PATH")] = None,
    rebuild_venv: Annotated[bool, typer.Option(
        "--rebuild-venv", help="With --restore: recreate a virtualenv whose interpreter no "
        "longer matches from its recorded package list")] = False,
    force_identity: Annotated[bool, typer.Option(
        "--force-identity", help="With --restore: replace a different host identity already "
        "on this machine (its paired clients lose access)")] = False,
    autosave: Annotated[str | None, typer.Option(
        "--autosave", help="Save the same components to this store periodically and when "
        "the workspace stops (`default`: a folder under tether's state dir)",
        metavar="STORE")] = None,
    every: Annotated[str, typer.Option(
        "--every", help="With --autosave: the interval (e.g. 10m, 1h)", metavar="DURATION")]
    = "10m",
    json: JsonOption = False,
) -> None:
    """Start a workspace here: key-only sshd, the gateway and a tunnel; print how to connect."""
    from tether.cli.ide import ide_up_options

    out = Output(json)
    ide_opts = ide_up_options(ide, show_password, extension, idle_timeout, ide_password_file)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                       signal.SIGHUP)}
    try:
        snap = {"restore": restore, "venvs": tuple(venv or ()), "rebuild_venv": rebuild_venv,
                "force_identity": force_identity, "autosave": autosave,
                "autosave_every": every}
        # opts["up"]: keyword arguments of tether.host.api.up beyond the plain flags
        _run(out, directory, tunnel, port, public_url, detach, connect, json,
             {**ide_opts, "up": {**ide_opts["up"], **snap}})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(out: Output, directory, tunnel, port, public_url, detach, connect, json,
         opts: dict) -> None:
    from tether.host.api import up as start_workspace

    if not detach:
        # Until the workspace exists a signal unwinds the start (which stops what started);
        # afterwards it asks the workspace to stop. Either way no sshd is left behind.
        def interrupt(*_):
            raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
    with out.progress("restore", None) if opts["up"].get("restore") else \
            contextlib.nullcontext(None) as advance:
        handle = start_workspace(directory, tunnel=tunnel, port=port, public_url=public_url,
                                 connect=connect, detach=detach, announce=out.info,
                                 progress=advance, **opts["up"])
    if not detach:
        workspace = handle._workspace
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: workspace.request_stop())
    data = {k: v for k, v in handle.info.items() if k != "state_dir"}
    if opts["show_password"] and handle.info.get("ide"):
        from tether.ide.password import show

        handle.info["ide"]["password"] = data["ide"]["password"] = show()
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
