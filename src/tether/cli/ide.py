"""`tether ide ...`: install code-server, show or set the IDE password."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="The browser IDE (code-server) that `tether up --ide` serves.",
                  no_args_is_help=True)


def ide_up_options(ide: bool, show_password: bool, extensions: list[str] | None,
                   idle_timeout: str | None, password_file: Path | None = None) -> dict:
    """`tether up`'s IDE flags as keyword arguments for `tether.host.api.up`.

    ``password_file`` is read and stored here, after the other flags were checked.
    """
    from tether.errors import UsageError

    if not ide and (show_password or extensions or idle_timeout or password_file):
        raise UsageError("--show-password, --extension, --idle-timeout and "
                         "--ide-password-file need --ide",
                         "add --ide to serve the browser IDE, or leave them out")
    seconds = None
    if idle_timeout is not None:
        from tether.ide.server import parse_duration

        seconds = parse_duration(idle_timeout)
    if password_file is not None:
        from tether.ide.password import use_file

        use_file(password_file)
    up = {"ide": True, "ide_extensions": tuple(extensions or ()),
          "ide_idle_timeout_s": seconds} if ide else {}
    return {"up": up, "show_password": show_password}


def render_ide(o: Output, ide: dict) -> None:
    o.out.print(f"\nVS Code in the browser: {ide['url']}", markup=False)
    if ide.get("password"):
        o.out.print(f"IDE password: {ide['password']}", markup=False)
    else:
        new = " (new)" if ide.get("password_generated") else ""
        o.out.print(f"IDE password{new}: run `tether ide password` to see it", markup=False)


@app.command()
def install(
    version: Annotated[str | None, typer.Option("--version", help="code-server version "
                                                "(default: the tested one)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Reinstall even if present")] = False,
    method: Annotated[str, typer.Option(
        "--method", help="npm: from the npm registry (builds native modules, ~5 min); "
        "release: the standalone archive from GitHub (needs internet)")] = "npm",
    json: JsonOption = False,
) -> None:
    """Install code-server and the Node it needs into tether's tools dir."""
    from tether.ide.api import install_code_server

    out = Output(json)
    unit = "bytes" if method == "release" else "steps"
    with out.progress("installing code-server", total=None, unit=unit) as advance:
        def on_step(name: str, index: int, total: int) -> None:
            where = "GitHub" if method == "release" else "the npm registry"
            out.info(f"[{index + 1}/{total}] installing {name} from {where}")
            if unit == "steps":
                advance(1)

        result = install_code_server(version, force=force, method=method, on_step=on_step,
                                     on_bytes=advance if unit == "bytes" else None)
    what = "installed" if result["installed"] else "already installed"
    out.result(result, f"code-server {result['version']} {what} in {result['tools_dir']} "
               f"({result['duration_s']:.1f}s)")


@app.command()
def password(
    set_: Annotated[bool, typer.Option("--set", help="Set it: from --password-file, "
                                       "$TETHER_IDE_PASSWORD or a prompt")] = False,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="With --set: read it from this file ('-' = stdin)")] = None,
    new: Annotated[bool, typer.Option("--new", help="Replace it with a new generated one")]
    = False,
    json: JsonOption = False,
) -> None:
    """Show the IDE password (it is never logged); --set or --new change it."""
    from tether.errors import UsageError
    from tether.ide import password as pw

    out = Output(json)
    if set_ and new:
        raise UsageError("--set and --new exclude each other")
    if password_file is not None and not set_:
        raise UsageError("--password-file needs --set")
    if set_:
        pw.set_password(pw.read_given(password_file, prompt=True))
        out.result({"set": True}, "IDE password set; restart `tether up --ide` to use it")
        return
    if new:
        value = pw.reset()
        out.result({"password": value, "new": True},
                   f"{value}\n(new; restart `tether up --ide` to use it)")
        return
    value = pw.show()
    out.result({"password": value}, value)
