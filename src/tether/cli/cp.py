"""`tether cp SRC... DST`: copy files and trees between the laptop and a workspace."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(add_completion=False)


@app.command(help="Copy between here and a host: NAME:path is remote, anything else local "
                  "(write ./a:b for a local name with a colon). Files land atomically.")
def cp(
    paths: Annotated[list[str], typer.Argument(help="SRC... DST", metavar="SRC... DST")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy directories.")]
    = False,
    json_mode: JsonOption = False,
) -> None:
    import contextlib

    from tether import errors
    from tether.link.daemon_client import copy_cli

    out = Output(json_mode)
    if len(paths) < 2:
        raise errors.UsageError("need a source and a destination", "tether cp SRC... DST")
    with contextlib.ExitStack() as stack:
        def on_start(files: int, total: int):
            label = f"{files} file{'s' if files != 1 else ''}"
            return stack.enter_context(out.progress(label, total=total))

        # through the link daemon's warm connection, progress streamed back from it
        result = copy_cli(paths[:-1], paths[-1], recursive=recursive, on_start=on_start)
    data = {"host": result.host, "direction": result.direction, "files": result.files,
            "bytes": result.bytes, "seconds": round(result.duration_s, 3),
            "rate_bytes_per_s": round(result.rate_bytes_per_s)}
    mb = result.bytes / 1e6
    noun = "file" if result.files == 1 else "files"
    out.result(data, f"{result.direction}: {result.files} {noun}, {mb:.1f} MB in "
                     f"{result.duration_s:.2f}s ({result.rate_bytes_per_s / 1e6:.1f} MB/s)")
